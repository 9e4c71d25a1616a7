"""Face tracking for a whole dataset ahead of training: `emoreason data faces` on 1 worker against N workers, and
against what users do today (the first training epoch tracking each sample as the collator meets it, one process).

    .venv/bin/python bench/faces.py [--clips 96] [--seconds 2] [--workers 1 2]

A DFEW-layout dataset of camera-like clips (h264, 360x640 at 25 fps, the astronaut in front of a real scene with
sensor noise, moving and turning; `synthetic.write_camera_video`), built with `emoreason data build dfew`, on
the tiny checkpoint's processor (its frames a clip). Each run starts from an empty face cache. Two times per row:
the command's wall time, start-up included (loading transformers and the processor, about 6 s, paid once however
big the dataset), and the tracking itself as the command reports it, from which frames a second, the rate per
process and the speed-up over one worker come (the rate the progress bar's "time left" follows)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dfew_dataset(work: Path, clips: int, seconds: float) -> Path:
    from mllm.cli import main as emoreason
    from mllm.samples.synthetic import write_camera_video

    root = work / "dfew"
    (root / "Clip" / "original").mkdir(parents=True)
    names = [f"{i + 1:05d}" for i in range(clips)]
    for i, name in enumerate(names):
        write_camera_video(root / "Clip" / "original" / f"{name}.mp4", n=int(25 * seconds), size=(360, 640), seed=i)
    for fold in range(1, 6):
        split = root / "EmoLabel_DataSplit"
        (split / "train(single-labeled)").mkdir(parents=True, exist_ok=True)
        (split / "test(single-labeled)").mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{int(n)},{1 + i % 7}\n" for i, n in enumerate(names))
        (split / "train(single-labeled)" / f"set_{fold}.csv").write_text("video_name,label\n" + rows)
        (split / "test(single-labeled)" / f"set_{fold}.csv").write_text("video_name,label\n")
    build = ["data", "build", "dfew", "--root", str(root), "--out", str(work / "data"), "--split", "fold1_train"]
    if emoreason(build):
        raise SystemExit("data build failed")
    return work / "data"


def timed(cmd: list[str], cache: Path) -> tuple[float, float]:
    """(the command's wall seconds, start-up included; the seconds it reports for the tracking itself)."""
    env = {**os.environ, "EMOREASON_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    report = re.search(r"in ([0-9.]+) s", done.stderr.rsplit("faces:", 1)[-1] if "faces:" in done.stderr else "")
    work = float(report.group(1)) if report else float(done.stdout.strip().splitlines()[-1])
    return wall, work


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    from mllm.processor import EmoReasonProcessor
    from mllm.samples.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"building {args.clips} clips of {args.seconds:g} s", file=sys.stderr, flush=True)
        model = make_tiny(work / "tiny")
        frames = args.clips * EmoReasonProcessor.from_pretrained(model).frames_per_clip
        data = dfew_dataset(work, args.clips, args.seconds)
        cli = str(Path(sys.executable).parent / "emoreason")
        # Today: the collator meets each sample in the first epoch and tracks it then, in the training process.
        collate = ("import json,sys,time; from datasets import load_from_disk; from mllm.processor import "
                   "EmoReasonProcessor as P; p=P.from_pretrained(sys.argv[1]); d=load_from_disk(sys.argv[2]); "
                   "t=time.perf_counter(); [p([json.loads(r)]) for s in d for r in d[s]['prompt']]; "
                   "print(time.perf_counter()-t)")  # fmt: skip
        print("timing the first epoch's collator", file=sys.stderr, flush=True)
        today = timed([sys.executable, "-c", collate, str(model), str(data)], work / "cache-today")
        rows = [("first epoch's collator (today)", 1, *today)]
        for n in args.workers:
            print(f"timing data faces --workers {n}", file=sys.stderr, flush=True)
            cmd = [cli, "data", "faces", str(data), "--model", str(model), "--workers", str(n)]
            rows.append((f"emoreason data faces --workers {n}", n, *timed(cmd, work / f"cache-{n}")))
    one = next((work for _, n, _, work in rows[1:] if n == 1), rows[0][3])
    print(f"\n{args.clips} clips of {args.seconds:g} s ({frames} frames sampled and tracked), 360x640 camera-like "
          f"h264, tiny processor, {os.cpu_count()} cores\n")  # fmt: skip
    print("| system | processes | wall s (start-up included) | tracking s | frames / s | per process | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, n, wall, seconds in rows:
        rate = frames / seconds
        print(f"| {name} | {n} | {wall:.1f} | {seconds:.1f} | {rate:.0f} | {rate / n:.0f} | {one / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
