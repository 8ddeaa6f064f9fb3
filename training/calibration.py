"""Evaluation and calibration on held-out predictions: pure numpy functions.

Temperature scaling uses ``labeler.model.classifier.calibrate``, the very function serving applies,
so the fitted temperature means the same thing in both places.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from labeler.decide.thresholds import wilson_interval as service_wilson_interval
from labeler.model.classifier import calibrate


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class (NaN for a class absent from ``labels``)."""
    pred = probs.argmax(axis=1)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = float(np.mean(pred[mask] == c))
    return out


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def most_confused_pairs(cm: np.ndarray, n: int = 10) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal cells as (true, predicted, count), largest first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = [(int(i // cm.shape[1]), int(i % cm.shape[1])) for i in flat]
    return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    if len(labels) == 0:
        return float("nan")
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE from each row's top confidence and whether its top guess was right."""
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; confidence 0 goes to the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0
) -> float:
    """The temperature minimising validation NLL (golden-section search on log T).

    NLL is convex in 1/T for softmax logits, hence unimodal in log T, so golden section finds
    the optimum without gradients.
    """
    if len(labels) == 0:
        return 1.0
    probs = np.asarray(probs, dtype=np.float64)

    def loss(log_t: float) -> float:
        return negative_log_likelihood(calibrate(probs, float(np.exp(log_t))), labels)

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2.0))


@dataclass(frozen=True)
class ReviewThreshold:
    threshold: float  # auto-label when calibrated confidence >= threshold
    review_share: float  # share of rows below it, sent to human review
    auto_accuracy: float  # accuracy of the rows above it (NaN when none)
    target: float


def choose_review_threshold(
    probs: np.ndarray, labels: np.ndarray, target: float = 0.95, min_auto_rows: int = 30
) -> ReviewThreshold:
    """The lowest confidence threshold whose auto-labelled rows are >= ``target`` correct.

    Lowest, because every row above the threshold skips review: the smallest threshold that
    meets the accuracy target sends the fewest rows to people. The target must hold on at
    least ``min_auto_rows`` validation rows: "1 of 1 right" says nothing about the next
    thousand. When no threshold qualifies, everything goes to review (threshold 1.0).
    """
    n = len(labels)
    if n == 0:
        return ReviewThreshold(1.0, 1.0, float("nan"), target)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, correct_sorted = conf[order], correct[order]
    # Accuracy of the top-m most confident rows, for every m.
    cum_acc = np.cumsum(correct_sorted) / np.arange(1, n + 1)
    best_m = 0
    for m in range(n, max(min_auto_rows, 1) - 1, -1):
        # A threshold can only cut between distinct confidences.
        if m < n and conf_sorted[m] == conf_sorted[m - 1]:
            continue
        if cum_acc[m - 1] >= target:
            best_m = m
            break
    if best_m == 0:
        return ReviewThreshold(1.0, 1.0, float("nan"), target)
    threshold = float(conf_sorted[best_m - 1])
    return ReviewThreshold(threshold, 1.0 - best_m / n, float(cum_acc[best_m - 1]), target)


