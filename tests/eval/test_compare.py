"""`eval compare`: B - A per metric on the same samples, with paired bootstrap intervals that resolve a real
difference and collapse to zero for identical runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import f1_score

from data_builders.read import load_split
from eval.compare import compare
from eval.run import PREDICTIONS, RUN_FILE, Appender
from mllm.labels import label_space

LABELS = label_space("abaw_expr")


def _predictions(rows, right: bool) -> dict:
    out = {}
    for i, row in enumerate(rows):
        label = row["expression"] if right else LABELS[(LABELS.index(row["expression"]) + 1 + i) % 8]
        out[row["id"]] = {"ok": True, "label": label, "answer_logprob": -0.2, "cited_aus": []}
    return out


def test_deltas_equal_the_metrics_difference_and_identical_runs_differ_by_zero(abaw_expr_data):
    rows = list(load_split(abaw_expr_data, "validation", ["expr"]))
    a, b = _predictions(rows, right=False), _predictions(rows, right=True)
    result = compare(rows, a, b, "expr", LABELS)
    true = [LABELS.index(r["expression"]) for r in rows]
    f1 = lambda p: f1_score(true, [LABELS.index(p[r["id"]]["label"]) for r in rows], labels=list(range(8)),  # noqa: E731
                            average="macro", zero_division=0)  # fmt: skip
    assert result["sample macro_f1"]["delta"] == pytest.approx(f1(b) - f1(a), abs=1e-12)
    low, high = result["sample macro_f1"]["delta_ci"]
    assert 0 < low <= result["sample macro_f1"]["delta"] <= high
    assert result["frame expr_macro_f1"]["b"] > result["frame expr_macro_f1"]["a"]
    same = compare(rows, a, a, "expr", LABELS)
    assert all(r["delta"] == 0 and r["delta_ci"] == [0.0, 0.0] for r in same.values())


def _run_folder(folder: Path, data: Path, split: str, predictions: dict, max_samples: int | None = None) -> Path:
    folder.mkdir()
    settings = {"data": str(data.resolve()), "split": split, "task": "expr", "model": "m", "adapter": None,
                "shard": "1/1", "max_new_tokens": 64, "max_samples": max_samples}  # fmt: skip
    (folder / RUN_FILE).write_text(json.dumps(settings))
    appender = Appender(folder / PREDICTIONS)
    for sample, record in predictions.items():
        appender.write({"id": sample, **record})
    appender.close()
    return folder


def test_the_command_prints_the_table_and_refuses_runs_on_other_samples(abaw_expr_data, tmp_path):
    rows = list(load_split(abaw_expr_data, "validation", ["expr"]))
    a = _run_folder(tmp_path / "a", abaw_expr_data, "validation", _predictions(rows, right=False))
    b = _run_folder(tmp_path / "b", abaw_expr_data, "validation", _predictions(rows, right=True))
    cli = str(Path(sys.executable).parent / "emoreason")
    done = subprocess.run([cli, "eval", "compare", str(a), str(b)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| sample macro_f1 |" in done.stdout and "| frame expr_macro_f1 |" in done.stdout
    other = _run_folder(tmp_path / "c", abaw_expr_data, "validation", {}, max_samples=3)
    done = subprocess.run([cli, "eval", "compare", str(a), str(other)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "max_samples=3" in done.stderr and "Traceback" not in done.stderr
