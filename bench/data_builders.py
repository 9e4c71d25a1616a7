"""Data-builder benchmark: an ABAW-sized synthetic tree (EXPR, AU and VA annotations for hundreds of videos with
thousands of frames each), timed side by side: reading the annotation files only, building the samples (parse,
clips, chain-of-thought targets, and the checks every builder shares: repeated samples, split overlap), and writing
the dataset (into a claimed output folder, atomically).

    .venv/bin/python bench/data_builders.py [--videos 300] [--frames 3000]

Crop folders are made for a tenth of the videos (creating millions of empty files would time the file system,
not the builder); the others are reported as missing media, which exercises that path too.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from data_builders import get_builder  # noqa: E402
from data_builders.common import BuildOptions, BuildReport  # noqa: E402
from data_builders.schema import write_dataset  # noqa: E402
from mllm.labels import ABAW_AUS  # noqa: E402


def make_tree(root: Path, videos: int, frames: int) -> int:
    rng = random.Random(0)
    ann = root / "Annotations"
    lines = 0
    for v in range(videos):
        name = f"{v:03d}-{rng.randint(100, 999)}"
        split = "Train_Set" if v % 5 else "Validation_Set"
        expr = []
        label = rng.randint(0, 7)
        for _ in range(frames):
            if rng.random() < 0.01:
                label = rng.randint(0, 7)
            expr.append(str(label if rng.random() > 0.05 else -1))
        au = [",".join(rng.choice("0001") for _ in ABAW_AUS) for _ in range(frames)]
        va = [f"{rng.uniform(-1, 1):.3f},{rng.uniform(-1, 1):.3f}" for _ in range(frames)]
        for folder, header, rows in (
            ("EXPR_Recognition_Challenge", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other", expr),
            ("AU_Detection_Challenge", ",".join(ABAW_AUS), au),
            ("VA_Estimation_Challenge", "valence,arousal", va),
        ):
            path = ann / folder / split / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + "\n" + "\n".join(rows) + "\n")
            lines += len(rows)
        if v % 10 == 0:
            crops = root / "cropped_aligned" / name
            crops.mkdir(parents=True)
            for i in range(1, frames + 1):
                (crops / f"{i:05d}.jpg").touch()
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "abaw"
        console.print(f"generating {args.videos} videos x {args.frames} frames x 3 tasks ...")
        lines = make_tree(root, args.videos, args.frames)
        files = sorted(root.glob("Annotations/*/*/*.txt"))

        start = time.perf_counter()
        read_lines = sum(len(path.read_text().splitlines()) for path in files)
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        report = BuildReport()
        samples = get_builder("abaw")(BuildOptions(root=root), report)
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        write_dataset(samples, Path(tmp) / "out")
        write_s = time.perf_counter() - start

    table = Table(title=f"ABAW-sized build: {len(files)} files, {lines:,} annotation lines, {len(samples):,} samples")
    for column in ("stage", "seconds", "lines / s", "samples / s"):
        table.add_column(column, justify="right")
    table.add_row("read files only", f"{read_s:.2f}", f"{read_lines / read_s:,.0f}", "")
    table.add_row("build samples", f"{build_s:.2f}", f"{lines / build_s:,.0f}", f"{len(samples) / build_s:,.0f}")
    table.add_row("write dataset", f"{write_s:.2f}", "", f"{len(samples) / write_s:,.0f}")
    table.add_row("build / read", f"{build_s / read_s:.1f}x", "", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
