"""Evaluation and calibration on held-out predictions: pure numpy functions.

Temperature scaling uses ``labeler.classifier.calibrate``, the very function serving applies,
so the fitted temperature means the same thing in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeler.classifier import calibrate


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
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
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
