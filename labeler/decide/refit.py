"""Refitting the head on the shelter's decided photos, from their stored records.

A prior (``labeler.decide.adapt``) says which breeds this shelter sees; it cannot teach the
model what *this* shelter's photos of a breed look like (its kennels, its light, its mixes).
Each classified photo keeps a record of the network's outputs (``labeler.model.features``):
its raw log-probabilities and its projected features. A refit learns a correction of the
head, a dense layer on the projected features whose logits are added to the model's, by
multinomial logistic regression with the model's own (calibrated, prior-weighted) outputs
as the offset:

    p = softmax(offset + projected @ W + b),   offset = log(calibrated p_model * weights)

It is fitted on staff's decisions *together with the training data* (the feature space's
anchor records of training photos, offset by the model as trained), with an L2 penalty that
pulls the correction towards none: a shelter with few decisions gets a small correction, and
the breeds it has not decided yet keep what training taught.

Judged like the prior, on the decisions held out, against the model as it is and against
the prior alone; applied only when it is no worse than the prior alone and keeps the
promised precision. Pure numpy, deterministic (full-batch Adam from zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labeler.decide.adapt import (
    DEFAULT_STRENGTH,
    Outcome,
    below_promise,
    class_weights,
    held_out,
    outcome,
)
from labeler.model.classifier import top_k
from labeler.model.features import FeatureSpace, HeadCorrection, PhotoRecord

# Chosen on simulated shelters built from the calibration photos (decisions 150-600):
# weaker penalties overfit the decisions and lose top-1 on held-out ones.
DEFAULT_L2 = 0.1
MIN_REFIT_DECISIONS = 30
STEPS = 300
LEARNING_RATE = 0.05
# A photo the dog gate sent to "not a dog" has log-probability ~-27.6 on every breed: no
# correction the penalty allows could move it, and its gradient would only push the rest.
_GATED = -20.0


@dataclass(frozen=True)
class RecordDecision:
    """One photo staff decided: its stored record and the label index staff chose."""

    key: str
    record: PhotoRecord
    staff_label: int


@dataclass(frozen=True)
class Refit:
    """The correction fitted on every decision, and what its held-out check found."""

    correction: HeadCorrection | None  # None: the held-out check chose the prior alone
    before: Outcome  # held-out decisions, the model as it is
    prior_only: Outcome  # the shelter's prior, no correction
    after: Outcome  # the prior and the correction, both learned without the held-out ones
    decisions: int
    l2: float
    reason: str = ""

    def evidence(self) -> str:
        verdict = "applied" if self.correction is not None else f"not applied: {self.reason}"
        return "\n".join(
            [
                f"head refitted on {self.decisions} decided photos' records and the training "
                f"anchors (L2 {self.l2:g}): {verdict}",
                f"  held out: {self.before.n} photos",
                f"  the model as it is:      {self.before.describe()}",
                f"  the shelter's prior:     {self.prior_only.describe()}",
                f"  prior and refitted head: {self.after.describe()}",
            ]
        )


def offsets(logp: np.ndarray, temperature: float, weights: Sequence[float] | None) -> np.ndarray:
    """The model's log-probabilities as served before any correction: temperature-scaled
    raw log-probabilities, times the class weights, renormalised."""
    z = np.asarray(logp, np.float64) / temperature
    if weights is not None:
        z = z + np.log(np.asarray(weights, np.float64))
    return z - _logsumexp(z)


def probabilities(
    offset: np.ndarray, projected: np.ndarray, correction: HeadCorrection | None
) -> np.ndarray:
    z = offset if correction is None else offset + correction.logits(projected)
    return np.exp(z - _logsumexp(z))


def record_fits(record: PhotoRecord, space: FeatureSpace, classes: int) -> bool:
    """The record was made in this feature space by a network with this many outputs."""
    return (
        record.space == space.space
        and record.logp.shape == (classes,)
        and record.projected.shape == (space.dims,)
    )


def best_guesses(
    records: Sequence[PhotoRecord],
    labels: Sequence[str],
    temperature: float,
    weights: Sequence[float] | None,
    correction: HeadCorrection | None,
) -> list[tuple[str, float]]:
    """Each record's best label and its probability as a model with these weights and this
    correction serves it."""
    if not records:
        return []
    logp = np.stack([r.logp for r in records])
    projected = np.stack([r.projected for r in records])
    p = probabilities(offsets(logp, temperature, weights), projected, correction)
    best = p.argmax(axis=1)
    return [(labels[int(k)], float(p[i, k])) for i, k in enumerate(best)]


def fit_correction(
    offset: np.ndarray,
    projected: np.ndarray,
    labels: np.ndarray,
    l2: float = DEFAULT_L2,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
    raw_logp: np.ndarray | None = None,
) -> HeadCorrection:
    """Multinomial logistic regression with a fixed offset: the mean cross-entropy plus
    ``l2 / 2 * |W|^2`` (and a tenth of it on the bias), minimised by full-batch Adam from
    zero. Rows whose label the dog gate ruled out are left out, judged on the network's raw
    log-probabilities (``raw_logp``; the offset itself when not given): a temperature or a
    class weight would move a gated label's offset over any fixed line."""
    offset = np.asarray(offset, np.float64)
    x = np.asarray(projected, np.float64)
    y = np.asarray(labels, np.int64)
    raw = offset if raw_logp is None else np.asarray(raw_logp, np.float64)
    keep = raw[np.arange(len(y)), y] > _GATED
    offset, x, y = offset[keep], x[keep], y[keep]
    n, classes = offset.shape
    weights = np.zeros((x.shape[1], classes))
    bias = np.zeros(classes)
    if n == 0:
        return HeadCorrection(weights, bias)
    target = np.zeros((n, classes))
    target[np.arange(n), y] = 1.0
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        z = offset + x @ weights + bias
        p = np.exp(z - _logsumexp(z))
        error = (p - target) / n
        grads = [x.T @ error + l2 * weights, error.sum(axis=0) + 0.1 * l2 * bias]
        for i, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
            moments[i] = beta1 * moments[i] + (1 - beta1) * grad
            squares[i] = beta2 * squares[i] + (1 - beta2) * grad * grad
            m_hat = moments[i] / (1 - beta1**step)
            v_hat = squares[i] / (1 - beta2**step)
            param -= learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    return HeadCorrection(weights, bias)


