"""Small typed records shared by the pass, the decision, the store and the write-back.

Plain data only: no numpy, no SQLAlchemy, so any module can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# Labels that are never a breed to write on an animal's record, whatever the model says.
# The class a model may add for "no dog in this photo" (training.onnx_backbone).
NOT_A_DOG = "not_a_dog"
NOT_A_BREED = frozenset({"dingo", "dhole", "African_hunting_dog", NOT_A_DOG})


class PhotoStatus(StrEnum):
    """A photo's (and an animal's) status. The values are what the database stores."""

    PENDING = "pending"
    LABELLED = "labelled"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"
    REVIEWED = "reviewed"
    GONE = "gone"  # the source row vanished or stopped matching the filter


# The statuses as the plain strings the database stores.
PENDING = PhotoStatus.PENDING.value
LABELLED = PhotoStatus.LABELLED.value
NEEDS_REVIEW = PhotoStatus.NEEDS_REVIEW.value
FAILED = PhotoStatus.FAILED.value
REVIEWED = PhotoStatus.REVIEWED.value
GONE = PhotoStatus.GONE.value
STATUSES = (PENDING, LABELLED, NEEDS_REVIEW, FAILED, REVIEWED, GONE)


class RunStatus(StrEnum):
    """A run's status in labeler_run."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped (SIGTERM): the current batch was finished
    FAILED = "failed"
    ABANDONED = "abandoned"  # its process died; closed by a later pass


@dataclass(frozen=True)
class Prediction:
    """The top candidates for one photo, best first: ((label, probability), ...)."""

    candidates: tuple[tuple[str, float], ...]
    # What the photo keeps for adapting (labeler.model.features): a compact record of the
    # network's outputs, None for a model without a feature space.
    record: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return self.candidates[0][0]

    @property
    def confidence(self) -> float:
        return self.candidates[0][1]

    @property
    def margin(self) -> float:
        """Gap between the best and second-best probability (1.0 with one class)."""
        second = self.candidates[1][1] if len(self.candidates) > 1 else 0.0
        return self.candidates[0][1] - second


@dataclass(frozen=True)
class Classified:
    """The classifier's answer for one photo."""

    prediction: Prediction


@dataclass(frozen=True)
class ClassifierFailure:
    """The classifier failed on this one photo (the rest of its batch may be fine)."""

    reason: str


ClassifierResult = Classified | ClassifierFailure


@dataclass(frozen=True)
class Decision:
    """What the thresholds make of one prediction; ``reason`` says why it needs review
    (it is not an error)."""

    status: str
    reason: str | None = None
    audit: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a pass decided for one claimed photo."""

    photo_id: str
    status: str  # a PhotoStatus: labelled | needs_review | failed | gone
    prediction: Prediction | None = None
    # failed/gone: why; needs_review: the review reason (stored as review_reason).
    error: str | None = None
    photo_ref: str | None = None
    audit: bool = False  # a confident result sent to staff as an audit
    # the animal as read now, reviewer context, and the score vector to combine
    group_id: str | None = None
    context: str | None = None
    scores: str | None = None
    # What was classified: the sha256 of the photo's bytes as read (hex), and the source's
    # change marker read with them; both kept on the photo row to notice a replaced photo.
    fingerprint: str | None = None
    change_marker: str | None = None


@dataclass(frozen=True)
class SaveCounts:
    """What saving one batch's outcomes did."""

    labelled: int = 0
    needs_review: int = 0
    failed: int = 0
    lost: int = 0
    gone: int = 0
    groups: tuple[str, ...] = ()  # animals whose photos changed: to be decided again
    # Photos whose source row another session held locked past the lock timeout: nothing
    # saved, their claim is given back at the end of the pass, the next pass labels them.
    locked: int = 0


@dataclass(frozen=True)
class SourceRow:
    """A claimed photo's source row as read now."""

    image: object
    group_id: str | None = None
    context: str | None = None
    # Set when the row must fail without its image being read (over LABELER_MAX_IMAGE_BYTES).
    error: str | None = None
    # LABELER_SOURCE_CHANGE_COLUMN's value as text, as read with the image.
    change_marker: str | None = None


@dataclass(frozen=True)
class PhotoScores:
    """One classified photo of an animal: its best labels' log-probabilities, and the
    log-probability left for every other label (``rest``)."""

    photo_id: str
    logp: Mapping[str, float]
    rest: float

    @property
    def label(self) -> str:
        return max(self.logp, key=lambda k: self.logp[k])


@dataclass(frozen=True)
class GroupDecision:
    """What a pass decided for one animal."""

    status: str  # labelled | needs_review | failed | gone
    prediction: Prediction | None = None
    reason: str | None = None
    photo_ids: tuple[str, ...] = ()
    # The target's values for the breed (from the breed map); None when nothing is to be written.
    values: Mapping[str, str] | None = field(default=None)
    # A confident answer sent to staff to measure precision: never written to the record.
    audit: bool = False
