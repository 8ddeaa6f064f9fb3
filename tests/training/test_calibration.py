from __future__ import annotations

import numpy as np

from labeler.model.classifier import calibrate
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


def test_wilson_interval_known_values() -> None:
    from training.calibration import wilson_interval

    low, high = wilson_interval(95, 100)
    assert abs(low - 0.8882) < 1e-3 and abs(high - 0.9785) < 1e-3
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert abs(high - 1.0) < 1e-9 and 0.72 < low < 0.73


def test_rule_outcome_mirrors_the_decision_rule() -> None:
    from training.calibration import auto_mask, rule_outcome

    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # confident, right
            [0.55, 0.40, 0.05],  # confident enough, margin 0.15
            [0.30, 0.30, 0.40],  # under the threshold
            [0.05, 0.05, 0.90],  # reject label
            [np.nan, 0.0, 0.0],  # non-finite: never auto
        ]
    )
    labels = np.array([0, 1, 2, 2, 0])
    assert auto_mask(probs, 0.5).tolist() == [True, True, False, True, False]
    assert auto_mask(probs, 0.5, margin=0.2).tolist() == [True, False, False, True, False]
    out = rule_outcome(probs, labels, 0.5, 0.0, reject=[2])
    assert (out.n, out.auto, out.correct) == (5, 2, 1)
    assert out.coverage == 0.4 and out.precision == 0.5
    d = out.as_dict()
    assert d["auto_labelled"] == 2 and d["precision_interval_95"][0] < 0.5


def test_best_coverage_and_fitted_rule() -> None:
    from training.calibration import best_coverage_at, fit_decision_rule

    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 4, n)
    conf = rng.uniform(0.3, 1.0, n)
    right = rng.uniform(size=n) < conf  # confidence means what it says
    pred = np.where(right, labels, (labels + 1) % 4)
    probs = np.full((n, 4), 0.0)
    probs[np.arange(n), pred] = conf
    probs[np.arange(n), (pred + 2) % 4] = 1 - conf
    cov = best_coverage_at(probs, labels, 0.95, min_rows=10)
    assert 0.0 < cov < 1.0
    rule = fit_decision_rule(probs, labels, 0.95, margins=(0.0, 0.5), min_rows=10)
    cal = calibrate(probs, rule.temperature)
    from training.calibration import rule_outcome

    out = rule_outcome(cal, labels, rule.threshold, rule.margin)
    assert out.auto >= 10 and out.precision >= 0.95
    # Nothing reaches an impossible target: everything goes to review.
    assert fit_decision_rule(probs, labels, 1.01, min_rows=10).threshold == 1.0


def test_cross_validated_rule_is_judged_out_of_fold() -> None:
    from training.calibration import cross_validate_rule

    rng = np.random.default_rng(1)
    n = 300
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 2.5
    probs = _softmax(logits)
    out, rules = cross_validate_rule(probs, labels, 0.9, folds=3, min_rows=5)
    assert out.n == n and len(rules) == 3
    assert 0 < out.auto <= n and out.correct <= out.auto
