"""Media file in, faces out, with a disk cache keyed by the file's content hash and every setting that matters.

A second run over the same media with the same settings reads the cache: no decoding, no detection.

    >>> track = video_face_track("talk.mp4", num_frames=16)     # doctest: +SKIP
    >>> track.has_face.mean()
    1.0
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mllm.face.landmarks import STAGES, DetectorSettings, Face, FaceDetector
from mllm.face.regions import NUM_LANDMARKS
from mllm.face.tracking import FaceTrack, SubjectTracker, TrackerSettings
from mllm.media import (
    DEFAULT_LIMITS,
    MediaLimits,
    MediaSource,
    Video,
    iter_frames,
    load_image,
    load_video,
    prefetch,
    probe_video,
)

# Bump when the tracker's output for the same settings changes. 2: the detection cascade, roll-aware tracking and
# the sparse search while the subject is lost.
CACHE_VERSION = 2
logger = logging.getLogger(__name__)
_warned_unwritable = False  # the "cache is not writable" warning is given once per process


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
    """Face results as .npz files named by sha256(content hash, settings, cache version). Writes are atomic.

    Damage heals: an entry that cannot be read (truncated, bad CRC, not a zip) or that fails the caller's check
    (missing keys, wrong shapes or frame count) is deleted and counted as a miss, so the result is recomputed and
    written afresh. A cache that cannot be written is skipped, with one warning per process.
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        # Bounded (a server's cache, turned on by its operator): past max_bytes the oldest entries are evicted.
        self.max_bytes = max_bytes
        self._size: int | None = None
        self._size_lock = threading.Lock()

    def key(self, digest: str, **settings) -> str:
        payload = json.dumps({"v": CACHE_VERSION, "content": digest, **settings}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, check: Callable[[dict[str, np.ndarray]], str | None] | None = None):
        """The arrays stored under `key`, or None (a miss). `check(arrays)` returns what is wrong with an entry
        (None when it is sound); a damaged entry is removed and is a miss."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError...
            return self._discard(path, f"unreadable ({type(exc).__name__}: {exc})")
        problem = check(arrays) if check is not None else None
        if problem is not None:
            return self._discard(path, problem)
        self.hits += 1
        return arrays

    def _discard(self, path: Path, reason: str) -> None:
        logger.info("face cache entry %s is damaged (%s): recomputing", path, reason)
        self.damaged += 1
        self.misses += 1
        with contextlib.suppress(OSError):  # a read-only cache: the entry is simply not used
            path.unlink()
        return None

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> bool:
        """Store `arrays` under `key`; False (and one warning per process) when the cache cannot be written."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
            if self.max_bytes is not None:
                self._account(path.stat().st_size)
            return True
        except OSError as exc:
            _warn_unwritable(self.directory, exc)
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def entries(self) -> list[Path]:
        """The cache's own entries (`KEY[:2]/KEY.npz`, KEY a sha256): eviction never touches anything else there."""
        return [p for p in self.directory.glob("??/*.npz") if len(p.stem) == 64 and p.stem[:2] == p.parent.name]

    def _account(self, added: int) -> None:
        """Keep the cache under `max_bytes`: the oldest entries go first, down to 80 % of the bound."""
        with self._size_lock:
            if self._size is None:
                self._size = sum(e.stat().st_size for e in self.entries())
            else:
                self._size += added
            if self._size <= self.max_bytes:
                return
            stats = []
            for entry in self.entries():
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    stats.append((st.st_mtime, st.st_size, entry))
            stats.sort()
            total = sum(size for _, size, _ in stats)
            for _, size, entry in stats:
                if total <= 0.8 * self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    entry.unlink()
                    total -= size
            self._size = total


def _warn_unwritable(directory: Path, exc: OSError) -> None:
    global _warned_unwritable
    if not _warned_unwritable:
        _warned_unwritable = True
        reason = exc.strerror or type(exc).__name__
        logger.warning(
            "warning: face cache %s cannot be written (%s); results are not cached (set EMOREASON_CACHE to a "
            "writable folder)",
            directory,
            reason,
        )


# ----------------------------------------------------------------------------------------------------------------
# What a sound entry looks like


def _shape_problem(arrays, expected: dict[str, tuple]) -> str | None:
    for name, shape in expected.items():
        if name not in arrays:
            return f"no {name!r}"
        actual = arrays[name].shape
        if len(actual) != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, actual, strict=True)
        ):
            return f"{name!r} has shape {actual}, expected {tuple('N' if v is None else v for v in shape)}"
        if arrays[name].dtype.kind not in "biuf":
            return f"{name!r} has dtype {arrays[name].dtype}"
    return None


