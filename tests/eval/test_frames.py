"""Clip answers mapped to frames: overlapping clips vote, unanswered frames take the nearest answer (counted), the
mapping covers exactly the annotated frames, smoothing works along each video, and clips that disagree on a
frame's truth are refused."""

import itertools

import numpy as np
import pytest

from eval.frames import TRUTH_COLUMNS, Frames, _vote_of, map_to_frames, smooth
from mllm.labels import ABAW_AUS, label_space

LABELS = label_space("abaw_expr")


def _row(sample, video, frames, codes):
    return {"id": sample, "subject": video, "frame_indices": list(frames), "expression_frames": list(codes)}


def _answer(label, logprob=-0.1):
    return {"ok": True, "label": label, "answer_logprob": logprob}


def test_overlapping_clips_vote_and_the_mapping_covers_exactly_the_annotated_frames():
    rows = [
        _row("a1", "vidA", range(1, 5), [0, 0, -1, 1]),
        _row("a2", "vidA", range(3, 7), [-1, 1, 1, 1]),  # frames 3-4 covered twice
        _row("b1", "vidB", [10, 11], [4, 4]),
    ]
    predictions = {"a1": _answer("Neutral", -2.0), "a2": _answer("Anger", -0.1), "b1": _answer("Happiness")}
    frames = map_to_frames(rows, predictions, "expr", LABELS)
    assert frames.videos == ["vidA"] * 6 + ["vidB"] * 2
    assert frames.frames.tolist() == [1, 2, 3, 4, 5, 6, 10, 11]
    assert frames.truth.tolist() == [0, 0, -1, 1, 1, 1, 4, 4]
    # Frames 3 and 4: one vote each way; the more probable answer (Anger, p=0.90 > Neutral, p=0.14) wins.
    assert frames.pred.tolist() == [0, 0, 1, 1, 1, 1, 4, 4]
    assert frames.counts == {"frames": 8, "filled": 0, "videos": 2, "videos_unanswered": 0}


def test_frames_without_an_answer_take_the_nearest_answered_frame_and_are_counted():
    rows = [_row("c1", "vid", range(1, 5), [0] * 4), _row("c2", "vid", range(5, 9), [2] * 4),
            _row("c3", "vid", range(9, 11), [3] * 2), _row("d1", "other", [1, 2], [5, 5])]  # fmt: skip
    predictions = {"c1": _answer("Neutral"), "c2": {"ok": False}, "c3": _answer("Fear")}  # c2 did not parse
    frames = map_to_frames(rows, predictions, "expr", LABELS)
    # Frames 5-8: 5 and 6 are nearer frame 4 (Neutral), 7 and 8 nearer frame 9 (Fear).
    videos = np.array(frames.videos)
    assert frames.pred[videos == "vid"].tolist() == [0, 0, 0, 0, 0, 0, 3, 3, 3, 3]
    assert frames.counts["filled"] == 4 + 2 and frames.counts["videos_unanswered"] == 1
    assert frames.pred[videos == "other"].tolist() == [0, 0]  # a video with no answer at all: class 0


def test_a_tie_in_distance_goes_to_the_earlier_frame():
    rows = [_row("x", "v", [1], [0]), _row("y", "v", [2], [0]), _row("z", "v", [3], [0])]
    frames = map_to_frames(rows, {"x": _answer("Anger"), "z": _answer("Fear")}, "expr", LABELS)
    assert frames.pred.tolist() == [1, 1, 3]


def test_clips_that_disagree_on_a_frames_truth_are_refused():
    rows = [_row("p", "v", [1, 2], [0, 0]), _row("q", "v", [2, 3], [4, 4])]
    with pytest.raises(ValueError, match="'p' and 'q' disagree on the label of frame 2 of v"):
        map_to_frames(rows, {}, "expr", LABELS)


def test_au_and_va_votes():
    au_rows = [{"id": "u1", "subject": "v", "frame_indices": [1, 2], "au_frames": [[1] + [0] * 11] * 2},
               {"id": "u2", "subject": "v", "frame_indices": [2, 3], "au_frames": [[1] + [0] * 11] * 2}]  # fmt: skip
    preds = {"u1": {"ok": True, "aus": ["AU1", "AU12"]}, "u2": {"ok": True, "aus": ["AU12"]}}
    frames = map_to_frames(au_rows, preds, "au")
    assert frames.pred[:, 0].tolist() == [1, 1, 0]  # frame 2: AU1 one vote of two, a tie: active
    assert frames.pred[:, 6].tolist() == [1, 1, 1]
    va_rows = [{"id": "w1", "subject": "v", "frame_indices": [1, 2], "va_frames": [[0.1, 0.2]] * 2},
               {"id": "w2", "subject": "v", "frame_indices": [2], "va_frames": [[0.1, 0.2]]}]  # fmt: skip
    preds = {"w1": {"ok": True, "valence": 0.5, "arousal": -0.5}, "w2": {"ok": True, "valence": -0.5, "arousal": 0.5}}
    frames = map_to_frames(va_rows, preds, "va")
    assert np.allclose(frames.pred, [[0.5, -0.5], [0.0, 0.0]])


