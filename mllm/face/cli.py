"""`emoreason faces MEDIA --out DIR`: landmarks as JSON and an overlay picture for an image or a video.

--out is claimed before any work (a new or empty folder, or one this tool wrote; never the media's own folder), and
both files are written under a temporary name and renamed into place, so a killed run leaves the previous output
whole. A video's contact sheet shows at most `MAX_TILES` frames; a second run reads them, with the landmarks, from
the face cache and decodes nothing.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELP = "Detect and track the face in an image or video; write landmarks.json and overlay.png to --out."
MAX_TILES = 48  # frames drawn on a video's contact sheet (the JSON has every sampled frame)
TILE_WIDTH = 320


def add_arguments(parser) -> None:
    parser.add_argument("media", help="image or video file")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or written by emoreason before")
    parser.add_argument(
        "--frames",
        type=int,
        default=16,
        help="frames sampled uniformly from a video (default 16; more than the video has means every frame)",
    )
    parser.add_argument(
        "--min-face",
        type=float,
        default=None,
        help="smallest face to find, as a fraction of the frame's shorter side (default 0 for images, 0.25 for video)",
    )
    parser.add_argument(
        "--detector",
        choices=("hog", "cnn", "auto"),
        default="auto",
        help="hog: fast; cnn: dlib's CNN, finds tilted and covered faces, ~100x slower; auto (default): HOG, then "
        "rotated, upsampled and CNN retries where it finds nothing",
    )
    parser.add_argument("--redetect-every", type=int, default=15, help="frames between periodic re-detections")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the face cache")
    parser.add_argument("--columns", type=int, default=4, help="contact sheet columns for video")


def _round(points) -> list:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


def _box(box) -> list:
    return [round(float(v), 2) for v in box]


def run(args) -> int:
    from mllm.face import DetectorSettings, TrackerSettings
    from mllm.media import MediaNotFoundError, load_image, media_kind, probe_video
    from mllm.outputs import claim_output_dir

    for name, value in (
        ("--frames", args.frames),
        ("--columns", args.columns),
        ("--redetect-every", args.redetect_every),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not Path(args.media).exists():
        raise MediaNotFoundError(str(args.media), "file not found")
    kind = media_kind(args.media)
    if kind == "audio":
        raise ValueError(f"{args.media}: is audio only; faces need an image or a video")
    # Read what the media declares (cheap, and it fails on a broken file) before claiming --out and working.
    rgb = load_image(args.media) if kind == "image" else None
    info = probe_video(args.media) if kind == "video" else None
    out = claim_output_dir(args.out, protect=[args.media], kind="faces")
    cache = not args.no_cache
    if kind == "image":
        result, picture, summary = _image(
            args, rgb, DetectorSettings(min_face_fraction=args.min_face or 0.0, detector=args.detector), cache
        )
    else:
        detector = DetectorSettings(
            min_face_fraction=0.25 if args.min_face is None else args.min_face, detector=args.detector
        )
        settings = TrackerSettings(detector=detector, redetect_every=args.redetect_every)
        result, picture, summary = _video(args, info, settings, cache)
    write_outputs(out, result, picture)
    print(f"{args.media}: {summary} -> {out / 'landmarks.json'}, {out / 'overlay.png'}")
    return 0


def write_outputs(out: Path, result: dict, picture) -> None:
    """landmarks.json and overlay.png, each written under a temporary name and renamed into place."""
    from mllm.outputs import atomic_write_bytes, atomic_write_text

    png = io.BytesIO()
    picture.save(png, format="PNG")
    atomic_write_bytes(out / "overlay.png", png.getvalue())
    atomic_write_text(out / "landmarks.json", json.dumps(result, indent=1))


def _image(args, rgb, settings, cache):
    from mllm.face import image_faces
    from mllm.face.draw import overlay_image

    faces = image_faces(args.media, settings=settings, image=rgb, cache=cache)
    result = {
        "media": str(args.media),
        "kind": "image",
        "detector": settings.detector,
        "size": {"height": rgb.shape[0], "width": rgb.shape[1]},
        "faces": [
            {
                "primary": f.primary,
                "box": _box(f.box),
                "score": round(f.score, 4),
                "stage": f.stage,
                "landmarks_68": _round(f.landmarks_68),
            }
            for f in faces
        ],
    }
    picture = overlay_image(rgb, [(f.box, f.landmarks_68, f.primary) for f in faces])
    stages = sorted({f.stage for f in faces} - {"hog"})
    found_by = f" (found by the {', '.join(stages)} stage)" if stages else ""
    return result, picture, f"{len(faces)} face(s){found_by}"


@dataclass
class VideoView:
    """What `faces` shows of a video: the track, each row's frame number, and a few frames as small tiles."""

    track: object
    frame_indices: np.ndarray
    tile_positions: list[int]
    tiles: list[np.ndarray]

    def to_arrays(self) -> dict[str, np.ndarray]:
        from PIL import Image

        blobs = []
        for tile in self.tiles:
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=90)
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
        offsets = np.cumsum([0] + [len(b) for b in blobs])
        return {
            **self.track.to_arrays(),
            "frame_indices": np.asarray(self.frame_indices, np.int64),
            "tile_positions": np.asarray(self.tile_positions, np.int64),
            "tile_offsets": offsets.astype(np.int64),
            "tile_bytes": np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
        }

    @classmethod
    def from_arrays(cls, arrays) -> VideoView:
        from PIL import Image

        from mllm.face import FaceTrack

        offsets, blob = arrays["tile_offsets"], arrays["tile_bytes"]
        tiles = [
            np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
        return cls(FaceTrack.from_arrays(arrays), arrays["frame_indices"], arrays["tile_positions"].tolist(), tiles)


def view_problem(arrays, frames: int | None) -> str | None:
    """What is wrong with a stored `VideoView` (None when sound); reading the tiles back is part of the check."""
    from mllm.face.pipeline import track_problem

    problem = track_problem(arrays, frames=frames)
    if problem is not None:
        return problem
    n = len(arrays["timestamps_s"])
    for name in ("frame_indices", "tile_positions", "tile_offsets", "tile_bytes"):
        if name not in arrays or arrays[name].ndim != 1 or arrays[name].dtype.kind not in "iu":
            return f"no usable {name!r}"
    positions, offsets = arrays["tile_positions"], arrays["tile_offsets"]
    if len(arrays["frame_indices"]) != n or len(offsets) != len(positions) + 1:
        return "frame indices or tiles do not match the frames"
    if len(positions) and (positions.min() < 0 or positions.max() >= n):
        return "tile positions outside the frames"
    if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] != len(arrays["tile_bytes"]):
        return "tile offsets do not match the tile bytes"
    try:
        VideoView.from_arrays(arrays)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a damaged JPEG
        return f"tiles do not decode ({type(exc).__name__})"
    return None


