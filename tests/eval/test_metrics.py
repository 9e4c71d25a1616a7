"""The official metrics against independent computations: scikit-learn for F1, recall, accuracy and average
precision, CCC by hand from its definition, on random fixture predictions and on the degenerate cases."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, recall_score

from eval.metrics import accuracy, au_f1, average_precision, bah_scores, ccc, expr_f1, multitask, uar_war, va_ccc


def _ccc_by_hand(x, y) -> float:
    x, y = list(map(float, x)), list(map(float, y))
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2)


@pytest.mark.parametrize("seed", range(5))
def test_expr_f1_is_sklearns_macro_f1_over_the_8_classes_on_valid_frames(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(-1, 8, 5000)  # about one frame in nine invalid
    pred = np.where(rng.random(5000) < 0.4, true, rng.integers(0, 8, 5000)).clip(0, 7)
    value, frames = expr_f1(true, pred)
    valid = true != -1
    expected = f1_score(true[valid], pred[valid], labels=list(range(8)), average="macro", zero_division=0)
    assert value == pytest.approx(expected, abs=1e-12) and frames == valid.sum()


def test_expr_f1_degenerate_cases():
    # A class never predicted and never true still counts (as 0): 7 perfect classes of 8 give 7/8.
    true = np.repeat(np.arange(7), 10)
    assert expr_f1(true, true)[0] == pytest.approx(7 / 8)
    # A constant prediction: only that class scores.
    pred = np.full_like(true, 4)
    expected = f1_score(true, pred, labels=list(range(8)), average="macro", zero_division=0)
    assert expr_f1(true, pred)[0] == pytest.approx(expected)
    # All frames of one video invalid: they are simply not there.
    video_a, video_b = np.full(30, -1), np.array([0, 1, 2, 3])
    value, frames = expr_f1(np.r_[video_a, video_b], np.r_[np.zeros(30, int), video_b])
    assert frames == 4 and value == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="no valid frame"):
        expr_f1(video_a, np.zeros(30, int))
    with pytest.raises(ValueError, match="0..7"):
        expr_f1([0, 1], [0, 8])
    with pytest.raises(ValueError, match="2 true labels but 3"):
        expr_f1([0, 1], [0, 1, 2])


@pytest.mark.parametrize("seed", range(3))
def test_au_f1_is_the_mean_of_sklearns_binary_f1_per_au(seed):
    rng = np.random.default_rng(seed)
    true = (rng.random((3000, 12)) < rng.random(12) * 0.5).astype(int)
    true[rng.random((3000, 12)) < 0.05] = -1
    pred = np.where(rng.random((3000, 12)) < 0.7, true.clip(0, 1), rng.integers(0, 2, (3000, 12)))
    value, _ = au_f1(true, pred)
    expected = np.mean([f1_score(true[true[:, j] != -1, j], pred[true[:, j] != -1, j], zero_division=0)
                        for j in range(12)])  # fmt: skip
    assert value == pytest.approx(expected, abs=1e-12)
    # An AU never active and never predicted scores 0, as scikit-learn's zero_division=0 has it.
    silent = np.zeros((10, 2), int)
    silent[:, 0] = [1, 0] * 5
    assert au_f1(silent, silent)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
def test_va_ccc_by_hand_with_invalid_frames_left_out(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(-1, 1, (800, 2))
    true[rng.random(800) < 0.1] = -5
    pred = np.clip(true * 0.6 + rng.normal(0, 0.3, (800, 2)), -1, 1)
    result = va_ccc(true, pred)
    valid = np.all(true != -5, axis=1)
    v, a = _ccc_by_hand(true[valid, 0], pred[valid, 0]), _ccc_by_hand(true[valid, 1], pred[valid, 1])
    assert result["ccc_valence"] == pytest.approx(v, abs=1e-12)
    assert result["ccc_arousal"] == pytest.approx(a, abs=1e-12)
    assert result["va"] == pytest.approx((v + a) / 2) and result["frames"] == valid.sum()


def test_ccc_degenerate_cases():
    x = np.linspace(-1, 1, 50)
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, -x) == pytest.approx(-1.0)
    assert ccc(x, x + 0.5) < 1.0  # a bias is penalised, unlike Pearson's r
    assert ccc(x, np.zeros(50)) == 0.0  # a constant prediction
    assert ccc(np.zeros(5), np.zeros(5)) == 0.0  # both constant and equal: defined as 0, finite


@pytest.mark.parametrize("seed", range(5))
def test_bah_macro_f1_and_average_precision_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    true = (rng.random(600) < 0.3).astype(int)
    scores = np.round(true * 0.3 + rng.random(600), 2)  # rounded: ties, as log-probability scores have
    pred = (scores > 0.7).astype(int)
    result = bah_scores(true, pred, scores)
    assert result["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)
    assert result["f1_present"] == pytest.approx(f1_score(true, pred), abs=1e-12)
    assert result["ap_present"] == pytest.approx(average_precision_score(true, scores), abs=1e-12)
    assert average_precision(true, scores) == result["ap_present"]


def test_bah_constant_prediction_and_bad_labels():
    true = np.array([0, 1, 1, 0, 1])
    result = bah_scores(true, np.zeros(5, int))
    assert result["f1_present"] == 0.0 and result["macro_f1"] == pytest.approx(f1_score(true, np.zeros(5, int),
                                                                                     average="macro"))  # fmt: skip
    with pytest.raises(ValueError, match="0 or 1"):
        bah_scores([0, 2], [0, 1])
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision([0, 0], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(3))
def test_uar_war_and_accuracy_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    true = rng.choice(7, 900, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05])
    pred = np.where(rng.random(900) < 0.5, true, rng.integers(0, 7, 900))
    result = uar_war(true, pred)
    assert result["uar"] == pytest.approx(recall_score(true, pred, average="macro"), abs=1e-12)
    assert result["war"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    assert accuracy(true, pred) == pytest.approx(accuracy_score(true, pred), abs=1e-12)


def test_multitask_is_the_sum_of_the_three():
    assert multitask(0.4, 0.5, 0.3) == pytest.approx(1.2)