def test_smoothing_along_a_video():
    assert smooth([0, 0, 3, 0, 0, 5, 5, 5], "expr", 3) == [0, 0, 0, 0, 0, 5, 5, 5]
    assert np.allclose(smooth([np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([0.5, 0.5])], "va", 3),
                       [[0.5, 0.5], [0.5, 0.5], [0.75, 0.25]])  # fmt: skip
    with pytest.raises(ValueError, match="odd"):
        smooth([0, 1], "expr", 2)
    rows = [_row("s", "v", range(1, 6), [0] * 5)]
    frames = map_to_frames(rows, {"s": _answer("Anger")}, "expr", LABELS, window=3)
    assert frames.pred.tolist() == [1] * 5


# The per-frame Python mapping this module replaced (kept here as the oracle of the property test): dicts of votes
# per (video, frame), decided frame by frame.


def _reference_decide(votes: list, task: str):
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


def _reference_map_to_frames(
    rows, predictions: dict[str, dict], task: str, labels: tuple[str, ...] = (), window: int = 1
):
    """`rows`: the dataset rows (with `id`, `subject`, `frame_indices` and the task's per-frame truth);
    `predictions`: by id. Returns `Frames` over every annotated frame the rows cover."""
    truth: dict[tuple[str, int], tuple[object, str]] = {}
    votes: dict[tuple[str, int], list] = {}
    for row in rows:
        values = row[TRUTH_COLUMNS[task]]
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
        decided = [_reference_decide(votes[k], task) if votes[k] else None for k in video_keys]
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
            preds = _reference_smooth(preds, task, window)
        for k, (p, (_, s)) in zip(video_keys, zip(preds, decided, strict=True), strict=True):
            out_videos.append(video)
            out_frames.append(k[1])
            out_truth.append(truth[k][0])
            out_pred.append(p)
            out_score.append(s)
    dtype = np.float64 if task == "va" else np.int64
    return Frames(out_videos, np.asarray(out_frames, np.int64), np.asarray(out_truth, dtype),
                  np.asarray(out_pred, dtype), np.asarray(out_score, np.float64), counts)  # fmt: skip


def _reference_smooth(values: list, task: str, window: int) -> list:
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


def _random_case(rng, task: str):
    """Random videos cut into clips that overlap, skip frames and share them; answers missing, unparsed, tied."""
    rows, predictions = [], {}
    for v in range(int(rng.integers(1, 6))):
        n = int(rng.integers(3, 60))
        numbers = np.sort(rng.choice(np.arange(1, 3 * n), size=n, replace=False))  # gaps in the numbering
        if task == "expr":
            truth = rng.integers(-1, len(LABELS), n)
        elif task == "ah":
            truth = rng.integers(0, 2, n)
        elif task == "au":
            truth = rng.integers(-1, 2, (n, len(ABAW_AUS)))
        else:
            truth = np.round(rng.uniform(-1, 1, (n, 2)), 2)
        for c in range(int(rng.integers(1, 8))):
            start = int(rng.integers(0, n))
            stop = min(n, start + int(rng.integers(1, 12)))
            sample = f"v{v}/c{c}"
            rows.append({"id": sample, "subject": f"vid{v}", "frame_indices": numbers[start:stop].tolist(),
                         TRUTH_COLUMNS[task]: truth[start:stop].tolist()})  # fmt: skip
            kind = rng.random()
            if kind < 0.15:
                continue  # no answer
            if kind < 0.25:
                predictions[sample] = {"ok": False}
                continue
            logprob = float(np.log(rng.choice([0.25, 0.5, 1.0]))) if rng.random() < 0.5 else float(-rng.random())
            answer = {"ok": True, "answer_logprob": logprob if rng.random() < 0.9 else None}
            if task == "expr":
                answer["label"] = LABELS[int(rng.integers(0, 3))]  # few classes: ties happen
            elif task == "ah":
                answer["ambivalence_hesitancy"] = "present" if rng.random() < 0.5 else "absent"
            elif task == "au":
                answer["aus"] = [au for au in ABAW_AUS if rng.random() < 0.4]
            else:
                answer["valence"], answer["arousal"] = (float(x) for x in np.round(rng.uniform(-1, 1, 2), 3))
            predictions[sample] = answer
    return rows, predictions


@pytest.mark.parametrize("task", ["expr", "au", "va", "ah"])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_the_array_mapping_equals_the_per_frame_one_on_random_inputs(task, window):
    rng = np.random.default_rng(hash((task, window)) % 2**32)
    compared = 0
    for _ in range(60):
        rows, predictions = _random_case(rng, task)
        try:
            expected = _reference_map_to_frames(rows, predictions, task, LABELS, window)
        except ValueError as exc:  # clips that disagree on a frame's truth: the same refusal, word for word
            with pytest.raises(ValueError) as raised:
                map_to_frames(rows, predictions, task, LABELS, window)
            assert str(raised.value) == str(exc)
            continue
        got = map_to_frames(rows, predictions, task, LABELS, window)
        assert got.videos == expected.videos and got.counts == expected.counts
        assert np.array_equal(got.frames, expected.frames) and np.array_equal(got.truth, expected.truth)
        assert got.pred.dtype == expected.pred.dtype and np.array_equal(got.pred, expected.pred)
        assert np.allclose(got.score, expected.score, rtol=1e-12, atol=0)  # means of 8+ votes: numpy sums pairwise
        compared += 1
    assert compared >= 20
