"""`emoreason eval run|merge|report|compare`: batch evaluation with the challenges' metrics.

    emoreason eval run --data data/abaw --model runs/sft/model --split validation --task expr --out eval/expr
    emoreason eval merge eval/expr-1 eval/expr-2 --out eval/expr      # shards of one run, joined and scored
    emoreason eval report eval/expr --smooth 15                        # score again, with smoothing over frames
    emoreason eval compare eval/expr-sft eval/expr-grpo               # B - A per metric, paired bootstrap CIs

`run` answers (resumable, `eval.run`) and then scores: `metrics.json`, `report.md`, `confusion_matrix.png`,
`per_class_f1.png` in the run folder (`eval.report`). A shard (`--shard I/N`) is scored when merged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "Evaluate: run (answer a split, resumable), merge (join shards), report (score a run), compare (two runs)."


def _report(out: Path, settings: dict, window: int) -> list[Path]:
    from eval.report import evaluate, write_report
    from eval.run import PREDICTIONS, read_predictions
    from train.data import dataset_label_space, load_split

    rows = load_split(settings["data"], settings["split"], [settings["task"]], settings.get("max_samples"), seed=0)
    predictions = read_predictions(out / PREDICTIONS)
    space = dataset_label_space(Path(settings["data"]))
    result, extra = evaluate(rows, predictions, settings["task"], space, window)
    written = write_report(out, result, extra, settings)
    for line in _summary(result):
        print(line)
    return written


def _summary(result: dict) -> list[str]:
    lines = [f"{result['answered']}/{result['samples']} answered, parse failures {result['parse_failures']}"]
    for level in ("frame_level", "sample_level", "faithfulness"):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result[level].items() if isinstance(v, float))
        if shown:
            lines.append(f"{level.replace('_', ' ')}: {shown}")
    return lines


def _merge(args) -> int:
    from eval.run import PREDICTIONS, RUN_FILE, parse_shard, read_predictions
    from mllm.outputs import atomic_write_text, claim_output_dir

    settings, shards, merged = None, set(), {}
    for folder in map(Path, args.runs):
        run_file = folder / RUN_FILE
        if not run_file.is_file():
            raise FileNotFoundError(f"{folder}: not an `eval run` folder (no {RUN_FILE})")
        these = json.loads(run_file.read_text())
        part, total = parse_shard(these["shard"])
        common = {k: v for k, v in these.items() if k != "shard"}
        if settings is None:
            settings, expected = common, total
        elif common != settings or total != expected:
            differing = sorted(k for k in set(common) | set(settings) if common.get(k) != settings.get(k))
            raise ValueError(f"{folder}: another run's shard (differs in {', '.join(differing) or 'shard count'})")
        if part in shards:
            raise ValueError(f"{folder}: shard {part}/{total} given twice")
        shards.add(part)
        for sample, record in read_predictions(folder / PREDICTIONS).items():
            if sample in merged:
                raise ValueError(f"{folder}: id {sample!r} is in two shards")
            merged[sample] = record
    missing = sorted(set(range(1, expected + 1)) - shards)
    if missing:
        print(f"warning: shards {missing} of {expected} are missing; their samples count as unanswered",
              file=sys.stderr)  # fmt: skip
    out = claim_output_dir(args.out, protect=args.runs, what="--out")
    settings = {**settings, "shard": "1/1"}
    atomic_write_text(out / RUN_FILE, json.dumps(settings, indent=1) + "\n")
    text = "".join(json.dumps(merged[k], ensure_ascii=False) + "\n" for k in sorted(merged))
    atomic_write_text(out / PREDICTIONS, text)
    _report(out, settings, args.smooth)
    return 0


def add_arguments(parser) -> None:
    from eval import run as run_module

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="answer a dataset split through the engine, then score it")
    run_module.add_arguments(p)
    p.add_argument("--smooth", type=int, default=1, help="frames in the smoothing window (odd; 1: none)")
    p = sub.add_parser("merge", help="join the shards of one run and score them")
    p.add_argument("runs", nargs="+", help="the shards' run folders")
    p.add_argument("--out", required=True)
    p.add_argument("--smooth", type=int, default=1)
    p = sub.add_parser("compare", help="metric differences between two runs, with paired bootstrap intervals")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--smooth", type=int, default=1)
    p = sub.add_parser("report", help="score a run folder again (for example with smoothing)")
    p.add_argument("run_dir", help="an `eval run` or `eval merge` folder")
    p.add_argument("--smooth", type=int, default=1)
    for action in sub.choices.values():
        action.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    if args.smooth < 1 or args.smooth % 2 == 0:
        raise ValueError(f"--smooth must be an odd number of frames (1: none), got {args.smooth}")
    if args.action == "merge":
        return _merge(args)
    if args.action == "compare":
        from eval.compare import run as compare

        return compare(args)
    if args.action == "report":
        from eval.run import RUN_FILE

        folder = Path(args.run_dir)
        if not (folder / RUN_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not an `eval run` folder (no {RUN_FILE})")
        _report(folder, json.loads((folder / RUN_FILE).read_text()), args.smooth)
        return 0
    from eval import run as run_module

    code = run_module.run(args)
    if code == 0 and run_module.parse_shard(args.shard) == (1, 1):
        _report(Path(args.out), run_module.run_settings(args), args.smooth)
    return code
