"""`emoreason data build DATASET --root DIR --out DIR`, `emoreason data faces DIR --model DIR` and
`emoreason data inspect DIR`."""

from __future__ import annotations

import json
import os
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
    build.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or a dataset emoreason built before (replaced atomically); never an input",
    )
    build.add_argument("--task", action="append", choices=["expr", "au", "va", "ah"], help="repeatable; default all")
    build.add_argument("--split", action="append", help="repeatable; default all")
    build.add_argument("--skip-bad", action="store_true", help="count and report malformed lines instead of stopping")
    build.add_argument("--seed", type=int, default=0, help="chooses the explanation phrasings")
    build.add_argument("--clip-len", type=int, default=16, help="frames per clip (ABAW)")
    build.add_argument("--clip-stride", type=int, default=16, help="frames between clip starts (ABAW)")
    build.add_argument("--classes", type=int, default=7, choices=[7, 8], help="AffectNet: 7 or 8 classes")
    build.add_argument(
        "--openface", default=None, help="folder of OpenFace 2.0 CSVs (<video or image stem>.csv) to join"
    )
    build.add_argument("--no-transcript", action="store_true", help="keep BAH transcripts out of the prompt")
    build.add_argument(
        "--drop-conflicts",
        action="store_true",
        help="leave out samples whose active AUs are not the usual ones for their label (target_grounding=conflict)",
    )
    build.add_argument(
        "--allow-split-overlap",
        action="store_true",
        help="build even when a video or image is in two splits of one protocol (leakage; counted and listed)",
    )
    from data_builders.faces import add_arguments as add_faces_arguments

    add_faces_arguments(sub)
    inspect = sub.add_parser("inspect", help="print samples of a built dataset")
    inspect.add_argument("path")
    inspect.add_argument("--split", default=None)
    inspect.add_argument("-n", type=int, default=3)


REPORT_FILE = "build_report.json"
_SHOWN = 200  # problems listed on the console per kind; all of them are in REPORT_FILE


def build(args):
    from rich.console import Console
    from tqdm import tqdm

    from data_builders import get_builder, tasks_of
    from data_builders.common import BuildOptions, BuildReport
    from data_builders.schema import write_dataset

    # Everything is checked, and the output claimed, before any work starts.
    options = BuildOptions(
        root=Path(os.path.abspath(args.root)),  # media paths in the dataset work from any folder
        tasks=tuple(args.task or ()),
        splits=tuple(args.split or ()),
        skip_bad=args.skip_bad,
        seed=args.seed,
        clip_len=args.clip_len,
        clip_stride=args.clip_stride,
        classes=args.classes,
        transcript_in_prompt=not args.no_transcript,
        allow_split_overlap=args.allow_split_overlap,
    )
    offered = tasks_of(args.dataset)
    if any(task not in offered for task in options.tasks):
        raise ValueError(f"--task {'/'.join(options.tasks)}: {args.dataset} has only {', '.join(offered)}")
    if not options.root.is_dir():
        raise FileNotFoundError(f"{options.root}: dataset root not found (or not a folder)")
    openface = Path(args.openface) if args.openface is not None else None
    if openface is not None and not openface.is_dir():
        raise FileNotFoundError(f"{openface}: --openface folder not found (or not a folder)")
    protect = [p for p in (options.root, openface) if p is not None]
    claim = _Claim(args.out, protect)
    with claim:
        report = BuildReport()
        with tqdm(desc=f"building {args.dataset}", unit="file", disable=None) as bar:

            def progress(step, total):
                bar.total = total
                bar.update(step)

            samples = get_builder(args.dataset)(options, report, progress)
        if openface is not None:
            from data_builders.openface import join

            joined = join(samples, openface, options, report)
            if not joined:
                report.warnings.append(
                    f"{openface}: no OpenFace CSV matched a sample (looked for <video or image stem>.csv)"
                )
        built = {s.split for s in samples}
        for split in options.splits:
            if built and split not in built:
                raise ValueError(f"--split {split}: no samples in that split (built: {', '.join(sorted(built))})")
        conflicts = sum(s.target_grounding == "conflict" for s in samples)
        if args.drop_conflicts:
            samples = [s for s in samples if s.target_grounding != "conflict"]
        if not samples:
            raise ValueError(f"{options.root}: no samples built (check --task / --split and the layout)")
        summary = _summary(args, samples, report, conflicts)
        write_dataset(samples, claim.out, files={REPORT_FILE: json.dumps(summary, indent=1) + "\n"}, protect=protect)
    _print_summary(Console(), args, samples, report, conflicts, claim.out)
    return 0


