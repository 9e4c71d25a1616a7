"""Media file in, faces out, with a disk cache keyed by the file's content hash and every setting that matters.

A second run over the same media with the same settings reads the cache: no decoding, no detection.

    >>> track = video_face_track("talk.mp4", num_frames=16)     # doctest: +SKIP
    >>> track.has_face.mean()
    1.0
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mllm.face.landmarks import DetectorSettings, Face, FaceDetector
from mllm.face.tracking import FaceTrack, SubjectTracker, TrackerSettings
from mllm.media import DEFAULT_LIMITS, MediaLimits, MediaSource, Video, iter_frames, load_image, load_video, prefetch

CACHE_VERSION = 1  # bump when the tracker's output for the same settings changes


def default_cache_dir() -> Path:
    root = os.environ.get("EMOREASON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "emoreason")
    return Path(root) / "faces"


def content_hash(source: MediaSource) -> str:
    digest = hashlib.sha256()
    if isinstance(source, bytes | bytearray):
        digest.update(source)
    else:
        with open(source, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class FaceCache:
    """Face results as .npz files named by sha256(content hash, settings, cache version). Writes are atomic."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def key(self, digest: str, **settings) -> str:
        payload = json.dumps({"v": CACHE_VERSION, "content": digest, **settings}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        except (FileNotFoundError, OSError, ValueError, EOFError):
            # Missing, or a damaged entry (e.g. a full disk): recompute rather than fail.
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _resolve_cache(cache: FaceCache | bool | None) -> FaceCache | None:
    if cache is True or cache is None:
        return FaceCache()
    return cache or None


def video_face_track(
    source: MediaSource,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    settings: TrackerSettings | None = None,
    cache: FaceCache | bool | None = True,
    video: Video | None = None,
    detector: FaceDetector | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    progress=None,
) -> FaceTrack:
    """The subject's tracked face over the sampled frames of a video (every frame when neither `num_frames`
    nor `fps` is given, streamed so a long clip is never held in memory).

    `video`: frames already decoded from `source` with the same sampling, to avoid decoding twice.
    `progress`: called with the number of frames processed so far, for progress bars.
    """
    settings = settings or TrackerSettings()
    store = _resolve_cache(cache)
    key = None
    if store is not None:
        sampling = {"num_frames": num_frames, "fps": fps, "start_s": start_s, "end_s": end_s}
        key = store.key(content_hash(source), kind="video", sampling=sampling, settings=settings.to_dict())
        if (arrays := store.get(key)) is not None:
            return FaceTrack.from_arrays(arrays)
    tracker = SubjectTracker(settings, detector)
    if video is None and num_frames is None and fps is None:
        decoded = prefetch(iter_frames(source, start_s=start_s, end_s=end_s, limits=limits))
        frames = ((t, rgb) for t, _, rgb in decoded)
    else:
        if video is None:
            video = load_video(
                source, num_frames=num_frames, fps=fps, start_s=start_s, end_s=end_s, with_audio=False, limits=limits
            )
        frames = zip(video.timestamps_s, video.frames, strict=True)
    for count, (t, rgb) in enumerate(frames, start=1):
        tracker.update(rgb, t)
        if progress is not None:
            progress(count)
    track = tracker.finish()
    if store is not None:
        store.put(key, track.to_arrays())
    return track


def image_faces(
    source: MediaSource,
    *,
    settings: DetectorSettings | None = None,
    cache: FaceCache | bool | None = True,
    image: np.ndarray | None = None,
    detector: FaceDetector | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> list[Face]:
    """Every face in an image, largest first, the largest flagged primary. Images are searched at full
    resolution by default (`min_face_fraction=0`)."""
    settings = settings or DetectorSettings(min_face_fraction=0.0)
    store = _resolve_cache(cache)
    key = None
    if store is not None:
        key = store.key(content_hash(source), kind="image", settings=asdict(settings))
        if (arrays := store.get(key)) is not None:
            return _faces_from_arrays(arrays)
    if image is None:
        image = load_image(source, limits)
    faces = (detector or FaceDetector(settings)).detect(image)
    if store is not None:
        store.put(key, _faces_to_arrays(faces))
    return faces


def _faces_to_arrays(faces: list[Face]) -> dict[str, np.ndarray]:
    return {
        "boxes": np.array([f.box for f in faces], dtype=np.float64).reshape(-1, 4),
        "landmarks_68": np.array([f.landmarks_68 for f in faces], dtype=np.float32).reshape(-1, 68, 2),
        "scores": np.array([f.score for f in faces], dtype=np.float64),
    }


def _faces_from_arrays(arrays) -> list[Face]:
    faces = [
        Face(box=b, landmarks_68=p, score=float(s))
        for b, p, s in zip(arrays["boxes"], arrays["landmarks_68"], arrays["scores"], strict=True)
    ]
    if faces:
        faces[0].primary = True
    return faces
