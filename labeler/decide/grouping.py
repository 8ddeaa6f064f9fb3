"""One answer per animal: combine the predictions of an animal's photos. Pure functions.

Each photo keeps its best ``SCORES_K`` labels as log-probabilities plus the log of the
probability left for all other labels. The animal's answer pools the photos' log-probabilities
and divides the sum by ``n ** evidence`` before the softmax: a breed must be likely on every
photo to win, and one photo that is sure of something else pulls the answer down instead of
outvoting the rest.

``evidence`` says how much a further photo of the same animal adds. 1 is the geometric mean
(photos that agree add nothing, as if they were copies of one photo); 0 is the product (as if
they were independent photos of different dogs, which overstates the evidence: one animal's
photos share the dog, the kennel and the camera). Training fits it between the two bounds on
animals built from calibration photos and stores it in the artifact's ``decision`` section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence

from labeler.core.domain import (
    LABELLED,
    NEEDS_REVIEW,
    NOT_A_BREED,
    GroupDecision,
    PhotoScores,
    Prediction,
)
from labeler.decide.decision import AUDIT_REASON, Thresholds, decide, not_a_breed_reason

SCORES_K = 10
# The animal rule is fitted on animals of up to this many photos; beyond it, a further photo
# adds no more evidence (its scores still count in the mean).
MAX_POOLED_PHOTOS = 4
_TINY = 1e-12


def scores_json(prediction: Prediction) -> str:
    """The compact score vector stored on the photo row (a few hundred bytes)."""
    top = [[label, round(math.log(max(p, _TINY)), 5)] for label, p in prediction.candidates]
    rest = max(1.0 - sum(p for _, p in prediction.candidates), _TINY)
    return json.dumps({"top": top, "rest": round(math.log(rest), 5)}, separators=(",", ":"))


def parse_scores(photo_id: str, text: str | None) -> PhotoScores | None:
    """The stored vector back; None for a missing or unreadable one (that photo is skipped)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        logp = {str(label): float(value) for label, value in data["top"]}
        rest = float(data["rest"])
    except (ValueError, TypeError, KeyError):
        return None
    if not logp or not all(math.isfinite(v) for v in (*logp.values(), rest)):
        return None
    return PhotoScores(photo_id, logp, rest)


def _floor(photo: PhotoScores) -> float:
    # A label outside a photo's top list has at most the smallest listed probability, and at
    # most everything that is left.
    return min(min(photo.logp.values()), photo.rest)


def combine(photos: Sequence[PhotoScores], k: int = 3, evidence: float = 1.0) -> Prediction:
    """The animal's top-k labels: softmax of the photos' summed log-probabilities over
    ``n ** evidence`` (``evidence`` 1: the geometric mean; 0: the product), with ``n`` counted
    up to :data:`MAX_POOLED_PHOTOS`."""
    if not photos:
        raise ValueError("combine needs at least one photo")
    if not 0.0 <= evidence <= 1.0:
        raise ValueError(f"evidence must be between 0 and 1, got {evidence}")
    labels = sorted({label for p in photos for label in p.logp})
    n = len(photos)
    # sum / n ** evidence, written as mean * n ** (1 - evidence) so that n can be capped.
    scale = min(n, MAX_POOLED_PHOTOS) ** (1.0 - evidence) / n
    means = {label: sum(p.logp.get(label, _floor(p)) for p in photos) * scale for label in labels}
    rest = sum(p.rest for p in photos) * scale
    top = max(max(means.values()), rest)
    total = sum(math.exp(v - top) for v in means.values()) + math.exp(rest - top)
    ranked = sorted(labels, key=lambda label: (-means[label], label))[:k]
    return Prediction(tuple((label, math.exp(means[label] - top) / total) for label in ranked))


def disagreements(photos: Sequence[PhotoScores], label: str, margin: float) -> list[str]:
    """Photos whose own best label beats ``label`` by more than ``margin`` in probability."""
    found = []
    for photo in photos:
        own = photo.label
        if own == label:
            continue
        p_own = math.exp(photo.logp[own])
        p_label = math.exp(photo.logp.get(label, _floor(photo)))
        if p_own - p_label > margin:
            found.append(f"photo {photo.photo_id} says {own} ({p_own:.2f})")
    return found


def decide_group(
    photos: Sequence[PhotoScores],
    thresholds: Thresholds,
    margin: float,
    lookup: Callable[[str], Mapping[str, str] | None] | None = None,
    audit: bool = False,
) -> GroupDecision:
    """Combine, then apply the photo decision rule, the disagreement rule and the breed map.

    ``lookup`` maps our label to the target's values (None: no write-back configured).
    ``audit`` (from :func:`labeler.decide.audit.is_audit` on the animal's id) sends an answer that
    passed every rule to staff instead, so audits sample exactly the answers labeler would
    have written."""
    ids = tuple(p.photo_id for p in photos)
    prediction = combine(photos, evidence=thresholds.evidence_for(len(photos)))
    label = prediction.label
    if label in NOT_A_BREED:
        return GroupDecision(NEEDS_REVIEW, prediction, not_a_breed_reason(prediction), ids)
    # Disagreement first: it says more to a reviewer than the low confidence it causes.
    against = disagreements(photos, label, margin)
    if against:
        reason = f"photos disagree: the animal's best is {label}, but " + "; ".join(against)
        return GroupDecision(NEEDS_REVIEW, prediction, reason, ids)
    decision = decide(prediction, thresholds)
    if decision.status != LABELLED:
        return GroupDecision(NEEDS_REVIEW, prediction, decision.reason, ids)
    values = None
    if lookup is not None:
        values = lookup(label)
        if values is None:
            return GroupDecision(
                NEEDS_REVIEW, prediction, f"{label!r} has no entry in the breed map", ids
            )
    if audit:
        return GroupDecision(NEEDS_REVIEW, prediction, AUDIT_REASON, ids, audit=True)
    return GroupDecision(LABELLED, prediction, None, ids, values)
