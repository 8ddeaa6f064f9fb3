"""The decision stage: which predictions are trusted and which go to staff. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from labeler.core.domain import LABELLED, NEEDS_REVIEW, NOT_A_DOG, Decision, Prediction
from labeler.model.artifact import Artifact

DEFAULT_REVIEW_THRESHOLD = 0.5
DEFAULT_REVIEW_MARGIN = 0.0


# review_reason of an audit row starts with this, so staff (and SQL) can tell audits apart.
AUDIT_REASON = "audit: a confident result, checked by staff to measure the model's precision"

SOURCE_SETTING = "setting LABELER_REVIEW_THRESHOLD"
SOURCE_ARTIFACT = "model artifact"
SOURCE_DEFAULT = "built-in default"


@dataclass(frozen=True)
class Thresholds:
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD
    review_margin: float = DEFAULT_REVIEW_MARGIN
    reject_labels: frozenset[str] = frozenset()
    # Share of confident results sent to staff as audits (0 disables; see labeler.decide.audit).
    audit_share: float = 0.0
    # Where review_threshold came from, in words, for `labeler status` and `labeler check`.
    source: str = SOURCE_DEFAULT
    # What a further photo of the same animal adds (labeler.decide.grouping.combine), and,
    # where the model has one, that per animal size (2, 3, 4 or more photos).
    animal_evidence: float = 1.0
    animal_evidence_by_photos: tuple[float, ...] | None = None
    # (label, what staff chose instead): labels that stand, at this shelter, for a breed the
    # model does not know (labeler adapt); never auto-labelled.
    look_alikes: tuple[tuple[str, str], ...] = ()

    def look_alike_of(self, label: str) -> str | None:
        """What staff chose instead of ``label`` when it is a look-alike here; else None."""
        return next((chosen for name, chosen in self.look_alikes if name == label), None)

    def evidence_for(self, photos: int) -> float:
        """The animal rule's evidence for an animal of ``photos`` photos."""
        by_size = self.animal_evidence_by_photos
        if by_size is None or photos < 2:
            return self.animal_evidence
        return by_size[min(photos, len(by_size) + 1) - 2]


@dataclass(frozen=True)
class CalibratedThreshold:
    """A threshold stored by `labeler calibrate --apply` for one model version."""

    model_version: str
    review_threshold: float
    review_margin: float | None
    target_precision: float
    rows_used: int
    created_at: datetime
    precision_lower: float | None = None

    def describe(self) -> str:
        return (
            f"calibrated on {self.created_at:%Y-%m-%d} from {self.rows_used} reviewed rows "
            f"for precision {self.target_precision:.2f}"
        )


def resolve_thresholds(
    artifact: Artifact,
    review_threshold: float | None,
    review_margin: float | None,
    *,
    calibrated: CalibratedThreshold | None = None,
    audit_share: float = 0.0,
) -> Thresholds:
    """Settings win; then the value calibrated from this shelter's reviews for this model
    version; then the model's recommended values; then the defaults."""
    threshold, source = review_threshold, SOURCE_SETTING
    if threshold is None and calibrated is not None:
        threshold, source = calibrated.review_threshold, calibrated.describe()
    if threshold is None and artifact.decision.review_threshold is not None:
        threshold, source = artifact.decision.review_threshold, SOURCE_ARTIFACT
    if threshold is None:
        threshold, source = DEFAULT_REVIEW_THRESHOLD, SOURCE_DEFAULT
    margin = review_margin
    if margin is None and calibrated is not None:
        # The calibrated threshold was measured together with this margin.
        margin = calibrated.review_margin
    if margin is None:
        margin = artifact.decision.review_margin
    return Thresholds(
        review_threshold=threshold,
        review_margin=DEFAULT_REVIEW_MARGIN if margin is None else margin,
        reject_labels=artifact.reject_labels,
        audit_share=audit_share,
        source=source,
        animal_evidence=artifact.decision.animal_evidence,
        animal_evidence_by_photos=artifact.decision.animal_evidence_by_photos,
        look_alikes=artifact.look_alikes,
    )


def not_a_breed_reason(prediction: Prediction) -> str:
    """Why a prediction whose best class is not a breed goes to staff, in their words."""
    if prediction.label == NOT_A_DOG:
        return (
            "no dog found in this photo (to the model it shows something else: a person, "
            "another animal, an empty kennel)"
        )
    return f"best class is {prediction.label!r}, not a dog breed"


def decide(prediction: Prediction, thresholds: Thresholds) -> Decision:
    """Auto-label a confident prediction; send anything doubtful to human review."""
    # NaN compares false with everything, so without this a NaN confidence or margin would
    # pass both tests below and be auto-labelled.
    if not (math.isfinite(prediction.confidence) and math.isfinite(prediction.margin)):
        return Decision(NEEDS_REVIEW, "the model gave no usable confidence (not a finite number)")
    if prediction.label in thresholds.reject_labels:
        return Decision(NEEDS_REVIEW, not_a_breed_reason(prediction))
    chosen_instead = thresholds.look_alike_of(prediction.label)
    if chosen_instead is not None:
        return Decision(
            NEEDS_REVIEW,
            f"best guess {prediction.label!r} stands here for breeds the model does not know: "
            f"staff chose {chosen_instead} over it",
        )
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


def decide_with_audit(prediction: Prediction, thresholds: Thresholds, audit: bool) -> Decision:
    """:func:`decide`, then send a confident result to staff instead when ``audit`` is true.

    ``audit`` comes from :func:`labeler.decide.audit.is_audit` for the photo; only results that
    would
    have been auto-labelled become audits, so staff decisions on audit rows are an unbiased
    sample of the auto-labels.
    """
    decision = decide(prediction, thresholds)
    if audit and decision.status == LABELLED:
        return Decision(NEEDS_REVIEW, AUDIT_REASON, audit=True)
    return decision
