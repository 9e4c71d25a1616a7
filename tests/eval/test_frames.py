"""Clip answers mapped to frames: overlapping clips vote, unanswered frames take the nearest answer (counted), the
mapping covers exactly the annotated frames, smoothing works along each video, and clips that disagree on a
frame's truth are refused."""

import numpy as np
import pytest

from eval.frames import map_to_frames, smooth
from mllm.labels import label_space

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
