"""`emoreason faces MEDIA --out DIR`: landmarks as JSON and an overlay picture for an image or a video."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "Detect and track the face in an image or video; write landmarks.json and overlay.png to --out."


def add_arguments(parser) -> None:
    parser.add_argument("media", help="image or video file")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled uniformly from a video (default 16)")
    parser.add_argument(
        "--min-face",
        type=float,
        default=None,
        help="smallest face to find, as a fraction of the frame's shorter side (default 0 for images, 0.25 for video)",
    )
    parser.add_argument("--redetect-every", type=int, default=15, help="frames between periodic re-detections")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the face cache")
    parser.add_argument("--columns", type=int, default=4, help="contact sheet columns for video")


def _round(points) -> list:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


def run(args) -> int:
    from mllm.face import DetectorSettings, TrackerSettings, image_faces, video_face_track
    from mllm.face.draw import contact_sheet, overlay_image
    from mllm.media import load_image, load_video, media_kind

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    kind = media_kind(args.media)
    if kind == "audio":
        raise ValueError(f"{args.media}: is audio only; faces need an image or a video")
    out = Path(args.out)
    cache = not args.no_cache
    if kind == "image":
        rgb = load_image(args.media)
        settings = DetectorSettings(min_face_fraction=args.min_face or 0.0)
        faces = image_faces(args.media, settings=settings, image=rgb, cache=cache)
        result = {
            "media": str(args.media),
            "kind": "image",
            "size": {"height": rgb.shape[0], "width": rgb.shape[1]},
            "faces": [
                {
                    "primary": f.primary,
                    "box": [round(float(v), 2) for v in f.box],
                    "score": round(f.score, 4),
                    "landmarks_68": _round(f.landmarks_68),
                }
                for f in faces
            ],
        }
        picture = overlay_image(rgb, [(f.box, f.landmarks_68, f.primary) for f in faces])
        summary = f"{len(faces)} face(s)"
    else:
        clip = load_video(args.media, num_frames=args.frames, with_audio=False)
        detector = DetectorSettings(min_face_fraction=0.25 if args.min_face is None else args.min_face)
        settings = TrackerSettings(detector=detector, redetect_every=args.redetect_every)
        from tqdm import tqdm

        with tqdm(total=len(clip), desc="tracking", unit="frame", disable=None, leave=False) as bar:
            track = video_face_track(
                args.media,
                num_frames=args.frames,
                settings=settings,
                video=clip,
                cache=cache,
                progress=lambda n: bar.update(n - bar.n),
            )
        result = {
            "media": str(args.media),
            "kind": "video",
            "size": {"height": clip.frames.shape[1], "width": clip.frames.shape[2]},
            "duration_s": round(clip.duration_s, 3),
            "frames": [
                {
                    "index": int(clip.frame_indices[i]),
                    "timestamp_s": round(float(track.timestamps_s[i]), 4),
                    "face_found": bool(track.found[i]),
                    "interpolated": bool(track.interpolated[i]),
                    "box": [round(float(v), 2) for v in track.boxes[i]] if track.has_face[i] else None,
                    "landmarks_68": _round(track.landmarks_68[i]) if track.has_face[i] else None,
                }
                for i in range(len(track))
            ],
        }
        picture = contact_sheet(clip.frames, track, columns=args.columns)
        summary = (
            f"face in {int(track.found.sum())}/{len(track)} frames ({int(track.interpolated.sum())} interpolated)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "landmarks.json").write_text(json.dumps(result, indent=1))
    picture.save(out / "overlay.png")
    print(f"{args.media}: {summary} -> {out / 'landmarks.json'}, {out / 'overlay.png'}")
    return 0
