"""Reports that read at a glance: the confusion matrix's text contrasts with its cell and leaves out the classes in
neither truth nor predictions unless `--all-classes`; the summary says what the macro F1 averages; a model's text
is printed with its control characters escaped; every `eval` option says what it does and its default."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from eval.pictures import INK, WHITE, confusion_matrix_picture, ink_on, luminance, shown_classes
from eval.report import macro_f1_text
from eval.run import PREDICTIONS, RUN_FILE, Appender
from mllm.labels import label_space
from mllm.outputs import MARKER

LABELS = list(label_space("abaw_expr"))
HOSTILE = "<think>looks \x1b[31mangry\x1b[0m\rHappy\x07\nsecond line</think><answer>Furious</answer>"


def test_text_on_a_cell_is_white_on_dark_and_dark_on_light():
    assert luminance((0, 0, 0)) == 0 and luminance((255, 255, 255)) == pytest.approx(1)
    assert ink_on((55, 55, 255)) == WHITE  # the darkest diagonal cell (a row's whole share)
    assert ink_on((20, 20, 20)) == WHITE
    assert ink_on((255, 240, 240)) == INK  # a pale off-diagonal cell
    assert ink_on((255, 255, 255)) == INK


def test_the_numbers_on_a_dark_cell_are_drawn_in_white():
    matrix = np.zeros((8, 8), dtype=np.int64)
    matrix[0, 0], matrix[1, 1], matrix[1, 0] = 12, 3, 1
    pixels = np.asarray(confusion_matrix_picture(matrix, LABELS, "t"))
    dark = np.all(pixels == (55, 55, 255), axis=-1)  # the Neutral row's cell: 100 % of the row
    ys, xs = np.nonzero(dark)
    cell = pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert np.any(np.all(cell > 230, axis=-1)), "no white text on the darkest cell"
    assert not np.any(np.all(cell < 60, axis=-1)), "dark text on the darkest cell"


def test_classes_in_neither_truth_nor_predictions_are_left_out_unless_asked():
    matrix = np.zeros((8, 8), dtype=np.int64)
    matrix[0, 0], matrix[0, 3], matrix[2, 2] = 5, 2, 4  # Fear (3) predicted only; 1, 4-7 in neither
    keep, left_out = shown_classes(matrix, LABELS)
    assert keep == [0, 2, 3] and left_out == ["Anger", "Happiness", "Sadness", "Surprise", "Other"]
    assert shown_classes(matrix, LABELS, all_classes=True) == (list(range(8)), [])
    shown, everything = (confusion_matrix_picture(matrix, LABELS, "t", all_classes=a) for a in (False, True))
    assert shown.height < everything.height - 4 * 64 and shown.width < everything.width


def test_macro_f1_says_how_many_classes_it_averages():
    sample = {"macro_f1": 1 / 3, "macro_f1_classes": 8, "classes_present": 3}
    confusion = np.zeros((8, 9), dtype=np.int64)
    confusion[0, 0], confusion[1, 4], confusion[2, 5], confusion[2, 8] = 3, 1, 1, 2  # 8: did not parse
    assert macro_f1_text(sample, confusion) == "macro F1 0.3333 (mean over 8 classes: 3 in the truth, 2 predicted " \
                                               "only, 3 in neither)"  # fmt: skip
    assert macro_f1_text(sample) == "macro F1 0.3333 (mean over 8 classes: 3 in the truth, 5 not in it)"
    every = {"macro_f1": 0.5, "macro_f1_classes": 8, "classes_present": 8}
    assert macro_f1_text(every, confusion) == "macro F1 0.5000 (mean over 8 classes: all 8 in the truth)"


@pytest.fixture
def scored_run(abaw_expr_data, tmp_path):
    """A finished run over the fixture: right answers but one Surprise (not in the truth) and one completion that
    did not parse, carrying an escape sequence, a carriage return and a bell."""
    from data_builders.read import load_split

    rows = sorted(load_split(abaw_expr_data, "validation", ["expr"]), key=lambda r: r["id"])
    assert "Surprise" not in {r["expression"] for r in rows}
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("This folder holds output written by emoreason.\nkind: eval-run\n")
    settings = {"data": str(abaw_expr_data.resolve()), "split": "validation", "task": "expr", "model": "m",
                "adapter": None, "shard": "1/1", "max_new_tokens": 64, "max_samples": None}  # fmt: skip
    (run / RUN_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    appender = Appender(run / PREDICTIONS)
    true, pred = [], []
    for i, row in enumerate(rows):
        true.append(LABELS.index(row["expression"]))
        if i == 1:
            appender.write({"id": row["id"], "task": "expr", "completion": HOSTILE, "ok": False,
                            "error": "unknown_label", "message": "'Furious\x1b[2J' is not one of ..."})  # fmt: skip
            pred.append(-1)
            continue
        label = "Surprise" if i == 0 else row["expression"]
        appender.write({"id": row["id"], "task": "expr", "ok": True, "label": label, "answer_logprob": -0.3,
                        "cited_aus": [], "think": "x"})  # fmt: skip
        pred.append(LABELS.index(label))
    appender.close()
    return run, rows, f1_score(true, pred, labels=list(range(8)), average="macro", zero_division=0)


def test_eval_report_says_what_it_averages_escapes_model_text_and_leaves_out_unused_classes(scored_run, capsys):
    from mllm.cli import main as emoreason

    run, rows, expected_f1 = scored_run
    present = len({r["expression"] for r in rows})
    assert emoreason(["eval", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert (f"macro F1 {expected_f1:.4f} (mean over 8 classes: {present} in the truth, 1 predicted only, "
            f"{7 - present} in neither)") in out  # fmt: skip
    assert "first answer that did not parse: " in out and "\\x1b[2J" in out
    report = (run / "report.md").read_text()
    for text in (out, report):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\\x1b[31mangry\\x1b[0m\\rHappy\\x07\nsecond line" in report  # escaped, the line break kept
    neither = [name for name in LABELS if name not in {r["expression"] for r in rows} | {"Surprise"}]
    assert f"classes in neither truth nor predictions left out: {', '.join(neither)}" in report
    default = Image.open(run / "confusion_matrix.png").size

    assert emoreason(["eval", "report", str(run), "--all-classes"]) == 0
    assert "classes in neither" not in (run / "report.md").read_text()
    everything = Image.open(run / "confusion_matrix.png").size
    assert everything[1] > default[1] and everything[0] > default[0]  # three more rows and columns


def _eval_subcommands():
    from mllm.cli import build_parser

    parser = build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["eval"]
    return evaluate._subparsers._group_actions[0].choices


def test_eval_run_help_shows_the_split_and_its_default(capsys):
    from mllm.cli import main as emoreason

    with pytest.raises(SystemExit) as exit_:
        emoreason(["eval", "run", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--split SPLIT the dataset split to answer (default: validation)" in help_text
    assert "--max-model-len N vLLM's context length in tokens, prompt and answer together (default: 4096)" in help_text


def test_every_option_of_every_eval_subcommand_says_what_it_does_and_its_default():
    import argparse

    for name, parser in _eval_subcommands().items():
        help_text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            where = f"eval {name} {action.option_strings or action.dest}"
            assert action.help, f"{where}: no help"
            if action.option_strings and action.default not in (None, False):
                assert f"(default: {action.default})" in help_text, f"{where}: default not shown"
