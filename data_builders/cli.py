"""`emoreason data build DATASET --root DIR --out DIR` and `emoreason data inspect DIR`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

HELP = "Build datasets into the instruction schema (build), or print samples of a built one (inspect)."


def add_arguments(parser) -> None:
    from data_builders import BUILDERS

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="build a dataset from its official layout", description=__doc__)
    build.add_argument("dataset", choices=sorted(BUILDERS))
    build.add_argument("--root", required=True, help="the dataset's root folder")
    build.add_argument("--out", required=True, help="output folder (replaced atomically)")
    build.add_argument("--task", action="append", choices=["expr", "au", "va", "ah"], help="repeatable; default all")
    build.add_argument("--split", action="append", help="repeatable; default all")
    build.add_argument("--skip-bad", action="store_true", help="count and report malformed lines instead of stopping")
    build.add_argument("--seed", type=int, default=0, help="chooses the explanation phrasings")
    build.add_argument("--clip-len", type=int, default=16, help="frames per clip (ABAW)")
    build.add_argument("--clip-stride", type=int, default=16, help="frames between clip starts (ABAW)")
    build.add_argument("--classes", type=int, default=7, choices=[7, 8], help="AffectNet: 7 or 8 classes")
    build.add_argument("--openface", default=None, help="folder of OpenFace 2.0 CSVs (<video stem>.csv) to join")
    build.add_argument("--no-transcript", action="store_true", help="keep BAH transcripts out of the prompt")
    inspect = sub.add_parser("inspect", help="print samples of a built dataset")
    inspect.add_argument("path")
    inspect.add_argument("--split", default=None)
    inspect.add_argument("-n", type=int, default=3)


def build(args):
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from data_builders import get_builder
    from data_builders.common import BuildOptions, BuildReport
    from data_builders.schema import write_dataset

    options = BuildOptions(
        root=Path(args.root),
        tasks=tuple(args.task or ()),
        splits=tuple(args.split or ()),
        skip_bad=args.skip_bad,
        seed=args.seed,
        clip_len=args.clip_len,
        clip_stride=args.clip_stride,
        classes=args.classes,
        transcript_in_prompt=not args.no_transcript,
    )
    if not options.root.is_dir():
        raise FileNotFoundError(f"{options.root}: dataset root not found")
    report = BuildReport()
    with tqdm(desc=f"building {args.dataset}", unit="file", disable=None) as bar:

        def progress(step, total):
            bar.total = total
            bar.update(step)

        samples = get_builder(args.dataset)(options, report, progress)
    if args.openface:
        from data_builders.openface import join

        join(samples, Path(args.openface), options, report)
    if not samples:
        raise ValueError(f"{options.root}: no samples built (check --task / --split and the layout)")
    write_dataset(samples, args.out)

    console = Console()
    table = Table(title=f"{args.dataset} -> {args.out}")
    for column in ("split", "task", "samples", "classes"):
        table.add_column(column)
    groups = Counter((s.split, s.task) for s in samples)
    for (split, task), n in sorted(groups.items()):
        histogram = Counter(_class_of(s) for s in samples if s.split == split and s.task == task)
        table.add_row(split, task, str(n), ", ".join(f"{k}: {v}" for k, v in sorted(histogram.items())))
    console.print(table)
    console.print(
        f"frames: {report.total_frames} annotated, {report.invalid_frames} invalid, {report.fallback_frames} "
        f"missing crops filled from the nearest frame; clips skipped (no valid frame / excluded): "
        f"{report.skipped_clips}; malformed lines skipped: {len(report.bad_lines)}; missing media: "
        f"{len(report.missing_media)}"
    )
    for line in report.bad_lines[:20]:
        console.print(f"  bad: {line}", markup=False)
    for path in report.missing_media[:20]:
        console.print(f"  missing: {path}", markup=False)
    return 0


def _class_of(sample) -> str:
    if sample.task == "expr":
        return sample.expression
    if sample.task == "au":
        return f"{len(sample.aus)} AUs"
    if sample.task == "ah":
        return "present" if sample.ah == 1 else "absent"
    return "positive valence" if sample.valence >= 0 else "negative valence"


def inspect(args):
    from datasets import load_from_disk

    data = load_from_disk(args.path)
    splits = [args.split] if args.split else list(data.keys())
    for split in splits:
        if split not in data:
            raise ValueError(f"{args.path}: no split {split!r}; splits: {sorted(data.keys())}")
        print(f"== {split}: {len(data[split])} samples")
        for row in data[split].select(range(min(args.n, len(data[split])))):
            prompt = json.loads(row["prompt"])
            text = next(p["text"] for p in prompt[0]["content"] if p["type"] == "text")
            media = row["video"] or row["image"] or (row["frames"][0] if row["frames"] else "")
            print(f"- {row['id']}  [{row['task']}] media={media} frames={len(row['frames'])}")
            print(f"  prompt: {text[:160]}")
            print(f"  target: {row['target'][:400]}")
    return 0


def run(args) -> int:
    return build(args) if args.data_command == "build" else inspect(args)
