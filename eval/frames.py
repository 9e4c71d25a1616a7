"""Clip answers mapped back to the frames they cover, as ABAW and BAH score: one value per (video, frame).

Each clip's answer votes for every frame in its `frame_indices`; where clips overlap (ABAW's last clip of a video
is aligned to its end) the votes decide: the most voted class (ties: the larger summed answer probability, then
the smaller class index), per AU the majority (ties: active), for valence/arousal the mean. A frame with no vote
(its clip's answer is missing or did not parse) takes the value of the nearest frame of its video that has one
(ties: the earlier) and is counted as `filled`; a video with no answer at all gets the class 0 / no AU / (0, 0) /
absent and is counted in `videos_unanswered`. Then, optionally, smoothing along each video's frames: a majority
window for classes and AUs, a moving average for valence/arousal (`window` frames, centred, cut at the ends).

The truth per frame comes from the dataset rows (`expression_frames`, `au_frames`, `va_frames`, `ah_frames`);
overlapping clips must agree on it, and a disagreement is an error naming both samples.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from mllm.labels import ABAW_AUS


@dataclass
class Frames:
    """Per frame, sorted by (video, frame): the truth and the prediction in the metric's form."""

    videos: list[str]
    frames: np.ndarray  # (F,) annotation frame numbers
    truth: np.ndarray  # expr/ah (F,) int; au (F, 12) int; va (F, 2) float
    pred: np.ndarray
    score: np.ndarray  # (F,) probability of the predicted answer (ah: of "present"), for ranking
    counts: dict = field(default_factory=dict)


def _vote_of(prediction: dict | None, task: str, labels: tuple[str, ...]):
    """(value, probability) a parsed prediction gives each frame of its clip, or None."""
    if prediction is None or not prediction.get("ok"):
        return None
    logprob = prediction.get("answer_logprob")
    probability = math.exp(logprob) if logprob is not None else 1.0
    if task == "expr":
        return labels.index(prediction["label"]), probability
    if task == "au":
        active = set(prediction["aus"])
        return np.array([1 if au in active else 0 for au in ABAW_AUS]), probability
    if task == "va":
        return np.array([prediction["valence"], prediction["arousal"]], dtype=np.float64), probability
    present = prediction["ambivalence_hesitancy"] == "present"
    return (1 if present else 0), (probability if present else 1.0 - probability)


TRUTH_COLUMNS = {"expr": "expression_frames", "au": "au_frames", "va": "va_frames", "ah": "ah_frames"}


def _per_row_votes(rows, predictions: dict, task: str, labels: tuple[str, ...]):
    """(has a vote, value, probability) per row, as arrays."""
    n = len(rows)
    has = np.zeros(n, bool)
    probability = np.zeros(n, np.float64)
    width = {"au": len(ABAW_AUS), "va": 2}.get(task)
    value = np.zeros((n, width) if width else n, np.float64 if task == "va" else np.int64)
    for r, row in enumerate(rows):
        vote = _vote_of(predictions.get(row["id"]), task, labels)
        if vote is not None:
            has[r], value[r], probability[r] = True, vote[0], vote[1]
    return has, value, probability


def _group_sums(group: np.ndarray, weights: np.ndarray, groups: int) -> np.ndarray:
    """Per group, the weights added in input order (as a Python loop would), one column at a time."""
    if weights.ndim == 1:
        return np.bincount(group, weights=weights, minlength=groups)
    return np.stack([np.bincount(group, weights=weights[:, c], minlength=groups) for c in range(weights.shape[1])], 1)


