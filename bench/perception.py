"""Perception benchmark: frames per second for decode + tracked 68-point landmarks, cold and cached.

    .venv/bin/python bench/perception.py [--frames 300] [--repeats 3]

Generates h264 videos of a real face (the astronaut photograph) drifting over a textured background at 640x360
and 1280x720, then times, side by side in one run: decoding alone, decode + landmarks with an empty cache
(cold), and the same call again (cached). Prints a table; the median of `--repeats` runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mllm import synthetic  # noqa: E402
from mllm.face import FaceCache, FaceDetector, video_face_track  # noqa: E402
from mllm.media import iter_frames  # noqa: E402


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(path: Path, workdir: Path, repeats: int) -> dict:
    """Decode-only, cold and cached timings for one video."""
    decode_s, _ = _median_seconds(lambda: sum(1 for _ in iter_frames(path)), repeats)
    detectors: list[FaceDetector] = []

    def cold():
        detectors.append(FaceDetector())
        fresh = FaceCache(workdir / f"cold_{len(detectors)}")  # a new cache directory each run: nothing to hit
        return video_face_track(path, cache=fresh, detector=detectors[-1])

    cold_s, track = _median_seconds(cold, repeats)
    warm = FaceCache(workdir / "warm")
    video_face_track(path, cache=warm)
    cached_s, _ = _median_seconds(lambda: video_face_track(path, cache=warm), repeats)
    n = len(track)
    return {
        "decode only fps": f"{n / decode_s:.0f}",
        "cold fps": f"{n / cold_s:.0f}",
        "cached fps": f"{n / cached_s:.0f}",
        "cached / cold": f"{cold_s / cached_s:.0f}x",
        "detector runs": f"{detectors[-1].detect_calls}",
        "face found": f"{track.found.mean():.0%}",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per generated video (25 fps)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    console = Console()
    FaceDetector()  # load dlib's models once, outside the timings (a one-off per process, about 1 s)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in [(360, 640), (720, 1280)]:
            console.print(f"{width}x{height}: generating, then timing ...")
            frames = synthetic.face_frames(args.frames, size=(height, width), face_height_fraction=0.6)
            path = synthetic.write_video(Path(tmp) / f"bench_{height}.mp4", frames, fps=25)
            workdir = Path(tmp) / f"work_{height}"
            rows[f"{width}x{height}"] = measure(path, workdir, args.repeats)
    table = Table(title=f"decode + landmarks, {args.frames} frames per video, median of {args.repeats}")
    table.add_column("video")
    for column in next(iter(rows.values())):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, *row.values())
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
