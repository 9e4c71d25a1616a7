"""Metrics per group of samples, wherever samples carry metadata (`meta`: BAH's participants.csv columns, such as
age and sex), with bootstrap confidence intervals for each group and for the largest gap between groups.

For each metadata column: samples are grouped by its value (numbers by decade, "30-39"; empty values left out);
per group, the task's F1 (expressions: macro F1 over the label space; ambivalence/hesitancy: macro F1 of the two
classes; AUs: mean F1) and true-positive rate (expressions: mean recall over the classes present in the group;
A/H: recall of "present"; AUs: mean recall over the AUs); the gap is the largest minus the smallest group value.
Intervals: 95 % percentile bootstrap, resampling each group's samples with replacement (1000 replicates, seed 0;
the gap's interval from the same replicates). An answer that did not parse counts as wrong.
"""

from __future__ import annotations

import json

import numpy as np

from eval.metrics import class_f1
from eval.samples import sample_pairs

REPLICATES = 1000


def group_name(value) -> str | None:
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if not np.isfinite(number):
        return None
    low = int(number // 10 * 10)
    return f"{low}-{low + 9}"


def _scores(pairs: list, task: str, labels: tuple[str, ...]) -> tuple[float, float]:
    true = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    if task == "expr":
        f1 = float(class_f1(true, pred, range(len(labels))).mean())
        tpr = float(np.mean([np.mean(pred[true == c] == c) for c in np.unique(true)]))
    elif task == "ah":
        f1 = float(class_f1(true, pred, [0, 1]).mean())
        tpr = float(np.mean(pred[true == 1] == 1)) if np.any(true == 1) else float("nan")
    else:
        f1 = float(np.mean([class_f1(true[:, j], pred[:, j], [1])[0] for j in range(true.shape[1])]))
        recalls = [np.mean(pred[true[:, j] == 1, j] == 1) for j in range(true.shape[1]) if np.any(true[:, j] == 1)]
        tpr = float(np.mean(recalls)) if recalls else float("nan")
    return f1, tpr


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None


def fairness(rows, predictions: dict, task: str, labels: tuple[str, ...], seed: int = 0) -> dict:
    """{column: {"groups": {name: {n, f1, f1_ci, tpr, tpr_ci}}, "f1_gap", "f1_gap_ci", "tpr_gap", "tpr_gap_ci"}}
    for every metadata column with at least two groups; {} when samples carry no metadata or the task is VA."""
    if task == "va":
        return {}
    pairs = sample_pairs(rows, predictions, task, labels)
    metas = [json.loads(r["meta"]) if isinstance(r["meta"], str) else (r["meta"] or {}) for r in rows]
    columns = sorted({k for meta in metas for k in meta})
    rng = np.random.default_rng(seed)
    out = {}
    for column in columns:
        groups: dict[str, list] = {}
        for pair, meta in zip(pairs, metas, strict=True):
            name = group_name(meta.get(column))
            if pair is not None and name is not None:
                groups.setdefault(name, []).append(pair)
        if len(groups) < 2:
            continue
        result, boot_f1, boot_tpr = {}, [], []
        for name in sorted(groups):
            members = groups[name]
            f1, tpr = _scores(members, task, labels)
            draws = [_scores([members[i] for i in rng.integers(0, len(members), len(members))], task, labels)
                     for _ in range(REPLICATES)]  # fmt: skip
            f1s, tprs = np.array([d[0] for d in draws]), np.array([d[1] for d in draws])
            boot_f1.append(f1s)
            boot_tpr.append(tprs)
            result[name] = {"n": len(members), "f1": f1, "f1_ci": _interval(f1s), "tpr": tpr,
                            "tpr_ci": _interval(tprs)}  # fmt: skip
        f1_values = [g["f1"] for g in result.values()]
        tpr_values = [g["tpr"] for g in result.values() if np.isfinite(g["tpr"])]
        f1_gaps = np.ptp(np.stack(boot_f1), axis=0)
        tpr_stack = np.stack(boot_tpr)
        tpr_gaps = np.nanmax(tpr_stack, axis=0) - np.nanmin(tpr_stack, axis=0) if len(tpr_values) >= 2 else None
        out[column] = {
            "groups": result,
            "f1_gap": float(max(f1_values) - min(f1_values)),
            "f1_gap_ci": _interval(f1_gaps),
            "tpr_gap": float(max(tpr_values) - min(tpr_values)) if len(tpr_values) >= 2 else None,
            "tpr_gap_ci": _interval(tpr_gaps) if tpr_gaps is not None else None,
        }
    return out