def map_to_frames(rows, predictions: dict[str, dict], task: str, labels: tuple[str, ...] = (), window: int = 1):
    """`rows`: the dataset rows (with `id`, `subject`, `frame_indices` and the task's per-frame truth);
    `predictions`: by id. Returns `Frames` over every annotated frame the rows cover.

    Computed on arrays (one entry per (clip, frame), sorted by video and frame), never per-frame Python objects:
    ABAW's 2.7 million frames take a few seconds and a few hundred MB (bench/eval.py)."""
    rows = rows if isinstance(rows, list) else list(rows)
    column = TRUTH_COLUMNS[task]
    lengths = np.fromiter((len(r["frame_indices"]) for r in rows), np.int64, len(rows))
    for row, n in zip(rows, lengths, strict=True):
        if len(row[column]) != n:
            raise ValueError(f"sample {row['id']!r}: {n} frames but {len(row[column])} labels")
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # entry e belongs to row searchsorted(offsets, e) - 1
    names, codes = np.unique(np.array([r["subject"] for r in rows], dtype=object), return_inverse=True)
    frame = np.fromiter(itertools.chain.from_iterable(r["frame_indices"] for r in rows), np.int64, int(offsets[-1]))
    dtype = np.float64 if task == "va" else np.int64
    truth_flat = itertools.chain.from_iterable(r[column] for r in rows)
    truth = np.array(list(truth_flat), dtype) if task in ("au", "va") else np.fromiter(truth_flat, dtype, len(frame))
    if task in ("au", "va"):
        truth = truth.reshape(len(frame), -1)
    # One int64 key (video, frame), sorted stably: a frame's entries keep the rows' order, and rows mostly come in
    # order already. Intermediates are dropped as soon as they are used: memory stays a few arrays of the entries.
    low = int(frame.min()) if len(frame) else 0
    span = int(frame.max()) - low + 1 if len(frame) else 1
    key = np.repeat(codes.astype(np.int64), lengths)
    key *= span
    key += frame - low
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.ones(len(order), bool)
    first[1:] = key[1:] != key[:-1]
    group = np.cumsum(first, dtype=np.int32) - 1  # per sorted entry
    groups = int(first.sum())
    g_video = (key[first] // span).astype(np.int32)
    g_frame = frame[order[first]]
    del key, frame
    head = order[first]  # the first entry of each (video, frame): its truth is the frame's
    truth_of_group = truth[head]
    differs = truth[order] != truth_of_group[group]
    differs = differs.any(axis=1) if differs.ndim > 1 else differs
    if differs.any():
        bad = int(order[differs].min())  # the first disagreement in the rows' order
        g = int(group[np.flatnonzero(order == bad)[0]])
        row_of = lambda e: rows[int(np.searchsorted(offsets, e, side="right")) - 1]  # noqa: E731
        raise ValueError(f"samples {row_of(head[g])['id']!r} and {row_of(bad)['id']!r} disagree on the label of "
                         f"frame {g_frame[g]} of {names[g_video[g]]}")  # fmt: skip
    del differs, truth, head
    has_row, value_row, prob_row = _per_row_votes(rows, predictions, task, labels)
    row_sorted = np.repeat(np.arange(len(rows), dtype=np.int32), lengths)[order]
    del order
    voted = has_row[row_sorted]
    g_votes, rows_votes = group[voted], row_sorted[voted]
    del row_sorted, voted, group
    n_votes = np.bincount(g_votes, minlength=groups)
    has = n_votes > 0
    if task in ("expr", "ah"):
        # (frame, class) pairs with their vote counts and summed probabilities (added in the rows' order); per
        # frame the pair with the most votes, then the larger sum, then the smaller class. Memory: one entry per
        # vote, never frames x classes.
        k = len(labels) if task == "expr" else 2
        pred = np.zeros(groups, np.int64)
        score = np.zeros(groups, np.float64)
        single = n_votes[g_votes] == 1  # most frames: one clip's vote decides, with its own probability
        pred[g_votes[single]] = value_row[rows_votes[single]]
        score[g_votes[single]] = prob_row[rows_votes[single]]
        g_many, r_many = g_votes[~single], rows_votes[~single]
        pairs, inverse, tally = np.unique(g_many * k + value_row[r_many], return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=prob_row[r_many], minlength=len(pairs))
        pair_group, pair_class = pairs // k, pairs % k
        best = np.lexsort((pair_class, -sums, -tally, pair_group))
        firsts = np.ones(len(best), bool)
        firsts[1:] = pair_group[best][1:] != pair_group[best][:-1]
        winner = best[firsts]
        pred[pair_group[winner]] = pair_class[winner]
        score[pair_group[winner]] = sums[winner] / tally[winner]  # the mean probability of the winning votes
        if task == "ah":  # the score ranks "present": the mean probability given to it over the votes
            values = value_row[rows_votes]
            present = np.where(values == 1, prob_row[rows_votes], 1.0 - prob_row[rows_votes])
            with np.errstate(invalid="ignore", divide="ignore"):
                score = np.bincount(g_votes, weights=present, minlength=groups) / n_votes
        del single, g_many, r_many, pairs, inverse, tally, sums, pair_group, pair_class, best, firsts, winner
    else:
        probability = _group_sums(g_votes, prob_row[rows_votes], groups)
        totals = _group_sums(g_votes, value_row[rows_votes].astype(np.float64), groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            majority = (2 * totals >= n_votes[:, None]).astype(np.int64)  # per AU (ties: active)
            pred = majority if task == "au" else totals / n_votes[:, None]
            score = probability / n_votes
    del g_votes, rows_votes
    # Frames without a vote: the nearest voted frame of the same video (ties: the earlier); else the default.
    missing = ~has
    index = np.arange(groups, dtype=np.int32)
    b = np.maximum.accumulate(np.where(has, index, -1))  # the voted frame before (-1: none)
    a = np.minimum.accumulate(np.where(has, index, groups)[::-1])[::-1]  # and after (groups: none)
    del index
    ok_before = b >= 0
    np.clip(b, 0, None, out=b)
    ok_before &= g_video[b] == g_video
    ok_after = a < groups
    np.clip(a, None, groups - 1, out=a)
    ok_after &= g_video[a] == g_video
    take_after = ok_after & (~ok_before | ((g_frame[a] - g_frame) < (g_frame - g_frame[b])))
    found = ok_before | ok_after
    fill = np.flatnonzero(missing & found)
    source = np.where(take_after[fill], a[fill], b[fill])
    del a, b, ok_before, ok_after, take_after
    pred[fill], score[fill] = pred[source], score[source]
    none = missing & ~found  # a video with no answer at all
    pred[none], score[none] = _default(task)[0], 0.0
    counts = {"frames": groups, "filled": int(missing.sum()), "videos": len(names),
              "videos_unanswered": int(len(names) - len(np.unique(g_video[has])))}  # fmt: skip
    if window > 1:
        pred = _smooth(pred, g_video, task, window)
    return Frames(names[g_video].tolist(), g_frame, truth_of_group, pred.astype(dtype, copy=False),
                  score.astype(np.float64, copy=False), counts)  # fmt: skip


def _default(task: str):
    return {"expr": 0, "ah": 0, "au": np.zeros(len(ABAW_AUS), np.int64), "va": np.zeros(2)}[task], 0.0


def _smooth(values: np.ndarray, video: np.ndarray, task: str, window: int) -> np.ndarray:
    """Centred smoothing within each video (`video`: its code per frame, frames sorted by video)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the smoothing window must be an odd number of frames, got {window}")
    half, n = window // 2, len(values)
    index = np.arange(n)
    if task in ("expr", "ah"):
        k = int(values.max()) + 1 if n else 1
        acc = np.zeros((n, k), np.int32)
    else:
        acc = np.zeros(values.shape, np.float64 if task == "va" else np.int64)
    size = np.zeros(n, np.int64)
    for offset in range(-half, half + 1):  # in the window's order: sums add as the old per-frame loop did
        source = index + offset
        inside = (source >= 0) & (source < n)
        inside[inside] &= video[source[inside]] == video[inside]
        size += inside
        if task in ("expr", "ah"):
            acc[index[inside], values[source[inside]]] += 1
        else:
            acc[inside] += values[source[inside]]
    if task in ("expr", "ah"):
        return np.argmax(acc, axis=1).astype(np.int64)  # ties: the smaller class
    if task == "au":
        return (2 * acc >= size[:, None]).astype(np.int64)
    return acc / size[:, None]


def smooth(values: list, task: str, window: int) -> list:
    """Centred smoothing over one video's frames: majority (ties: the smaller class) for classes, per-AU majority,
    moving average for valence/arousal."""
    array = np.asarray(values)
    out = _smooth(array, np.zeros(len(array), np.int64), task, window)
    return [int(v) for v in out] if task in ("expr", "ah") else list(out)
