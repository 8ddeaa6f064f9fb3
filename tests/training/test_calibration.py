from __future__ import annotations

import numpy as np

from labeler.classifier import calibrate
from training.calibration import (
    choose_review_threshold,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    fit_temperature,
    most_confused_pairs,
    per_class_accuracy,
    top_k_accuracy,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_top_k_and_per_class() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1])
    assert top_k_accuracy(probs, labels, 1) == 1 / 3
    assert top_k_accuracy(probs, labels, 2) == 1.0
    assert top_k_accuracy(probs, labels, 3) == 1.0
    acc = per_class_accuracy(probs, labels, 3)
    assert acc[0] == 1.0 and acc[1] == 0.0 and np.isnan(acc[2])
    assert evaluate(probs, labels, ("a", "b", "c"))["per_class_accuracy"]["c"] is None


def test_confusion_and_most_confused_pairs() -> None:
    cm = confusion_matrix(np.array([1, 1, 1, 0, 2]), np.array([0, 0, 1, 0, 1]), 3)
    assert cm.tolist() == [[1, 2, 0], [0, 1, 1], [0, 0, 0]]
    assert most_confused_pairs(cm, 5) == [(0, 1, 2), (1, 2, 1)]


def test_ece_is_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < conf  # right exactly as often as claimed
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    over = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)
    labels = (rng.uniform(size=n) > 0.6).astype(int)  # 60 % correct, 99 % claimed
    assert abs(expected_calibration_error(over, labels) - 0.39) < 0.02


def test_fit_temperature_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (6000, 5))
    true_t = 2.5
    # Labels drawn from softmax(logits / T): the model's softmax(logits) is overconfident.
    p_true = _softmax(logits / true_t)
    labels = np.array([rng.choice(5, p=p) for p in p_true])
    t = fit_temperature(_softmax(logits), labels)
    assert abs(t - true_t) < 0.2
    calibrated = calibrate(_softmax(logits), t)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(
        _softmax(logits), labels
    )


def test_review_threshold_is_the_lowest_meeting_the_target() -> None:
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35])
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1)  # class 0 always wins
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])  # the 7 most confident are right
    r = choose_review_threshold(probs, labels, 0.95, min_auto_rows=1)
    assert r.threshold == 0.5
    assert abs(r.review_share - 0.3) < 1e-12
    assert r.auto_accuracy == 1.0
    # A lower target lets one wrong row through: 8 rows, 7 right = 0.875.
    r = choose_review_threshold(probs, labels, 0.85, min_auto_rows=1)
    assert r.threshold == 0.45 and abs(r.review_share - 0.2) < 1e-12


def test_review_threshold_sends_everything_to_review_when_unreachable() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    r = choose_review_threshold(probs, np.array([1, 1]), 0.95, min_auto_rows=1)
    assert r.threshold == 1.0 and r.review_share == 1.0


def test_review_threshold_never_splits_tied_confidences() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    # The two 0.9 rows are one right, one wrong: cannot keep just the right one.
    r = choose_review_threshold(probs, np.array([0, 1, 0]), 0.95, min_auto_rows=1)
    assert r.threshold == 1.0


def test_review_threshold_needs_enough_rows_above_it() -> None:
    # Only the single most confident of 100 rows is right: "100 % correct" on one row.
    conf = np.linspace(0.99, 0.3, 100)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.ones(100, dtype=int)
    labels[0] = 0
    assert choose_review_threshold(probs, labels, 0.95, min_auto_rows=1).threshold == 0.99
    r = choose_review_threshold(probs, labels, 0.95)  # default: at least 30 rows
    assert r.threshold == 1.0 and r.review_share == 1.0
