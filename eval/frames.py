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


def _truth_of(row: dict, task: str):
    if task == "expr":
        return row["expression_frames"]
    if task == "au":
        return row["au_frames"]
    if task == "va":
        return row["va_frames"]
    return row["ah_frames"]


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


def _decide(votes: list, task: str):
    if task in ("expr", "ah"):
        tally: dict[int, list[float]] = {}
        for value, probability in votes:
            tally.setdefault(int(value), []).append(probability)
        best = max(tally.items(), key=lambda kv: (len(kv[1]), sum(kv[1]), -kv[0]))
        value = best[0]
        probability = float(np.mean([p for v, p in votes if int(v) == value]))
        if task == "ah":  # the score ranks "present": the mean probability given to present over the votes
            probability = float(np.mean([p if int(v) == 1 else 1.0 - p for v, p in votes]))
        return value, probability
    stacked = np.stack([v for v, _ in votes])
    probability = float(np.mean([p for _, p in votes]))
    if task == "au":
        return (stacked.mean(axis=0) >= 0.5).astype(np.int64), probability
    return stacked.mean(axis=0), probability


def _default(task: str):
    return {"expr": 0, "ah": 0, "au": np.zeros(len(ABAW_AUS), np.int64), "va": np.zeros(2)}[task], 0.0


def map_to_frames(rows, predictions: dict[str, dict], task: str, labels: tuple[str, ...] = (), window: int = 1):
    """`rows`: the dataset rows (with `id`, `subject`, `frame_indices` and the task's per-frame truth);
    `predictions`: by id. Returns `Frames` over every annotated frame the rows cover."""
    truth: dict[tuple[str, int], tuple[object, str]] = {}
    votes: dict[tuple[str, int], list] = {}
    for row in rows:
        values = _truth_of(row, task)
        if len(values) != len(row["frame_indices"]):
            raise ValueError(f"sample {row['id']!r}: {len(row['frame_indices'])} frames but {len(values)} labels")
        vote = _vote_of(predictions.get(row["id"]), task, labels)
        for frame, value in zip(row["frame_indices"], values, strict=True):
            key = (row["subject"], int(frame))
            if key in truth and not np.array_equal(np.asarray(truth[key][0]), np.asarray(value)):
                raise ValueError(
                    f"samples {truth[key][1]!r} and {row['id']!r} disagree on the label of frame {frame} of {key[0]}"
                )
            truth.setdefault(key, (value, row["id"]))
            votes.setdefault(key, [])
            if vote is not None:
                votes[key].append(vote)
    keys = sorted(truth)
    counts = {"frames": len(keys), "filled": 0, "videos": 0, "videos_unanswered": 0}
    out_videos, out_frames, out_truth, out_pred, out_score = [], [], [], [], []
    for video, group in itertools.groupby(keys, key=lambda k: k[0]):
        video_keys = list(group)
        decided = [_decide(votes[k], task) if votes[k] else None for k in video_keys]
        have = np.array([i for i, d in enumerate(decided) if d is not None], dtype=np.int64)
        counts["videos"] += 1
        if not len(have):
            counts["videos_unanswered"] += 1
        numbers = np.array([k[1] for k in video_keys], dtype=np.int64)
        for i, d in enumerate(decided):
            if d is not None:
                continue
            counts["filled"] += 1
            if not len(have):
                decided[i] = _default(task)
                continue
            at = int(np.searchsorted(numbers[have], numbers[i]))  # the voted frames either side; the earlier wins ties
            left, right = have[max(at - 1, 0)], have[min(at, len(have) - 1)]
            nearer_right = abs(numbers[right] - numbers[i]) < abs(numbers[i] - numbers[left])
            decided[i] = decided[right if nearer_right else left]
        preds = [d[0] for d in decided]
        if window > 1:
            preds = smooth(preds, task, window)
        for k, (p, (_, s)) in zip(video_keys, zip(preds, decided, strict=True), strict=True):
            out_videos.append(video)
            out_frames.append(k[1])
            out_truth.append(truth[k][0])
            out_pred.append(p)
            out_score.append(s)
    dtype = np.float64 if task == "va" else np.int64
    return Frames(out_videos, np.asarray(out_frames, np.int64), np.asarray(out_truth, dtype),
                  np.asarray(out_pred, dtype), np.asarray(out_score, np.float64), counts)  # fmt: skip


def smooth(values: list, task: str, window: int) -> list:
    """Centred smoothing over one video's frames: majority (ties: the earlier-voted value, i.e. the smaller
    class) for classes, per-AU majority, moving average for valence/arousal."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the smoothing window must be an odd number of frames, got {window}")
    half = window // 2
    array = np.asarray(values)
    out = []
    for i in range(len(array)):
        part = array[max(0, i - half) : i + half + 1]
        if task in ("expr", "ah"):
            classes, counts = np.unique(part, return_counts=True)
            out.append(int(classes[np.argmax(counts)]))
        elif task == "au":
            out.append((part.mean(axis=0) >= 0.5).astype(np.int64))
        else:
            out.append(part.mean(axis=0))
    return out
