"""The challenges' metrics, computed exactly as they define them, over frames (or clips, or images).

    from eval.metrics import expr_f1, au_f1, va_ccc, bah_scores
    expr_f1(true, pred)              # ABAW EXPR: macro F1 over the 8 classes, pooled over all valid frames
    au_f1(true, pred)                # ABAW AU: mean over the 12 AUs of binary F1 (frames labelled -1 skipped per AU)
    va_ccc(true_va, pred_va)         # ABAW VA: mean of CCC(valence) and CCC(arousal) (frames labelled -5 skipped)
    bah_scores(true, pred, scores)   # BAH: macro F1 (mean of the two class F1s) and the positive class's AP

Invalid frames are marked as the annotation files mark them (EXPR -1, AU -1, VA -5) and left out; every function
returns how many frames it scored beside the value. Everything here is numpy alone, so `eval score` scores another
team's file with the same code; the tests hold each value to scikit-learn's or a hand computation.

Definitions:
- F1 of a class: 2 TP / (2 TP + FP + FN), and 0 when the class is neither true nor predicted anywhere (as
  scikit-learn's `f1_score(..., labels=all, zero_division=0)`): a class the model never sees still counts.
- CCC: 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), population (co)variances; 0 when the denominator is
  0 (both constant and equal means cannot happen in real annotations; defined so the mean stays finite).
- Average precision: the area under the precision-recall curve as the step sum over thresholds, sum_k (R_k -
  R_{k-1}) P_k (scikit-learn's `average_precision_score`), from scores where higher means more likely positive.
- UAR: mean over the classes present in the truth of their recall; WAR: accuracy (DFEW, MAFW).
"""

from __future__ import annotations

import numpy as np

EXPR_INVALID = -1
AU_INVALID = -1
VA_INVALID = -5.0


def _as_int(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected one value per frame, got shape {array.shape}")
    whole = np.issubdtype(array.dtype, np.integer) or (np.all(np.isfinite(array)) and np.all(array == np.round(array)))
    if array.size and not whole:
        raise ValueError(f"{name}: class indices must be whole numbers")
    return array.astype(np.int64)


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} true labels but {len(b)} predictions")


def class_f1(true: np.ndarray, pred: np.ndarray, classes) -> np.ndarray:
    """F1 of each class in `classes` (one-vs-rest), 0 for a class neither true nor predicted."""
    out = np.zeros(len(classes))
    for i, c in enumerate(classes):
        tp = np.sum((true == c) & (pred == c))
        fp = np.sum((true != c) & (pred == c))
        fn = np.sum((true == c) & (pred != c))
        denominator = 2 * tp + fp + fn
        out[i] = 2 * tp / denominator if denominator else 0.0
    return out


def expr_f1(true, pred, num_classes: int = 8) -> tuple[float, int]:
    """ABAW EXPR: (macro F1 over `num_classes` classes, frames scored). Frames whose true label is -1 are left out;
    a prediction outside 0..num_classes-1 on a valid frame is an error."""
    true, pred = _as_int(true, "true"), _as_int(pred, "pred")
    _same_length(true, pred)
    valid = true != EXPR_INVALID
    true, pred = true[valid], pred[valid]
    if np.any((true < 0) | (true >= num_classes)):
        raise ValueError(f"true labels must be -1 or 0..{num_classes - 1}")
    if np.any((pred < 0) | (pred >= num_classes)):
        raise ValueError(f"predictions on valid frames must be 0..{num_classes - 1}")
    if not len(true):
        raise ValueError("no valid frame to score")
    return float(class_f1(true, pred, range(num_classes)).mean()), int(len(true))


