"""Metrics per metadata group with bootstrap intervals: values equal scikit-learn's per group, ages are grouped by
decade, the gap is the largest minus the smallest group, and the intervals bracket the estimates."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from eval.fairness import fairness, group_name
from mllm.labels import label_space

LABELS = label_space("abaw_expr")


def _rows_and_predictions(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, predictions = [], {}
    for i in range(240):
        sex = "F" if i % 2 else "M"
        age = [23, 37, 58][i % 3]
        truth = int(rng.integers(0, 2))
        right = rng.random() < (0.85 if sex == "F" else 0.6)  # the model is worse for one group
        answer = truth if right else 1 - truth
        rows.append({"id": f"s{i}", "expression": "", "ah": truth, "au_frames": [], "aus": [],
                     "meta": json.dumps({"sex": sex, "age": str(age), "site": "lab"})})  # fmt: skip
        predictions[f"s{i}"] = {"ok": True, "ambivalence_hesitancy": "present" if answer else "absent"}
    return rows, predictions


def test_per_group_values_gap_and_intervals():
    rows, predictions = _rows_and_predictions()
    fair = fairness(rows, predictions, "ah", LABELS)
    assert sorted(fair) == ["age", "sex"]  # "site" has one group only
    assert sorted(fair["age"]["groups"]) == ["20-29", "30-39", "50-59"]
    for sex in ("F", "M"):
        members = [r for r in rows if json.loads(r["meta"])["sex"] == sex]
        true = [r["ah"] for r in members]
        pred = [1 if predictions[r["id"]]["ambivalence_hesitancy"] == "present" else 0 for r in members]
        group = fair["sex"]["groups"][sex]
        assert group["n"] == len(members) == 120
        assert group["f1"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)
        assert group["tpr"] == pytest.approx(recall_score(true, pred), abs=1e-12)
        assert group["f1_ci"][0] <= group["f1"] <= group["f1_ci"][1]
    groups = fair["sex"]["groups"]
    assert fair["sex"]["f1_gap"] == pytest.approx(abs(groups["F"]["f1"] - groups["M"]["f1"]))
    low, high = fair["sex"]["f1_gap_ci"]
    assert 0 < low <= high  # the planted difference is resolved by the interval
    assert fairness(rows, predictions, "ah", LABELS) == fair  # seeded: the same intervals every time


def test_unparsed_answers_count_as_wrong_and_no_metadata_means_no_report():
    rows, predictions = _rows_and_predictions()
    for sample in list(predictions)[:20]:
        predictions[sample] = {"ok": False}
    fair = fairness(rows, predictions, "ah", LABELS)
    assert fair["sex"]["groups"]["M"]["n"] == 120  # still counted, as wrong answers
    bare = [{**r, "meta": "{}"} for r in rows]
    assert fairness(bare, predictions, "ah", LABELS) == {}
    assert fairness(rows, predictions, "va", LABELS) == {}


def test_group_names():
    assert group_name("34") == "30-39" and group_name(51.0) == "50-59" and group_name(" F ") == "F"
    assert group_name("") is None and group_name(None) is None and group_name("nan") is None
