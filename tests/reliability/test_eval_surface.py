"""`emoreason eval ...` on bad input: each case runs the real CLI on a fixture run folder, dataset and challenge
files, and asserts the exit code, one error line naming the file, line and field, no traceback or internal error,
and every file of the user (the workspace and the dataset tree) unchanged. Then: a re-run may replace only its own
earlier output, and a refusal's memory does not grow with the size of the file refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.run import PREDICTIONS, RUN_FILE, Appender
from mllm.labels import label_space
from mllm.outputs import MARKER
from tests.eval.conftest import HEADER, abaw_expr_data  # noqa: F401 (the dataset fixture, built as tests/eval do)
from tests.reliability.conftest import checksums

REPO = Path(__file__).resolve().parents[2]
LABELS = label_space("abaw_expr")
MB = 1024**2


@pytest.fixture(scope="module")
def template(abaw_expr_data, tmp_path_factory):  # noqa: F811
    """A finished run folder (as `eval run` leaves it) over the fixture dataset, its sample file and annotations."""
    from data_builders.read import load_split

    root = tmp_path_factory.mktemp("eval-surface")
    rows = sorted(load_split(abaw_expr_data, "validation", ["expr"]), key=lambda r: r["id"])
    run = root / "run"
    run.mkdir()
    (run / MARKER).write_text("This folder holds output written by emoreason.\nkind: eval-run\n")
    settings = {"data": str(abaw_expr_data.resolve()), "split": "validation", "task": "expr", "model": "m",
                "adapter": None, "shard": "1/1", "max_new_tokens": 64, "max_samples": None}  # fmt: skip
    (run / RUN_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    appender = Appender(run / PREDICTIONS)
    for i, row in enumerate(rows):
        label = row["expression"] if i % 2 == 0 else LABELS[(LABELS.index(row["expression"]) + 1) % 8]
        appender.write({"id": row["id"], "task": "expr", "ok": True, "label": label, "answer_logprob": -0.3,
                        "cited_aus": [], "think": ""})  # fmt: skip
    appender.close()
    annotations = abaw_expr_data.parent / "tree" / "EXPR_Recognition_Challenge" / "Validation_Set"
    return SimpleNamespace(run=run, data=abaw_expr_data, annotations=annotations)


@pytest.fixture
def ws(template, tmp_path):
    """A workspace: a copy of the run, two shards of it, a sample file, a user's CSV, a BAH reference and file, and
    a model folder (never loaded: every case is refused before)."""
    run = Path(shutil.copytree(template.run, tmp_path / "run"))
    lines = (run / PREDICTIONS).read_text().splitlines(keepends=True)
    for part in (1, 2):
        shard = Path(shutil.copytree(run, tmp_path / f"shard{part}"))
        settings = json.loads((shard / RUN_FILE).read_text())
        (shard / RUN_FILE).write_text(json.dumps({**settings, "shard": f"{part}/2"}, indent=1) + "\n")
        (shard / PREDICTIONS).write_text("".join(lines[part - 1 :: 2]))
    (tmp_path / "sample.txt").write_text("image_location," + HEADER + "\n" + "".join(f"vid0/{i:05d}.jpg,\n"
                                                                                   for i in range(1, 41)))  # fmt: skip
    (tmp_path / "user.csv").write_text("a,b,c,d\nthe user's own numbers\n")  # three commas: it passed for ours before
    videos = [f"Videos/{i:05d}/q{i}.mp4" for i in range(6)]
    (tmp_path / "ref.txt").write_text("".join(f"{v},{i % 2},well, maybe\n" for i, v in enumerate(videos)))
    (tmp_path / "bah.txt").write_text("".join(f"{v},0.4000,0.6000,1\n" for v in videos))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"label_space": "abaw_expr"}\n')
    return SimpleNamespace(**{**vars(template), "root": tmp_path, "run": run, "shard1": tmp_path / "shard1",
                              "shard2": tmp_path / "shard2", "sample": tmp_path / "sample.txt",
                              "user_csv": tmp_path / "user.csv", "ref": tmp_path / "ref.txt",
                              "bah": tmp_path / "bah.txt", "model": tmp_path / "model"})  # fmt: skip


def snapshot(ws) -> dict:
    return {"workspace": checksums(ws.root), "dataset": checksums(ws.data.parent)}


def one_line_error(result) -> str:
    """A clean refusal: non-zero exit, exactly one line on stderr, an `error:` (not an internal one)."""
    assert result.code != 0, f"exit 0; stdout={result.out[-500:]!r} stderr={result.err[-500:]!r}"
    text = result.err + result.out
    assert "Traceback" not in text and "internal error" not in text, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.err!r}"
    assert lines[0].startswith("emoreason eval: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Hand edits of the user's or the run's files, and the command lines the cases run.


def set_line(path: Path, number: int, text: str | bytes) -> None:
    lines = path.read_bytes().splitlines()
    lines[number - 1] = text.encode() if isinstance(text, str) else text
    path.write_bytes(b"\n".join(lines) + b"\n")


def replace(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))


def utf16(path: Path, bom: bool = True) -> None:
    path.write_bytes(path.read_text().encode("utf-16" if bom else "utf-16-le"))


def submission(ws) -> Path:
    """A valid ABAW EXPR file for the fixture's annotations (written by `eval submit`, then handed over)."""
    from mllm.cli import main

    out = ws.root / "handed" / "predictions.txt"
    assert main(["eval", "submit", str(ws.run), "--frames-from", str(ws.annotations), "--out", str(out)]) == 0
    (out.parent / ".emoreason-files.json").unlink()  # now just a file someone hands over
    return out


