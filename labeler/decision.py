"""The decision stage: which predictions are trusted and which go to staff. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from labeler.artifact import Artifact
from labeler.classifier import Prediction
from labeler.schema import LABELLED, NEEDS_REVIEW

DEFAULT_REVIEW_THRESHOLD = 0.5
DEFAULT_REVIEW_MARGIN = 0.0


@dataclass(frozen=True)
class Thresholds:
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD
    review_margin: float = DEFAULT_REVIEW_MARGIN
    reject_labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    status: str
    reason: str | None = None


def resolve_thresholds(
    artifact: Artifact, review_threshold: float | None, review_margin: float | None
) -> Thresholds:
    """Settings win; otherwise the model's recommended values; otherwise the defaults."""
    threshold = review_threshold
    if threshold is None:
        threshold = artifact.decision.review_threshold
    margin = review_margin
    if margin is None:
        margin = artifact.decision.review_margin
    return Thresholds(
        review_threshold=DEFAULT_REVIEW_THRESHOLD if threshold is None else threshold,
        review_margin=DEFAULT_REVIEW_MARGIN if margin is None else margin,
        reject_labels=artifact.reject_labels,
    )


def decide(prediction: Prediction, thresholds: Thresholds) -> Decision:
    """Auto-label a confident prediction; send anything doubtful to human review."""
    if prediction.label in thresholds.reject_labels:
        return Decision(NEEDS_REVIEW, f"best class is {prediction.label!r}, not a dog breed")
    if prediction.confidence < thresholds.review_threshold:
        return Decision(
            NEEDS_REVIEW,
            f"confidence {prediction.confidence:.2f} is under {thresholds.review_threshold:.2f}",
        )
    if prediction.margin < thresholds.review_margin:
        return Decision(
            NEEDS_REVIEW,
            f"top-2 margin {prediction.margin:.2f} is under {thresholds.review_margin:.2f}",
        )
    return Decision(LABELLED)
