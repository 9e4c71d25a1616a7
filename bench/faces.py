"""Face tracking for a whole dataset ahead of training: `emoreason data faces` on 1 worker against N workers, and
against what users do today (the first training epoch tracking each sample as the collator meets it, one process).

    .venv/bin/python bench/faces.py [--clips 24] [--seconds 2] [--workers 1 2]

A DFEW-layout dataset of camera-like clips (h264, 360x640 at 25 fps, the astronaut in front of a real scene with
sensor noise, moving and turning; `synthetic.write_camera_video`), built with `emoreason data build dfew`, on
the tiny checkpoint's processor (16 frames a clip). Each run starts from an empty face cache. Frames a second are
the frames tracked over the command's wall time (its workers' start included); "time left" in the progress bar
comes from the same rate.
"""

from __future__ import annotations

import argparse
import os
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


def timed(cmd: list[str], cache: Path) -> float:
    env = {**os.environ, "EMOREASON_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    from mllm.samples.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"building {args.clips} clips of {args.seconds:g} s", file=sys.stderr, flush=True)
        model = make_tiny(work / "tiny")
        data = dfew_dataset(work, args.clips, args.seconds)
        cli = str(Path(sys.executable).parent / "emoreason")
        frames = args.clips * 16
        # Today: the collator meets each sample in the first epoch and tracks it then, in the training process.
        collate = ("import json,sys; from datasets import load_from_disk; from mllm.processor import "
                   "EmoReasonProcessor as P; p=P.from_pretrained(sys.argv[1]); d=load_from_disk(sys.argv[2]); "
                   "[p([json.loads(r)]) for s in d for r in d[s]['prompt']]")  # fmt: skip
        rows = [("first epoch's collator (today)", 1, timed([sys.executable, "-c", collate, str(model), str(data)],
                                                            work / "cache-today"))]  # fmt: skip
        for n in args.workers:
            cmd = [cli, "data", "faces", str(data), "--model", str(model), "--workers", str(n)]
            rows.append((f"emoreason data faces --workers {n}", n, timed(cmd, work / f"cache-{n}")))
    base = rows[0][2]
    print(f"\n{args.clips} clips x 16 frames ({frames} frames tracked), 360x640 camera-like h264, tiny processor\n")
    print("| system | processes | seconds | frames / s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, n, seconds in rows:
        print(f"| {name} | {n} | {seconds:.1f} | {frames / seconds:.1f} | {base / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