def score_expr(ws, path):
    return ["eval", "score", "--task", "abaw_expr", "--predictions", path, "--annotations", ws.annotations]


def run_args(ws, *extra):
    return ["eval", "run", "--data", ws.data, "--model", ws.model, "--split", "validation", "--task", "expr",
            "--out", ws.root / "new-run", *extra]  # fmt: skip


P = PREDICTIONS
SUBMIT = ["eval", "submit"]


def bah_score(ws, p):
    return ["eval", "score", "--task", "bah", "--predictions", p, "--annotations", ws.ref]


def linked(ws, target: Path, name: str) -> Path:
    (ws.root / name).symlink_to(target)
    return ws.root / name


def edited(path: Path, old: str, new: str, count: int = 1) -> Path:
    replace(path, old, new, count)
    return path


def with_line(path: Path, number: int, text: str | bytes) -> Path:
    set_line(path, number, text)
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def in_utf16(path: Path, bom: bool = True) -> Path:
    utf16(path, bom)
    return path


def resumable_run_linked_to(ws, target: Path) -> Path:
    """The folder `run_args` answers into, as an earlier run of the same settings left it, but its answers file a
    link to `target` (appending would write into the user's file)."""
    from eval.run import run_settings

    out = ws.root / "new-run"
    out.mkdir()
    (out / MARKER).write_text("This folder holds output written by emoreason.\nkind: eval-run\n")
    args = SimpleNamespace(data=str(ws.data), split="validation", task="expr", model=str(ws.model), adapter=None,
                           shard=None, max_new_tokens=512, max_samples=None)  # fmt: skip
    (out / RUN_FILE).write_text(json.dumps(run_settings(args), indent=1) + "\n")
    (out / P).symlink_to(target)
    return out / P


def replaced_by(path: Path, make) -> Path:
    path.unlink()
    make(path)
    return path