def au_f1(true, pred) -> tuple[float, int]:
    """ABAW AU: (mean over the AUs (columns) of binary F1 of the active class, frames scored). A frame whose label is
    -1 for an AU is left out for that AU (the count is of frames valid for every AU)."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.ndim != 2 or true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} must both be (frames, AUs)")
    scores = []
    for j in range(true.shape[1]):
        valid = true[:, j] != AU_INVALID
        t, p = true[valid, j].astype(np.int64), pred[valid, j].astype(np.int64)
        if np.any((t != 0) & (t != 1)) or np.any((p != 0) & (p != 1)):
            raise ValueError(f"AU column {j}: labels and predictions must be 0 or 1 (or -1 for an invalid label)")
        scores.append(class_f1(t, p, [1])[0])
    return float(np.mean(scores)), int(np.sum(np.all(true != AU_INVALID, axis=1)))


def ccc(x, y) -> float:
    """Concordance correlation coefficient of two equal-length series (population moments)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    _same_length(x, y)
    if not len(x):
        raise ValueError("no value to score")
    mx, my = x.mean(), y.mean()
    covariance = np.mean((x - mx) * (y - my))
    denominator = x.var() + y.var() + (mx - my) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else 0.0


def va_ccc(true, pred) -> dict:
    """ABAW VA: CCC of valence and of arousal over frames whose true valence and arousal are not -5, and their mean.
    `true`, `pred`: (frames, 2) arrays of (valence, arousal)."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    if true.ndim != 2 or true.shape[1] != 2 or true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} must both be (frames, 2)")
    valid = np.all(true != VA_INVALID, axis=1)
    if not np.all(np.isfinite(pred[valid])):
        raise ValueError("predictions must be finite numbers on valid frames")
    v, a = ccc(true[valid, 0], pred[valid, 0]), ccc(true[valid, 1], pred[valid, 1])
    return {"ccc_valence": v, "ccc_arousal": a, "va": (v + a) / 2, "frames": int(valid.sum())}


def average_precision(true, scores) -> float:
    """Average precision of the positive class (1) from `scores` (higher: more likely positive); ties in score
    are one threshold, as in scikit-learn."""
    true, scores = np.asarray(true).astype(np.int64), np.asarray(scores, np.float64)
    _same_length(true, scores)
    positives = int(np.sum(true == 1))
    if positives == 0:
        raise ValueError("average precision needs at least one positive")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], true[order]
    last_of_tie = np.r_[np.diff(s) != 0, True]
    tp = np.cumsum(t == 1)[last_of_tie]
    predicted = (np.arange(len(t)) + 1)[last_of_tie]
    precision, recall = tp / predicted, tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bah_scores(true, pred, scores=None) -> dict:
    """BAH (ambivalence/hesitancy, 0 absent, 1 present): macro F1 (mean of the two classes' F1), each class's F1,
    and the positive class's average precision when `scores` are given."""
    true, pred = _as_int(true, "true"), _as_int(pred, "pred")
    _same_length(true, pred)
    for name, values in (("true", true), ("pred", pred)):
        if np.any((values != 0) & (values != 1)):
            raise ValueError(f"{name}: BAH labels are 0 or 1")
    f1 = class_f1(true, pred, [0, 1])
    out = {"macro_f1": float(f1.mean()), "f1_absent": float(f1[0]), "f1_present": float(f1[1]), "n": len(true)}
    if scores is not None:
        out["ap_present"] = average_precision(true, scores)
    return out


def uar_war(true, pred) -> dict:
    """DFEW/MAFW: unweighted average recall (mean over the classes present in the truth) and weighted average
    recall (accuracy)."""
    true, pred = _as_int(true, "true"), _as_int(pred, "pred")
    _same_length(true, pred)
    if not len(true):
        raise ValueError("no sample to score")
    recalls = [float(np.mean(pred[true == c] == c)) for c in np.unique(true)]
    return {"uar": float(np.mean(recalls)), "war": float(np.mean(true == pred)), "n": len(true)}


def accuracy(true, pred) -> float:
    """RAF-DB / AffectNet: the share of samples whose prediction equals the label."""
    true, pred = _as_int(true, "true"), _as_int(pred, "pred")
    _same_length(true, pred)
    if not len(true):
        raise ValueError("no sample to score")
    return float(np.mean(true == pred))


def multitask(expr: float, au: float, va: float) -> float:
    """ABAW's multi-task score: EXPR macro F1 + AU mean F1 + VA mean CCC."""
    return float(expr + au + va)