def evaluate(probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """The held-out metrics stored in the artifact."""
    per_class = per_class_accuracy(probs, labels, len(class_names))
    return {
        "n": len(labels),
        "top1": top_k_accuracy(probs, labels, 1),
        "top3": top_k_accuracy(probs, labels, 3),
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(probs, labels) if len(labels) else float("nan"),
        "per_class_accuracy": {
            name: (None if np.isnan(acc) else float(acc))
            for name, acc in zip(class_names, per_class, strict=True)
        },
    }


# --- decision rule on a calibration set: precision of auto-labels, coverage -------------------

WILSON_Z = 1.959963984540054  # two-sided 95 %


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials.

    The interval itself is :func:`labeler.decide.thresholds.wilson_interval`, the one the
    service reports, so training and ``labeler status`` can never disagree on it.
    """
    interval = service_wilson_interval(successes, n, level=2 * NormalDist().cdf(z) - 1)
    return (0.0, 1.0) if interval is None else (interval.low, interval.high)


@dataclass(frozen=True)
class RuleOutcome:
    """What a decision rule does to a set of labelled predictions."""

    n: int
    auto: int  # rows labelled without review
    correct: int  # of those, how many match the truth

    @property
    def coverage(self) -> float:
        return self.auto / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        return self.correct / self.auto if self.auto else float("nan")

    def as_dict(self) -> dict[str, float | int | list[float] | None]:
        low, high = wilson_interval(self.correct, self.auto)
        return {
            "n": self.n,
            "auto_labelled": self.auto,
            "coverage": self.coverage,
            "precision": None if not self.auto else self.precision,
            "precision_interval_95": [low, high],
        }


def auto_mask(
    probs: np.ndarray, threshold: float, margin: float = 0.0, reject: Sequence[int] = ()
) -> np.ndarray:
    """The rows ``labeler.decide.decision.decide`` would auto-label (reject labels go to review).

    Mirrors ``decide``: a non-finite confidence never passes.
    """
    if len(probs) == 0:
        return np.zeros(0, dtype=bool)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    conf = top2[:, 0]
    gap = top2[:, 0] - (top2[:, 1] if probs.shape[1] > 1 else 0.0)
    pred = probs.argmax(axis=1)
    ok = np.isfinite(conf) & (conf >= threshold) & (gap >= margin)
    return ok & ~np.isin(pred, np.asarray(list(reject), dtype=np.int64))


def rule_outcome(
    probs: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    margin: float = 0.0,
    reject: Sequence[int] = (),
) -> RuleOutcome:
    auto = auto_mask(probs, threshold, margin, reject)
    correct = int(np.sum(probs.argmax(axis=1)[auto] == labels[auto])) if auto.any() else 0
    return RuleOutcome(len(labels), int(auto.sum()), correct)


def best_coverage_at(
    probs: np.ndarray,
    labels: np.ndarray,
    target: float,
    reject: Sequence[int] = (),
    min_rows: int = 30,
) -> float:
    """The largest share of rows a confidence threshold chosen after the fact can auto-label
    at ``target`` precision (an optimistic ceiling: the threshold sees the answers)."""
    if len(labels) == 0:
        return 0.0
    pred = probs.argmax(axis=1)
    allowed = ~np.isin(pred, np.asarray(list(reject), dtype=np.int64))
    return best_coverage(probs.max(axis=1), pred == labels, allowed, target, min_rows)


def best_coverage(
    conf: np.ndarray, correct: np.ndarray, allowed: np.ndarray, target: float, min_rows: int = 30
) -> float:
    """``best_coverage_at`` from per-row confidence, correctness and whether the rule may
    auto-label the row at all (a reject label may not)."""
    n = len(conf)
    if n == 0:
        return 0.0
    conf = np.where(allowed, conf, -np.inf)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(np.asarray(correct, dtype=np.float64)[order]) / np.arange(1, n + 1)
    conf_sorted = conf[order]
    for m in range(n, max(min_rows, 1) - 1, -1):
        if not np.isfinite(conf_sorted[m - 1]):
            continue
        if m < n and conf_sorted[m] == conf_sorted[m - 1]:
            continue
        if cum[m - 1] >= target:
            return m / n
    return 0.0


@dataclass(frozen=True)
class DecisionRule:
    temperature: float
    threshold: float
    margin: float


def fit_decision_rule(
    probs: np.ndarray,
    labels: np.ndarray,
    target: float,
    reject: Sequence[int] = (),
    margins: Sequence[float] = (0.0,),
    min_rows: int = 30,
) -> DecisionRule:
    """Temperature by NLL, then for each margin the lowest threshold whose auto-labels reach
    ``target`` precision on at least ``min_rows`` rows; the (threshold, margin) pair that
    auto-labels the most rows wins. Nothing qualifies: threshold 1.0 (everything to review)."""
    temperature = fit_temperature(probs, labels)
    cal = calibrate(probs, temperature)
    conf = cal.max(axis=1)
    best = DecisionRule(temperature, 1.0, 0.0)
    best_auto = -1
    candidates = np.unique(conf)[::-1]
    for margin in margins:
        chosen = None
        for threshold in candidates:  # descending: the last qualifying one is the lowest
            out = rule_outcome(cal, labels, float(threshold), margin, reject)
            if out.auto >= min_rows and out.precision >= target:
                chosen = (float(threshold), out.auto)
            elif out.auto >= min_rows and chosen is not None and out.precision < target - 0.05:
                break  # far below target: lower thresholds only add less certain rows
        if chosen is not None and chosen[1] > best_auto:
            best, best_auto = DecisionRule(temperature, chosen[0], float(margin)), chosen[1]
    return best


def cross_validate_rule(
    probs: np.ndarray,
    labels: np.ndarray,
    target: float,
    reject: Sequence[int] = (),
    margins: Sequence[float] = (0.0,),
    folds: int = 5,
    seed: int = 0,
    min_rows: int = 30,
) -> tuple[RuleOutcome, list[DecisionRule]]:
    """Out-of-fold outcome of ``fit_decision_rule``: each fold is judged by a rule fitted on
    the other folds (stratified by label), so the precision reported is not the one fitted."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        fold_of[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % folds
    auto = correct = 0
    rules = []
    for k in range(folds):
        fit, held = fold_of != k, fold_of == k
        rule = fit_decision_rule(probs[fit], labels[fit], target, reject, margins, min_rows)
        rules.append(rule)
        out = rule_outcome(
            calibrate(probs[held], rule.temperature),
            labels[held],
            rule.threshold,
            rule.margin,
            reject,
        )
        auto += out.auto
        correct += out.correct
    return RuleOutcome(len(labels), auto, correct), rules