# (case, edit(ws) -> the path named in the message (or None), argv(ws, path), the expected "FILE:LINE: field: ..."
# text, FILE standing for that path)
# fmt: off
CASES = [
    # --- the user's files as outputs ---------------------------------------------------------------------------
    ("submit onto a user's CSV", lambda ws: ws.user_csv,
     lambda ws, p: [*SUBMIT, ws.run, "--frames-from", ws.annotations, "--out", p],
     "FILE: --out exists and was not written by emoreason"),
    ("submit onto its own --sample", lambda ws: ws.sample,
     lambda ws, p: [*SUBMIT, ws.run, "--sample", p, "--out", p], "FILE: --out is the input"),
    ("submit through a link to its --sample", lambda ws: linked(ws, ws.sample, "link.txt"),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", p], "FILE: --out is the input"),
    ("submit into the dataset folder", lambda ws: ws.data / "sub.txt",
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", p], "FILE: --out is inside the input folder"),
    ("submit into its annotation folder", lambda ws: ws.annotations / "sub.txt",
     lambda ws, p: [*SUBMIT, ws.run, "--frames-from", ws.annotations, "--out", p],
     "FILE: --out is inside the input folder"),
    ("submit into the run folder", lambda ws: ws.run / "sub.txt",
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", p], "FILE: the challenge file must not be"),
    ("submit onto a folder", lambda ws: ws.model,
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", p], "FILE: --out is a folder"),
    ("run --submission onto a user's CSV", lambda ws: ws.user_csv,
     lambda ws, p: run_args(ws, "--submission", p, "--sample", ws.sample), "FILE: --out exists and was not written"),
    ("run --submission inside the new run folder", lambda ws: ws.root / "new-run" / "sub.txt",
     lambda ws, p: run_args(ws, "--submission", p, "--sample", ws.sample), "FILE: the challenge file must not be"),
    ("a resumed run whose answers link to a user's file", lambda ws: resumable_run_linked_to(ws, ws.user_csv),
     lambda ws, p: run_args(ws), "FILE: a link to another file"),
    ("run into the dataset folder", lambda ws: ws.data,
     lambda ws, p: [*run_args(ws)[:-1], p], "FILE: --out is inside the input folder"),
    ("merge into the dataset folder", lambda ws: ws.data,
     lambda ws, p: ["eval", "merge", ws.shard1, ws.shard2, "--out", p], "FILE: --out is inside the input folder"),
    ("merge into a folder of user files", lambda ws: ws.model,
     lambda ws, p: ["eval", "merge", ws.shard1, ws.shard2, "--out", p], "FILE: --out is a folder of other files"),
    ("merge through a link to a shard", lambda ws: linked(ws, ws.shard1, "link"),
     lambda ws, p: ["eval", "merge", ws.shard1, ws.shard2, "--out", p], "FILE: --out is inside the input folder"),
    ("merge onto a run of other settings", lambda ws: edited(ws.run / RUN_FILE, '"m"', '"other"').parent,
     lambda ws, p: ["eval", "merge", ws.shard1, ws.shard2, "--out", p], "FILE: holds a run with model='other'"),
    ("report into a folder emoreason did not write", lambda ws: replaced_by(ws.run / MARKER, lambda p: None).parent,
     lambda ws, p: ["eval", "report", p], "FILE: the run folder is a folder of other files"),
    # --- hand-edited predictions.jsonl --------------------------------------------------------------------------
    ("a label that is not one", lambda ws: edited(ws.run / P, '"label": "Neutral"', '"label": "Joy"'),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:1: label: "Joy" is not one of Neutral, Anger'),
    ("a label of the wrong type", lambda ws: edited(ws.run / P, '"label": "Neutral"', '"label": 3'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: label: 3 is not one of"),
    ("no label", lambda ws: edited(ws.run / P, '"label": "Neutral", ', ""),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: label: missing"),
    ("no id", lambda ws: with_line(ws.run / P, 2, '{"ok": true, "label": "Fear"}'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: id: missing"),
    ("an id of the wrong type", lambda ws: with_line(ws.run / P, 2, '{"id": 7, "ok": true}'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: id: must be a sample id"),
    ("an id of no sample", lambda ws: edited(ws.run / P, "vid0/00017-00032", "vid9/00017-00032"),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", ws.root / "o.txt"],
     'FILE:2: id: "abaw/expr/validation/vid9/00017-00032" is not a sample of'),
    ("an id twice", lambda ws: with_line(ws.run / P, 3, (ws.run / P).read_text().splitlines()[0]),
     lambda ws, p: ["eval", "report", ws.run], "appears twice (first at line 1)"),
    ("ok that is not a boolean", lambda ws: edited(ws.run / P, '"ok": true', '"ok": "yes"'),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:1: ok: must be true or false, got "yes"'),
    ("no ok", lambda ws: edited(ws.run / P, '"ok": true, ', ""),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: ok: missing"),
    ("a log-probability whose exp overflows", lambda ws: edited(ws.run / P, "-0.3", "1000"),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: answer_logprob: must be a log-probability"),
    ("a log-probability that is not a number", lambda ws: edited(ws.run / P, "-0.3", "NaN"),
     lambda ws, p: ["eval", "compare", ws.run, ws.shard1], "FILE:1: answer_logprob: "),
    ("cited AUs of the wrong type", lambda ws: edited(ws.run / P, '"cited_aus": []', '"cited_aus": 7'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: cited_aus: must be a list"),
    ("another task's answer", lambda ws: edited(ws.run / P, '"task": "expr"', '"task": "au"'),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:1: task: "au" in a run of task'),
    ("torn JSON in the middle", lambda ws: with_line(ws.run / P, 2, '{"id": "abaw/expr/va'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: not JSON"),
    ("a line that is not an object", lambda ws: with_line(ws.run / P, 2, "[1, 2]"),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: expected a JSON object"),
    ("JSON nested too deeply", lambda ws: with_line(ws.run / P, 2, "[" * 100_000 + "]" * 100_000),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: JSON nested too deeply"),
    ("a UTF-16 predictions file", lambda ws: in_utf16(ws.run / P),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: not UTF-8 text: it starts with a UTF-16 byte-order mark"),
    ("NUL bytes in predictions", lambda ws: with_line(ws.run / P, 4, b"\0" * 64),
     lambda ws, p: ["eval", "report", ws.run], "FILE:4: a NUL byte at column 1"),
    ("bytes that are not UTF-8", lambda ws: with_line(ws.run / P, 2, b'{"id": "\xe9"}'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:2: not UTF-8 text"),
    ("an over-long prediction line", lambda ws: with_line(ws.run / P, 5, '{"id": "' + "a" * (5 * MB) + '"}'),
     lambda ws, p: ["eval", "merge", ws.run, "--out", ws.root / "m"], "FILE:5: the line is longer than"),
    ("predictions that are a folder", lambda ws: replaced_by(ws.run / P, Path.mkdir),
     lambda ws, p: ["eval", "report", ws.run], "FILE: is a folder"),
    ("predictions that are a pipe", lambda ws: replaced_by(ws.run / P, os.mkfifo),
     lambda ws, p: ["eval", "report", ws.run], "FILE: is not a regular file"),
    # --- hand-edited run.json -----------------------------------------------------------------------------------
    ("run.json without a task", lambda ws: edited(ws.run / RUN_FILE, ' "task": "expr",\n', ""),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: task: missing"),
    ("run.json with an unknown task", lambda ws: edited(ws.run / RUN_FILE, '"expr"', '"joy"'),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:4: task: must be one of expr, au, va, ah, got "joy"'),
    ("run.json with max_samples -3", lambda ws: edited(ws.run / RUN_FILE, '"max_samples": null', '"max_samples": -3'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:9: max_samples: must be a whole number of at least 1 or null"),
    ("run.json with max_samples 0", lambda ws: edited(ws.run / RUN_FILE, '"max_samples": null', '"max_samples": 0'),
     lambda ws, p: ["eval", "compare", ws.run, ws.shard1], "FILE:9: max_samples: "),
    ("run.json with a shard 3/2", lambda ws: edited(ws.shard1 / RUN_FILE, '"1/2"', '"3/2"'),
     lambda ws, p: ["eval", "merge", ws.shard1, ws.shard2, "--out", ws.root / "m"], 'FILE:7: shard: '),
    ("run.json with a split the dataset lacks", lambda ws: edited(ws.run / RUN_FILE, '"validation"', '"test"'),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:3: split: '),
    ("run.json torn", lambda ws: edited(ws.run / RUN_FILE, '"validation"', '"validation'),
     lambda ws, p: ["eval", "report", ws.run], "FILE:3: not JSON"),
    ("run.json a list", lambda ws: written(ws.run / RUN_FILE, b"[]\n"),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: expected a JSON object"),
    ("run.json in UTF-16", lambda ws: in_utf16(ws.run / RUN_FILE),
     lambda ws, p: ["eval", "report", ws.run], "FILE:1: not UTF-8 text"),
    # --- challenge files handed to `eval score` -----------------------------------------------------------------
    ("a class index that is not one", lambda ws: with_line(submission(ws), 3, "vid0/00002.jpg,9"),
     score_expr, "FILE:3: expression: not a valid EXPR prediction"),
    ("a frame name that is not one", lambda ws: with_line(submission(ws), 4, "vid0/3.png,1"),
     score_expr, "FILE:4: image_location: expected <video>/<frame>.jpg"),
    ("a frame twice", lambda ws: with_line(submission(ws), 4, "vid0/00002.jpg,1"),
     score_expr, "FILE:4: image_location: vid0/00002.jpg appears twice (first at line 3)"),
    ("a line of three fields", lambda ws: with_line(submission(ws), 6, "vid0/00005.jpg,1,2"),
     score_expr, "FILE:6: expected 2 comma-separated fields"),
    ("a wrong header", lambda ws: with_line(submission(ws), 1, "image_location,Calm"),
     score_expr, "FILE:1: header: must be image_location,Neutral"),
    ("a frame without a line", lambda ws: with_line(submission(ws), 4, ""),
     score_expr, "FILE: 1 frames of vid0 have no line (first: vid0/00003.jpg)"),
    ("a UTF-16 submission", lambda ws: in_utf16(submission(ws)), score_expr, "FILE:1: not UTF-8 text"),
    ("a UTF-16 submission without its mark", lambda ws: in_utf16(submission(ws), bom=False), score_expr,
     "FILE:1: a NUL byte at column 2"),
    ("an over-long submission line", lambda ws: with_line(submission(ws), 7, "x" * (5 * MB)),
     score_expr, "FILE:7: the line is longer than"),
    ("an empty submission", lambda ws: written(ws.root / "e.txt", b""), score_expr, "FILE:1: header: must be"),
    ("a BAH prediction of 2", lambda ws: with_line(ws.bah, 3, "Videos/00002/q2.mp4,0.4000,0.6000,2"),
     bah_score, "FILE:3: prediction: must be 0 or 1, got '2'"),
    ("BAH probabilities that do not sum to 1", lambda ws: with_line(ws.bah, 2, "Videos/00001/q1.mp4,0.5,0.6,1"),
     bah_score, "FILE:2: p0,p1: must sum exactly to 1"),
    ("a BAH video out of order", lambda ws: with_line(ws.bah, 4, "Videos/00009/q9.mp4,0.4000,0.6000,1"),
     bah_score, "FILE:4: video_path: 'Videos/00009/q9.mp4' where"),
    ("a BAH line too many", lambda ws: written(ws.bah, ws.bah.read_bytes() * 2),
     bah_score, "FILE:7: video_path: one line more than the 6 videos"),
    ("a UTF-16 BAH file", lambda ws: in_utf16(ws.bah), bah_score, "FILE:1: not UTF-8 text"),
    ("a BAH reference label of 7", lambda ws: with_line(ws.ref, 5, "Videos/00004/q4.mp4,7,hmm"),
     lambda ws, p: ["eval", "score", "--task", "bah", "--predictions", ws.bah, "--annotations", p],
     "FILE:5: label: expected video_path,label"),
    # --- sample files and annotations as inputs -----------------------------------------------------------------
    ("a UTF-16 sample file", lambda ws: in_utf16(ws.sample),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", p, "--out", ws.root / "o.txt"], "FILE:1: not UTF-8 text"),
    ("a sample frame of 22 digits", lambda ws: with_line(ws.sample, 3, "vid0/" + "9" * 22 + ".jpg,"),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", p, "--out", ws.root / "o.txt"],
     "FILE:3: image_location: expected <video>/<frame>.jpg"),
    ("a sample frame in other digits", lambda ws: with_line(ws.sample, 3, "vid0/²².jpg,"),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", p, "--out", ws.root / "o.txt"], "FILE:3: image_location: "),
    ("a sample file of NULs, before any answering", lambda ws: written(ws.sample, b"\0" * 1000),
     lambda ws, p: run_args(ws, "--submission", ws.root / "o.txt", "--sample", p), "FILE:1: a NUL byte at column 1"),
    ("annotations in UTF-16", lambda ws: in_utf16(Path(shutil.copytree(ws.annotations, ws.root / "ann")) / "vid1.txt"),
     lambda ws, p: [*SUBMIT, ws.run, "--frames-from", p.parent, "--out", ws.root / "o.txt"], "FILE:1: not UTF-8"),
    # --- counts -------------------------------------------------------------------------------------------------
    ("--max-samples -3", lambda ws: None, lambda ws, p: run_args(ws, "--max-samples", "-3"),
     "--max-samples: must be at least 1, got -3"),
    ("--max-samples 0", lambda ws: None, lambda ws, p: run_args(ws, "--max-samples", "0"),
     "--max-samples: must be at least 1, got 0"),
    ("--concurrency 0", lambda ws: None, lambda ws, p: run_args(ws, "--concurrency", "0"), "--concurrency: "),
    ("--max-new-tokens 5", lambda ws: None, lambda ws, p: run_args(ws, "--max-new-tokens", "5"),
     "--max-new-tokens 5: "),
    ("--max-new-tokens over --max-model-len", lambda ws: None, lambda ws, p: run_args(ws, "--max-new-tokens", "4096"),
     "--max-new-tokens 4096: leaves no room for the prompt"),
    ("an --adapter that is not there", lambda ws: ws.root / "nope", lambda ws, p: run_args(ws, "--adapter", p),
     "--adapter FILE: no such folder"),
    ("--smooth 4", lambda ws: None, lambda ws, p: ["eval", "report", ws.run, "--smooth", "4"], "--smooth must be "),
    ("--smooth 100001", lambda ws: None, lambda ws, p: ["eval", "report", ws.run, "--smooth", "100001"],
     "--smooth must be "),
    ("--shard ²/4", lambda ws: None, lambda ws, p: run_args(ws, "--shard", "²/4"), "--shard '²/4': expected I/N"),
    # --- runs that score nothing --------------------------------------------------------------------------------
    ("a shard without samples", lambda ws: None, lambda ws, p: run_args(ws, "--shard", "7/10"),
     "--shard 7/10: shard 7 of"),
    ("no prediction", lambda ws: written(ws.run / P, b""),
     lambda ws, p: ["eval", "report", ws.run], "FILE: holds no prediction, for the 6 samples of"),
    ("no predictions file", lambda ws: replaced_by(ws.run / P, lambda p: None),
     lambda ws, p: ["eval", "compare", ws.shard1, ws.run], "FILE: missing, for the 6 samples of"),
    ("no prediction to submit", lambda ws: written(ws.run / P, b"\n"),
     lambda ws, p: [*SUBMIT, ws.run, "--sample", ws.sample, "--out", ws.root / "o.txt"], "FILE: holds no prediction"),
    ("every id wrong", lambda ws: edited(ws.run / P, "abaw/expr", "abaw/au", 6),
     lambda ws, p: ["eval", "report", ws.run], 'FILE:1: id: "abaw/au/validation/vid0/00001-00016" is not a sample'),
]
# fmt: on


@pytest.mark.parametrize("edit, argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_file_line_and_field(ws, cli, edit, argv, expected):
    path = edit(ws)
    path = path if isinstance(path, Path) else None
    before = snapshot(ws)
    result = cli(*argv(ws, path))
    line = one_line_error(result)
    assert expected.replace("FILE", str(path)) in line, line
    assert snapshot(ws) == before, "a refusal changed the user's files"


def test_scoring_nothing_exits_non_zero_and_all_wrong_is_still_a_score(ws, cli):
    """Annotations whose every frame is invalid leave nothing to score: refused. (Runs without a prediction, or whose
    every id is wrong, and shards without a sample are cases of the table.) A run whose every answer failed is
    scored: every sample counts as wrong."""
    invalid = ws.root / "invalid"
    invalid.mkdir()
    (invalid / "vid0.txt").write_text(HEADER + "\n" + "-1\n" * 40)
    out = ws.root / "o.txt"
    assert cli("eval", "submit", ws.run, "--frames-from", invalid, "--out", out).code == 0
    before = snapshot(ws)
    line = one_line_error(cli(*score_expr(SimpleNamespace(annotations=invalid), out)))
    assert f"{invalid}: every annotated frame is marked invalid; nothing to score" in line
    assert snapshot(ws) == before
    ids = [json.loads(line)["id"] for line in (ws.run / PREDICTIONS).read_text().splitlines()]
    (ws.run / PREDICTIONS).write_text("".join(json.dumps({"id": i, "task": "expr", "ok": False, "error":
                                      "unreadable_media", "message": "truncated"}) + "\n" for i in ids))  # fmt: skip
    result = cli("eval", "report", ws.run)
    assert result.code == 0 and "6/6 answered" in result.out, result.err


def test_a_rerun_replaces_only_its_own_unchanged_output(ws, cli):
    out = ws.root / "sub" / "predictions.txt"
    args = ["eval", "submit", ws.run, "--sample", ws.sample, "--out", out]
    assert cli(*args).code == 0
    first = out.read_bytes()
    assert cli(*args).code == 0 and out.read_bytes() == first  # its own earlier output: replaced
    merged = ws.root / "merged"
    assert cli("eval", "merge", ws.shard1, ws.shard2, "--out", merged).code == 0
    assert cli("eval", "merge", ws.shard1, ws.shard2, "--out", merged).code == 0  # the same merge again
    assert cli("eval", "report", merged).code == 0
    with open(out, "a") as f:
        f.write("vid0/00041.jpg,3\n")  # the user changed it since: no longer ours to replace
    before = snapshot(ws)
    line = one_line_error(cli(*args))
    assert f"{out}: --out exists and was not written by emoreason (or was changed since)" in line
    assert snapshot(ws) == before


def test_a_hand_edited_dataset_report_is_named(ws, cli, tmp_path):
    data = Path(shutil.copytree(ws.data, tmp_path / "data-copy"))
    replace(ws.run / RUN_FILE, str(ws.data.resolve()), str(data))
    (data / "build_report.json").write_text("[]\n")
    before = snapshot(ws)
    line = one_line_error(cli("eval", "report", ws.run))
    assert f"{data}/build_report.json:1: expected a JSON object" in line
    assert snapshot(ws) == before
    (data / "build_report.json").write_text('{"dataset": "abaw"}\n')
    (data / "dataset_dict.json").write_text('{"splits": 5}\n')
    before = snapshot(ws)
    line = one_line_error(cli("eval", "report", ws.run))
    assert f"{data}/dataset_dict.json:1: splits: must be a list of split names" in line
    assert snapshot(ws) == before


# ---------------------------------------------------------------------------------------------------------------
# Memory: a refusal holds one bounded line, whatever the size of the file.

MEASURE = r"""
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
print(done.returncode)
print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
"""


def peak_rss(*argv) -> tuple[int, int, str]:
    """(peak resident bytes, exit code, last stderr line) of `python -m mllm.cli ARGV` in a fresh process tree."""
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "mllm.cli", *map(str, argv)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "MALLOC_ARENA_MAX": "1"})  # fmt: skip
    rss, code, line = done.stdout.splitlines()
    return int(rss), int(code), line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB is Linux's")
def test_refusing_a_huge_file_takes_little_memory(ws):
    nuls = ws.root / "nuls.txt"
    with open(nuls, "wb") as f:
        f.truncate(256 * MB)  # 256 MB of NUL bytes (sparse: no disk used)
    giant = ws.root / "giant.txt"
    with open(giant, "wb") as f:
        f.write(b"Videos/00000/q0.mp4,")
        for _ in range(210):
            f.write(b"7" * MB)  # one line of 210 MB
    small = ws.root / "small.txt"
    small.write_text("not a header\n")
    baseline, code, _ = peak_rss(*score_expr(ws, small))
    assert code == 1
    for argv, named in (
        (score_expr(ws, nuls), f"{nuls}:1: "),
        (["eval", "score", "--task", "bah", "--predictions", giant, "--annotations", ws.ref], f"{giant}:1: "),
        (["eval", "score", "--task", "bah", "--predictions", ws.bah, "--annotations", nuls], f"{nuls}:1: "),
    ):
        peak, code, line = peak_rss(*argv)
        assert code == 1 and named in line and "longer than" in line, line
        assert peak - baseline < 40 * MB, f"{argv}: peak {peak / MB:.0f} MB against {baseline / MB:.0f} MB"