def refit(
    decided: Sequence[RecordDecision],
    space: FeatureSpace,
    labels: Sequence[str],
    temperature: float,
    threshold: float,
    reject: frozenset[str],
    *,
    current_weights: Sequence[float] | None,
    current_correction: HeadCorrection | None,
    final_weights: Sequence[float],
    strength: float = DEFAULT_STRENGTH,
    l2: float = DEFAULT_L2,
    min_decisions: int = MIN_REFIT_DECISIONS,
) -> Refit | None:
    """The refit judged on held-out decisions, or None when too few records exist to try.

    ``final_weights``: the prior the adapted model will carry (learned from every decision),
    the offset of the correction fitted on every decision."""
    usable = [
        d
        for d in decided
        if record_fits(d.record, space, len(labels)) and 0 <= d.staff_label < len(labels)
    ]
    if len(usable) < min_decisions:
        return None
    fit = [d for d in usable if not held_out(d.key)]
    test = [d for d in usable if held_out(d.key)]
    if not fit or not test:
        return None
    label_names = tuple(labels)
    anchors_offset = offsets(space.anchor_logp, temperature, None)

    def arrays(rows: Sequence[RecordDecision]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.stack([r.record.logp for r in rows]),
            np.stack([r.record.projected for r in rows]),
            np.array([r.staff_label for r in rows], dtype=np.int64),
        )

    def fitted(rows: Sequence[RecordDecision], weights: Sequence[float]) -> HeadCorrection:
        logp, x, y = arrays(rows)
        return fit_correction(
            np.concatenate([offsets(logp, temperature, weights), anchors_offset]),
            np.concatenate([x, space.anchor_projected]),
            np.concatenate([y, space.anchor_labels]),
            l2=l2,
            raw_logp=np.concatenate([logp, space.anchor_logp]),
        )

    test_logp, test_x, test_y = arrays(test)

    def judged(weights: Sequence[float] | None, correction: HeadCorrection | None) -> Outcome:
        p = probabilities(offsets(test_logp, temperature, weights), test_x, correction)
        ranked = top_k(p, label_names)
        return outcome(
            ((r.candidates, label_names[t]) for r, t in zip(ranked, test_y, strict=True)),
            threshold,
            reject,
        )

    fit_counts = Counter(label_names[d.staff_label] for d in fit)
    fit_weights = class_weights(fit_counts, label_names, strength)
    before = judged(current_weights, current_correction)
    prior_only = judged(fit_weights, None)
    after = judged(fit_weights, fitted(fit, fit_weights))
    reason = ""
    if after.top1_right < prior_only.top1_right:
        reason = (
            f"its best guess is right less often than the prior's alone "
            f"({after.top1_right} against {prior_only.top1_right})"
        )
    elif below_promise(after):
        reason = f"its auto-labels are {after.auto_right}/{after.auto} right"
    correction = None if reason else fitted(usable, final_weights)
    return Refit(correction, before, prior_only, after, len(usable), l2, reason)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