def track_problem(arrays, frames: int | None = None, approx_frames: float | None = None) -> str | None:
    """What is wrong with a stored `FaceTrack` (None when sound): keys, shapes, dtypes, finite values where a face
    is, and the frame count (`frames` exactly, or `approx_frames` within 3% or 2 frames)."""
    n = arrays["timestamps_s"].shape[0] if "timestamps_s" in arrays and arrays["timestamps_s"].ndim == 1 else None
    problem = _shape_problem(
        arrays,
        {
            "timestamps_s": (None,),
            "boxes": (n, 4),
            "landmarks_68": (n, NUM_LANDMARKS, 2),
            "found": (n,),
            "interpolated": (n,),
            "frame_size": (2,),
        },
    )
    if problem is not None:
        return problem
    if n == 0:
        return "no frames"
    if frames is not None and n != frames:
        return f"{n} frames, expected {frames}"
    if approx_frames is not None and abs(n - approx_frames) > max(2.0, 0.03 * approx_frames):
        return f"{n} frames, the video has about {approx_frames:.0f}"
    times = arrays["timestamps_s"]
    if not np.isfinite(times).all() or (np.diff(times) < 0).any():
        return "timestamps are not finite and ordered"
    if (arrays["frame_size"] <= 0).any():
        return "bad frame size"
    has_face = arrays["found"].astype(bool) | arrays["interpolated"].astype(bool)
    if not (np.isfinite(arrays["boxes"][has_face]).all() and np.isfinite(arrays["landmarks_68"][has_face]).all()):
        return "a frame with a face has no finite box or landmarks"
    return None


def faces_problem(arrays) -> str | None:
    """What is wrong with stored image faces (None when sound)."""
    n = arrays["scores"].shape[0] if "scores" in arrays and arrays["scores"].ndim == 1 else None
    problem = _shape_problem(arrays, {"scores": (None,), "boxes": (n, 4), "landmarks_68": (n, NUM_LANDMARKS, 2)})
    if problem is not None:
        return problem
    if "stages" in arrays and (arrays["stages"].shape != (n,) or not set(arrays["stages"].tolist()) <= set(STAGES)):
        return "bad 'stages'"
    if not (np.isfinite(arrays["boxes"]).all() and np.isfinite(arrays["landmarks_68"]).all()):
        return "non-finite boxes or landmarks"
    return None


def _resolve_cache(cache: FaceCache | bool | None) -> FaceCache | None:
    if cache is True or cache is None:
        return FaceCache()
    return cache or None


def _track_check(source, video, num_frames, fps, start_s, end_s, limits) -> Callable:
    """The soundness check for a cached track of this sampling: the exact frame count where it is known without
    decoding (`num_frames`, or frames already decoded), else about what the video declares."""
    if video is not None or num_frames is not None:
        frames = len(video) if video is not None else num_frames
        return lambda arrays: track_problem(arrays, frames=frames)
    info = probe_video(source, limits)
    rate = fps or info.average_fps
    if info.duration_s is None or not rate:
        return track_problem
    end = info.duration_s if end_s is None else min(end_s, info.duration_s)
    approx = max(0.0, end - (start_s or 0.0)) * rate
    return lambda arrays: track_problem(arrays, approx_frames=approx)


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
    on_frame: Callable[[int, float, int, np.ndarray], None] | None = None,
) -> FaceTrack:
    """The subject's tracked face over the sampled frames of a video (every frame when neither `num_frames`
    nor `fps` is given, streamed so a long clip is never held in memory).

    `video`: frames already decoded from `source` with the same sampling, to avoid decoding twice.
    `progress`: called with the number of frames processed so far, for progress bars.
    `on_frame`: called as `on_frame(position, timestamp_s, frame_index, rgb)` for each frame tracked (not on a
    cache hit), for callers that keep a few frames (the contact sheet) without holding the clip.
    """
    settings = settings or TrackerSettings()
    store = _resolve_cache(cache)
    key = None
    if store is not None:
        sampling = {"num_frames": num_frames, "fps": fps, "start_s": start_s, "end_s": end_s}
        key = store.key(content_hash(source), kind="video", sampling=sampling, settings=settings.to_dict())
        check = _track_check(source, video, num_frames, fps, start_s, end_s, limits)
        if (arrays := store.get(key, check)) is not None:
            return FaceTrack.from_arrays(arrays)
    tracker = SubjectTracker(settings, detector)
    if video is None and num_frames is None and fps is None:
        frames = prefetch(iter_frames(source, start_s=start_s, end_s=end_s, limits=limits))
    else:
        if video is None:
            video = load_video(
                source, num_frames=num_frames, fps=fps, start_s=start_s, end_s=end_s, with_audio=False, limits=limits
            )
        indices = video.frame_indices if len(video.frame_indices) == len(video) else range(len(video))
        frames = zip(video.timestamps_s, indices, video.frames, strict=True)
    for position, (t, index, rgb) in enumerate(frames):
        tracker.update(rgb, t)
        if on_frame is not None:
            on_frame(position, float(t), int(index), rgb)
        if progress is not None:
            progress(position + 1)
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
    resolution by default (`min_face_fraction=0`); with `detector="auto"` (the default) an image where HOG finds
    no face is searched again by the cascade's costlier stages."""
    settings = settings or DetectorSettings(min_face_fraction=0.0)
    store = _resolve_cache(cache)
    key = None
    if store is not None:
        key = store.key(content_hash(source), kind="image", settings=asdict(settings))
        if (arrays := store.get(key, faces_problem)) is not None:
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
        "stages": np.array([f.stage for f in faces], dtype="<U16").reshape(-1),
    }


def _faces_from_arrays(arrays) -> list[Face]:
    stages = arrays["stages"] if "stages" in arrays else ["hog"] * len(arrays["scores"])
    faces = [
        Face(box=b, landmarks_68=p, score=float(s), stage=str(stage))
        for b, p, s, stage in zip(arrays["boxes"], arrays["landmarks_68"], arrays["scores"], stages, strict=True)
    ]
    if faces:
        faces[0].primary = True
    return faces