def _tile_positions(frames: int) -> list[int]:
    """At most MAX_TILES rows, spread evenly, first and last included."""
    if frames <= MAX_TILES:
        return list(range(frames))
    return sorted({int(round(v)) for v in np.linspace(0, frames - 1, MAX_TILES)})


def _tile(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if w <= TILE_WIDTH:
        return np.array(rgb)  # a copy: the decoder may reuse its buffer
    size = (TILE_WIDTH, max(1, round(TILE_WIDTH * h / w)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def video_view(media, num_frames: int | None, settings, cache: bool, expected: int, progress=None) -> VideoView:
    """Track the subject over `num_frames` sampled frames (every frame when None) and keep the contact sheet's
    tiles on the way, without holding the clip; or read all of it from the face cache."""
    from mllm.face import FaceCache, content_hash, video_face_track
    from mllm.media import iter_frames, load_video

    store = FaceCache() if cache else None
    key = None
    if store is not None:
        key = store.key(
            content_hash(media),
            kind="faces_view",
            num_frames=num_frames,
            settings=settings.to_dict(),
            tiles=MAX_TILES,
            tile_width=TILE_WIDTH,
        )
        if (arrays := store.get(key, lambda arrays: view_problem(arrays, num_frames))) is not None:
            return VideoView.from_arrays(arrays)
    wanted = set(_tile_positions(expected))
    indices: list[int] = []
    tiles: dict[int, np.ndarray] = {}

    def keep(position, timestamp_s, frame_index, rgb):
        indices.append(frame_index)
        if position in wanted:
            tiles[position] = _tile(rgb)

    track = video_face_track(
        media, num_frames=num_frames, settings=settings, cache=store or False, on_frame=keep, progress=progress
    )
    if not indices:  # the track came from the cache (written by another caller): decode for the pictures only
        if num_frames is None:
            frames = ((t, i, rgb) for t, i, rgb in iter_frames(media))
        else:
            clip = load_video(media, num_frames=num_frames, with_audio=False)
            frames = zip(clip.timestamps_s, clip.frame_indices, clip.frames, strict=True)
        for position, (t, index, rgb) in enumerate(frames):
            keep(position, t, index, rgb)
    positions = sorted(p for p in tiles if p < len(track))
    view = VideoView(track, np.asarray(indices[: len(track)], np.int64), positions, [tiles[p] for p in positions])
    arrays = view.to_arrays()
    if store is not None:
        store.put(key, arrays)
    return VideoView.from_arrays(arrays)  # the tiles as the cache holds them, so a cached run draws the same picture


def _video(args, info, settings, cache):
    from tqdm import tqdm

    from mllm.face.draw import contact_sheet

    available = round(info.duration_s * info.average_fps) if info.duration_s and info.average_fps else None
    num_frames = args.frames
    if available is not None and args.frames >= available:
        # More samples than frames would only repeat frames (and hold them all): take every frame, streamed.
        if args.frames > available:
            print(
                f"emoreason faces: note: {args.media} has {available} frames; --frames {args.frames} is clamped to "
                f"every frame ({available})",
                file=sys.stderr,
            )
        num_frames = None
    expected = available if num_frames is None else num_frames
    with tqdm(total=expected, desc="tracking", unit="frame", disable=None, leave=False) as bar:
        view = video_view(args.media, num_frames, settings, cache, expected, progress=lambda n: bar.update(n - bar.n))
    track = view.track
    result = {
        "media": str(args.media),
        "kind": "video",
        "detector": settings.detector.detector,
        "size": {"height": int(track.frame_size[0]), "width": int(track.frame_size[1])},
        "duration_s": round(float(info.duration_s or track.timestamps_s[-1]), 3),
        "frames": [
            {
                "index": int(view.frame_indices[i]),
                "timestamp_s": round(float(track.timestamps_s[i]), 4),
                "face_found": bool(track.found[i]),
                "interpolated": bool(track.interpolated[i]),
                "box": _box(track.boxes[i]) if track.has_face[i] else None,
                "landmarks_68": _round(track.landmarks_68[i]) if track.has_face[i] else None,
            }
            for i in range(len(track))
        ],
    }
    picture = contact_sheet(
        view.tiles, track, columns=args.columns, tile_width=TILE_WIDTH, positions=view.tile_positions
    )
    shown = f"; the sheet shows {len(view.tiles)} of them" if len(view.tiles) < len(track) else ""
    summary = (
        f"face in {int(track.found.sum())}/{len(track)} frames ({int(track.interpolated.sum())} interpolated){shown}"
    )
    return result, picture, summary