class _Claim:
    """`--out` claimed before any work (`mllm.outputs.claim_output_dir`, the inputs protected, links followed);
    on failure, a folder this run created (or marked) is taken back, so a failed build leaves what was there."""

    def __init__(self, out_arg: str, protect: list[Path]):
        from data_builders.schema import clean_litter_beside
        from mllm.outputs import OutputRefusedError, claim_output_dir

        out = Path(os.path.abspath(os.path.expanduser(out_arg)))
        real = Path(os.path.realpath(out))
        for item in protect:
            guarded = Path(os.path.realpath(item))
            if real == guarded or guarded in real.parents or real in guarded.parents:
                raise OutputRefusedError(
                    f"{out_arg}: --out is, is inside or contains the input {item} (links followed); "
                    "choose a separate folder"
                )
        # A build killed between the two renames that swap the dataset folder left the previous one aside: put it
        # back (and drop killed builds' temporaries) before looking at what --out holds.
        if out.parent.is_dir() and os.access(out.parent, os.W_OK | os.X_OK):
            clean_litter_beside(out)
        # The dataset folder is replaced as a whole: its parent must take the new one.
        if out.exists() and not os.access(out.parent, os.W_OK | os.X_OK):
            raise OutputRefusedError(f"{out_arg}: --out's parent folder {out.parent} is not writable")
        self.created = []
        missing = out
        while not missing.exists() and missing != missing.parent:
            self.created.append(missing)
            missing = missing.parent
        self.was_empty = out.is_dir() and not any(out.iterdir())
        self.out = claim_output_dir(out_arg, protect=protect, kind="dataset")

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from mllm.outputs import MARKER

        if kind is None or not (self.created or self.was_empty):
            return False
        if self.out.is_dir() and [e.name for e in self.out.iterdir()] == [MARKER]:
            (self.out / MARKER).unlink()
            for folder in self.created:  # deepest first; stops at the first that holds anything
                try:
                    folder.rmdir()
                except OSError:
                    break
        return False


def _summary(args, samples, report, conflicts: int) -> dict:
    groups = Counter((s.split, s.task) for s in samples)
    return {
        "dataset": args.dataset,
        "root": str(args.root),
        "options": {
            k: getattr(args, k)
            for k in ("task", "split", "skip_bad", "seed", "clip_len", "clip_stride", "classes", "openface")
            + ("no_transcript", "drop_conflicts", "allow_split_overlap")
        },
        "samples": {f"{split}/{task}": n for (split, task), n in sorted(groups.items())},
        "conflict_targets": conflicts,
        "conflicts_dropped": conflicts if args.drop_conflicts else 0,
        **report.to_dict(),
    }


def _print_summary(console, args, samples, report, conflicts: int, out: Path) -> None:
    from rich.table import Table

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
        f"{len(report.missing_media)}",
        markup=False,
        soft_wrap=True,
    )
    kept = "left out (--drop-conflicts)" if args.drop_conflicts else "kept, marked target_grounding=conflict"
    console.print(
        f"exact duplicates dropped: {len(report.duplicates)}; targets whose AUs are not the usual ones for the "
        f"answer: {conflicts} ({kept}); split overlaps allowed: {len(report.overlaps)}; ignored files: "
        f"{len(report.ignored)}; warnings: {len(report.warnings)}",
        markup=False,
        soft_wrap=True,
    )
    for kind, items in (
        ("bad", report.bad_lines),
        ("missing", report.missing_media),
        ("duplicate", report.duplicates),
        ("WARNING split overlap", report.overlaps),
        ("ignored", report.ignored),
        ("warning", report.warnings),
    ):
        for item in items[:_SHOWN]:
            console.print(f"  {kind}: {item}", markup=False, soft_wrap=True)
        if len(items) > _SHOWN:
            more = f"  ... {len(items) - _SHOWN} more {kind} entries in {out / REPORT_FILE}"
            console.print(more, markup=False, soft_wrap=True)
    console.print(f"report: {out / REPORT_FILE}", markup=False, soft_wrap=True)


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
            print(f"  prompt: {_shortened(text, 400)}")
            print(f"  target: {_shortened(row['target'], 600)}")
    return 0


def _shortened(text: str, limit: int) -> str:
    """`text` whole when it fits, else cut at the last word boundary before `limit` and marked, with the count of
    characters left out (never mid-word)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    cut = cut if cut > limit // 2 else limit
    return f"{text[:cut].rstrip()} ... ({len(text) - cut} more characters)"


def run(args) -> int:
    if args.data_command == "faces":
        from data_builders.faces import run as faces

        return faces(args)
    return build(args) if args.data_command == "build" else inspect(args)
