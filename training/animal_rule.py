"""The per-animal rule: how much a further photo of the same animal adds. Pure numpy.

Serving combines an animal's photos as ``softmax(sum(log p_i) / n ** evidence)``
(``labeler.decide.grouping.combine``) and judges the result with the photo threshold.
``evidence`` 1 is the geometric mean (a second photo adds nothing); 0 is the product (photos
as independent as photos of different dogs). Neither is right for one animal's photos, which
share the dog, the kennel and the camera, and no data here has several photos of one dog. So
the rule is bounded between two constructions made from calibration photos:

* **independent**: n different photos of the same breed (errors as uncorrelated as they get:
  the optimistic bound);
* **views**: n views of one photo (mirrored, zoomed in, zoomed out: errors as correlated as
  they get: the pessimistic bound).

:func:`fit_evidence` picks the smallest ``evidence`` whose auto-labels keep the target
precision in *both* constructions for every animal size, so the precision promised holds
even if an animal's photos are as alike as views of one photo; :func:`fit_evidence_by_size`
picks one per animal size (2, 3, 4 or more photos), each under the same condition, since how
much a further photo adds depends on how many there are already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.calibration import RuleOutcome, rule_outcome, wilson_interval

EVIDENCE_GRID = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 21))
ANIMAL_SIZES = (2, 3, 4)


def independent_groups(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Disjoint groups of ``size`` photos of the same class, (m, size) row indices."""
    rng = np.random.default_rng([seed, size])
    groups = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        usable = len(idx) - len(idx) % size
        groups.append(idx[:usable].reshape(-1, size))
    return np.concatenate(groups) if groups else np.zeros((0, size), dtype=np.int64)


def combine_groups(logp: np.ndarray, groups: np.ndarray, evidence: float) -> np.ndarray:
    """Animal probabilities (m, classes) from photo log-probabilities (N, classes)."""
    size = groups.shape[1]
    pooled = logp[groups].sum(axis=1) / size**evidence
    pooled -= pooled.max(axis=1, keepdims=True)
    exp = np.exp(pooled)
    return exp / exp.sum(axis=1, keepdims=True)


def view_animals(view_logp: np.ndarray, size: int) -> np.ndarray:
    """Animal log-probabilities summed over the first ``size`` views of each photo.

    ``view_logp`` is (views, N, classes); returns (N, classes), to be divided and normalised
    like :func:`combine_groups` does."""
    return view_logp[:size].sum(axis=0)


@dataclass(frozen=True)
class AnimalOutcome:
    construction: str
    size: int
    outcome: RuleOutcome

    def as_dict(self) -> dict[str, object]:
        return {"construction": self.construction, "photos": self.size, **self.outcome.as_dict()}


def outcomes(
    logp: np.ndarray,
    view_logp: np.ndarray | None,
    labels: np.ndarray,
    evidence: float,
    threshold: float,
    reject: Sequence[int],
    sizes: Sequence[int] = ANIMAL_SIZES,
    seed: int = 0,
) -> list[AnimalOutcome]:
    """Auto-label outcome of the animal rule per construction and animal size.

    ``logp`` are the photos' calibrated log-probabilities (as serving stores them)."""
    found = []
    for size in sizes:
        groups = independent_groups(labels, size, seed)
        probs = combine_groups(logp, groups, evidence)
        out = rule_outcome(probs, labels[groups[:, 0]], threshold, 0.0, reject)
        found.append(AnimalOutcome("independent", size, out))
        if view_logp is not None and size <= view_logp.shape[0]:
            pooled = view_animals(view_logp, size) / size**evidence
            pooled -= pooled.max(axis=1, keepdims=True)
            probs = np.exp(pooled) / np.exp(pooled).sum(axis=1, keepdims=True)
            found.append(
                AnimalOutcome("views", size, rule_outcome(probs, labels, threshold, 0.0, reject))
            )
    return found


def fit_evidence(
    logp: np.ndarray,
    view_logp: np.ndarray | None,
    labels: np.ndarray,
    threshold: float,
    target: float,
    reject: Sequence[int],
    grid: Sequence[float] = EVIDENCE_GRID,
    seed: int = 0,
    sizes: Sequence[int] = ANIMAL_SIZES,
) -> float:
    """The smallest ``evidence`` whose every construction and size keeps ``target``
    precision; 1.0 (the geometric mean, no gain) when none does."""
    for evidence in sorted(grid):
        found = outcomes(logp, view_logp, labels, evidence, threshold, reject, sizes, seed)
        if all(o.outcome.auto == 0 or o.outcome.precision >= target for o in found):
            return float(evidence)
    return 1.0


def fit_evidence_by_size(
    logp: np.ndarray,
    view_logp: np.ndarray | None,
    labels: np.ndarray,
    threshold: float,
    target: float,
    reject: Sequence[int],
    grid: Sequence[float] = EVIDENCE_GRID,
    seed: int = 0,
) -> list[float]:
    """:func:`fit_evidence` for each animal size of :data:`ANIMAL_SIZES` on its own, in that
    order (the last also serves larger animals)."""
    return [
        fit_evidence(logp, view_logp, labels, threshold, target, reject, grid, seed, (size,))
        for size in ANIMAL_SIZES
    ]


def outcomes_by_size(
    logp: np.ndarray,
    view_logp: np.ndarray | None,
    labels: np.ndarray,
    evidence_by_size: Sequence[float],
    threshold: float,
    reject: Sequence[int],
    seed: int = 0,
) -> list[AnimalOutcome]:
    """:func:`outcomes` with each animal size judged at its own evidence."""
    found: list[AnimalOutcome] = []
    for size, evidence in zip(ANIMAL_SIZES, evidence_by_size, strict=True):
        found += outcomes(logp, view_logp, labels, evidence, threshold, reject, (size,), seed)
    return found


def summarise(found: Sequence[AnimalOutcome]) -> list[dict[str, object]]:
    """Rows for metadata.json and the quality table, each with its Wilson interval."""
    rows = []
    for item in found:
        row = item.as_dict()
        out = item.outcome
        row["precision_interval_95"] = list(wilson_interval(out.correct, out.auto))
        rows.append(row)
    return rows
