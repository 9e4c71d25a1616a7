"""`emoreason eval run|merge|report|compare|submit|score`: batch evaluation with the challenges' metrics.

    emoreason eval run --data data/abaw --model runs/sft/model --split validation --task expr --out runs/eval-expr
    emoreason eval merge runs/eval-1 runs/eval-2 --out runs/eval      # shards of one run, joined and scored
    emoreason eval report runs/eval --smooth 15                        # score again, with smoothing over frames
    emoreason eval compare runs/eval-sft runs/eval-grpo               # B - A per metric, paired bootstrap CIs
    emoreason eval submit runs/eval --sample CVPR_6th_ABAW_Expr_test_set_sample.txt --out predictions.txt
    emoreason eval score --task abaw_expr --predictions predictions.txt --annotations .../Validation_Set

`run` answers (resumable, `eval.run`) and then scores: `metrics.json`, `report.md`, `confusion_matrix.png`,
`per_class_f1.png` in the run folder (`eval.report`). A shard (`--shard I/N`) is scored when merged. The summary on
stdout says over how many classes the expression macro F1 averages and how many of them are in the truth, and
names the first answer that did not parse (more in report.md, the model's text escaped). The confusion matrix
leaves out the classes in neither truth nor predictions, naming them, unless `--all-classes`.

Bad input: every file a command reads is checked before any work or output (`eval.files`: line by line, each
line bounded, a problem named `FILE:LINE: field: reason`); outputs are claimed first (`mllm.outputs`: a run folder
of kind eval-run, a challenge file that is new or one this command wrote and nobody changed; never an input, links
followed); a run, merge, report, compare or submission with no prediction to work on is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = (
    "Evaluate: run (answer a split, resumable), merge (join shards), report (score a run), compare (two runs), "
    "submit (challenge files), score (a challenge file)."
)

MAX_SMOOTH = 1001  # frames (33 s at 30 fps); each frame's vote reads the whole window


def _report(out: Path, settings: dict, window: int, all_classes: bool = False) -> dict:
    from eval.report import evaluate, write_report
    from eval.run import PREDICTIONS, rows_and_predictions

    rows, space, predictions = rows_and_predictions(out, settings, "score")
    result, extra = evaluate(rows, predictions, settings["task"], space, window)
    if not result["sample_level"] and not result["frame_level"]:
        raise ValueError(f"{out / PREDICTIONS}: {result['answered']} of {result['samples']} samples answered, "
                         f"{result['parse_failures']} did not parse, {result['unreadable_media']} unreadable: no "
                         f"{settings['task']} metric can be computed from them; nothing scored")  # fmt: skip
    write_report(out, result, extra, settings, all_classes)
    for line in _summary(result, extra):
        print(line)
    return result


def _summary(result: dict, extra: dict) -> list[str]:
    """What `eval run|merge|report` print: counts, each level's scores (the expression macro F1 with the classes it
    averages over, `eval.report.macro_f1_text`), and the first answer that did not parse, its text escaped."""
    from eval.report import macro_f1_text
    from serve.analyze import printable

    lines = [
        f"{result['answered']}/{result['samples']} answered, parse failures {result['parse_failures']}, "
        f"unreadable media {result['unreadable_media']}"
    ]
    for level in ("frame_level", "sample_level", "faithfulness"):
        values = result[level]
        shown = ", ".join(
            macro_f1_text(values, extra.get("confusion")) if k == "macro_f1" and "macro_f1_classes" in values
            else f"{k} {v:.4f}"
            for k, v in values.items() if isinstance(v, float)
        )  # fmt: skip
        if shown:
            lines.append(f"{level.replace('_', ' ')}: {shown}")
    if extra.get("failures"):
        sample, record = extra["failures"][0]
        lines.append(printable(f"first answer that did not parse: {sample}: {record.get('error')}: "
                               f"{record.get('message', '')} (more in report.md)"))  # fmt: skip
    return lines


def _existing(*paths) -> list[str]:
    """The inputs to protect from being written over: those named and on disk (a hub id is not a path)."""
    return [str(p) for p in paths if p and Path(p).exists()]


def _run_inputs(settings: dict) -> list[str]:
    return _existing(settings["data"], settings.get("model"), settings.get("adapter"))


def _merge(args) -> int:
    from data_builders.read import dataset_label_space, load_split
    from eval.run import PREDICTIONS, RUN_FILE, check_same_run, load_run, parse_shard, read_predictions
    from mllm.labels import label_space
    from mllm.outputs import atomic_path, atomic_write_text, claim_output_dir

    settings, shards = None, {}
    for folder in map(Path, args.runs):
        these = load_run(folder)
        part, total = parse_shard(these["shard"])
        common = {k: v for k, v in these.items() if k != "shard"}
        if settings is None:
            settings, expected = common, total
        elif common != settings or total != expected:
            differing = sorted(k for k in set(common) | set(settings) if common.get(k) != settings.get(k))
            raise ValueError(f"{folder}: another run's shard (differs in {', '.join(differing) or 'shard count'})")
        if part in shards:
            raise ValueError(f"{folder}: shard {part}/{total} given twice")
        shards[part] = folder
    rows = load_split(settings["data"], settings["split"], [settings["task"]], settings.get("max_samples"), seed=0)
    labels = label_space(dataset_label_space(Path(settings["data"])))
    where = f"{settings['data']} [{settings['split']}] task {settings['task']}"
    merged, source = {}, {}
    for folder in shards.values():
        path = folder / PREDICTIONS
        for sample, record in read_predictions(path, task=settings["task"], labels=labels, ids=set(rows["id"]),
                                               ids_from=where).items():  # fmt: skip
            if sample in merged:
                raise ValueError(f"{path}: id {sample!r} is also in {source[sample]}; a sample is in one shard")
            merged[sample], source[sample] = record, path
    if not merged:
        raise ValueError(f"{', '.join(args.runs)}: no prediction in any shard; nothing to merge")
    missing = sorted(set(range(1, expected + 1)) - set(shards))
    if missing:
        print(f"warning: shards {missing} of {expected} are missing; their samples count as unanswered",
              file=sys.stderr)  # fmt: skip
    out = claim_output_dir(args.out, protect=[*args.runs, *_run_inputs(settings)], what="--out", kind="eval-run")
    settings = {**settings, "shard": "1/1"}
    check_same_run(out, settings)  # another run's answers are never replaced
    atomic_write_text(out / RUN_FILE, json.dumps(settings, indent=1) + "\n")
    with atomic_path(out / PREDICTIONS) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for sample in sorted(merged):
            f.write(json.dumps(merged[sample], ensure_ascii=False) + "\n")
    _report(out, settings, args.smooth, args.all_classes)
    return 0


def _submission_inputs(args, task: str):
    """The frame list (ABAW) or the reference videos (BAH) a challenge file is written over, read and checked."""
    from eval.submission import frames_from_annotations, frames_from_sample, reference_videos

    if task == "ah":
        if not args.reference:
            raise ValueError("BAH: --reference SPLIT_FILE names the videos and their order")
        return [v for v, _ in reference_videos(args.reference)]
    if bool(args.sample) == bool(args.frames_from):
        raise ValueError("ABAW: give the frame list with --sample FILE (test set) or --frames-from DIR")
    return frames_from_sample(args.sample) if args.sample else frames_from_annotations(args.frames_from, task)


def _claim_submission(path, run_folder, protect: list) -> Path:
    """The challenge file: never inside the run folder (even one not made yet), never one of the inputs, and
    only replacing a file this command wrote (`mllm.outputs.claim_output_file`)."""
    from mllm.outputs import OutputRefusedError, claim_output_file

    target, folder = Path(path).expanduser().resolve(), Path(run_folder).expanduser().resolve()
    if target == folder or folder in target.parents:
        raise OutputRefusedError(f"{path}: the challenge file must not be inside the run folder {run_folder}")
    return claim_output_file(path, protect=_existing(run_folder, *protect), what="--out")


def _submit(args) -> int:
    from eval.report import frames_of
    from eval.run import inputs_of, load_run, rows_and_predictions
    from eval.submission import bah_video_answers, write_abaw, write_bah
    from mllm.labels import label_space

    folder = Path(args.run_dir)
    settings = load_run(folder)
    task = settings["task"]
    rows, space, predictions = rows_and_predictions(folder, settings, "submit")
    listed = _submission_inputs(args, task)
    out = _claim_submission(args.out, folder, [*_run_inputs(settings), *inputs_of(args)])
    if task == "ah":
        probabilities, predicted = bah_video_answers(rows, predictions)
        by_path = {v: Path(v).stem for v in listed}
        counts = write_bah(out, listed, {v: probabilities[s] for v, s in by_path.items() if s in probabilities},
                           {v: predicted[s] for v, s in by_path.items() if s in predicted})  # fmt: skip
    else:
        frames = frames_of(rows, predictions, task, label_space(space), args.smooth)
        if frames is None:
            raise ValueError(f"{folder}: its samples carry no per-frame labels; ABAW files are written per frame")
        counts = write_abaw(out, task, frames, listed)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _score(args) -> int:
    from eval.submission import score_abaw, score_bah

    if args.task == "bah":
        result = score_bah(args.predictions, args.annotations)
    else:
        result = score_abaw(args.task.split("_", 1)[1], args.predictions, args.annotations)
    print(json.dumps(result, indent=1))
    return 0


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default where it has one to say (not None, not a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


SMOOTH_HELP = "frames in the majority window over each frame's answers, odd; 1 is none"
ALL_CLASSES_HELP = ("draw every class of the label space in confusion_matrix.png (by default the classes in neither "
                    "truth nor predictions are left out, and named)")  # fmt: skip
SAMPLE_HELP = "ABAW: the organisers' sample file (its frames, in its order)"
FRAMES_FROM_HELP = "ABAW: the annotation folder (<video>.txt) listing the frames"
REFERENCE_HELP = "BAH: the split file (video_path,label,transcript)"


def add_arguments(parser) -> None:
    from eval import run as run_module

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(name: str, text: str):
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpWithDefaults)

    p = command("run", "answer a dataset split through the engine, then score it")
    run_module.add_arguments(p)
    p.add_argument("--smooth", type=int, default=1, metavar="N", help=SMOOTH_HELP)
    p.add_argument("--all-classes", action="store_true", help=ALL_CLASSES_HELP)
    p.add_argument("--submission", default=None, metavar="FILE", help="also write the challenge file (see submit)")
    p.add_argument("--sample", default=None, metavar="FILE", help=SAMPLE_HELP)
    p.add_argument("--frames-from", default=None, metavar="DIR", help=FRAMES_FROM_HELP)
    p.add_argument("--reference", default=None, metavar="FILE", help=REFERENCE_HELP)
    p = command("merge", "join the shards of one run and score them")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the shards' run folders (`eval run --shard I/N`)")
    p.add_argument("--out", required=True, metavar="DIR", help="the merged run folder (new, or this merge's)")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help=SMOOTH_HELP)
    p.add_argument("--all-classes", action="store_true", help=ALL_CLASSES_HELP)
    p = command("compare", "metric differences between two runs, with paired bootstrap intervals")
    p.add_argument("run_a", help="run folder A, the baseline")
    p.add_argument("run_b", help="run folder B, compared with A on the same samples")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help=SMOOTH_HELP)
    p = command("submit", "write a run's answers as the challenge's prediction file")
    p.add_argument("run_dir", help="an `eval run` or `eval merge` folder")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the prediction file to write (new, or one written by this command)")  # fmt: skip
    p.add_argument("--sample", default=None, metavar="FILE", help=SAMPLE_HELP)
    p.add_argument("--frames-from", default=None, metavar="DIR", help=FRAMES_FROM_HELP)
    p.add_argument("--reference", default=None, metavar="FILE", help=REFERENCE_HELP)
    p.add_argument("--smooth", type=int, default=1, metavar="N", help=SMOOTH_HELP)
    p = command("score", "score a challenge prediction file (ours or anyone's) against the annotations")
    p.add_argument("--task", required=True, choices=["abaw_expr", "abaw_au", "abaw_va", "bah"],
                   help="the challenge and task the file answers")  # fmt: skip
    p.add_argument("--predictions", required=True, metavar="FILE", help="the prediction file to score")
    p.add_argument("--annotations", required=True, metavar="PATH",
                   help="ABAW: the <video>.txt folder; BAH: the split file")  # fmt: skip
    p.add_argument("--smooth", type=int, default=1, help=argparse.SUPPRESS)
    p = command("report", "score a run folder again (for example with smoothing)")
    p.add_argument("run_dir", help="an `eval run` or `eval merge` folder")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help=SMOOTH_HELP)
    p.add_argument("--all-classes", action="store_true", help=ALL_CLASSES_HELP)
    for action in sub.choices.values():
        action.add_argument("--verbose", action="store_true", help="show the traceback of an error, not just one line")


def run(args) -> int:
    if not 1 <= args.smooth <= MAX_SMOOTH or args.smooth % 2 == 0:
        raise ValueError(f"--smooth must be an odd number of frames from 1 (none) to {MAX_SMOOTH}, got {args.smooth}")
    if args.action != "score":
        import datasets

        datasets.disable_progress_bars()  # filtering a split takes no time worth a bar, and would surround an error
    if args.action == "merge":
        return _merge(args)
    if args.action == "submit":
        return _submit(args)
    if args.action == "score":
        return _score(args)
    if args.action == "compare":
        from eval.compare import run as compare

        return compare(args)
    if args.action == "report":
        from eval.run import load_run
        from mllm.outputs import claim_output_dir

        settings = load_run(args.run_dir)
        claim_output_dir(args.run_dir, protect=_run_inputs(settings), what="the run folder", kind="eval-run")
        _report(Path(args.run_dir), settings, args.smooth, args.all_classes)
        return 0
    from eval import run as run_module

    run_module.check_counts(args)
    if args.submission:  # checked before any answering
        if run_module.parse_shard(args.shard) != (1, 1):
            raise ValueError("--submission is written for a whole run: give it to `eval submit` after `eval merge`")
        _submission_inputs(args, args.task)
        _claim_submission(args.submission, args.out, [args.data, args.model, args.adapter,
                                                      *run_module.inputs_of(args)])  # fmt: skip
    code = run_module.run(args)
    if code == 0 and run_module.parse_shard(args.shard) == (1, 1):
        result = _report(Path(args.out), run_module.run_settings(args), args.smooth, args.all_classes)
        if args.submission:
            args.run_dir, args.out = args.out, args.submission
            code = _submit(args)
        if result["unreadable_media"]:
            code = 3  # finished, scored, but some samples could not be answered
    return code
