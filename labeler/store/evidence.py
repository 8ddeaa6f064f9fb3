"""Staff's verdicts as evidence: per-version counts of auto-labels, audits and doubtful rows
with staff's answers, the decided photos ``adapt`` learns from, the rows ``calibrate`` weighs,
and labeler_threshold, where a learned threshold is kept."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from labeler.decide.decision import CalibratedThreshold
from labeler.decide.thresholds import VersionCounts
from labeler.store.schema import (
    LABELLED,
    NEEDS_REVIEW,
    REVIEWED,
    group,
    photo,
    threshold,
)

# A row counts as decided by its model version once it has a result (not pending, not failed).
_DECIDED_STATUSES = (LABELLED, NEEDS_REVIEW, REVIEWED)


def _decided(model_version: str | None = None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        photo.c.status.in_(_DECIDED_STATUSES),
        photo.c.model_version.is_not(None),
        photo.c.breed.is_not(None),
        photo.c.confidence.is_not(None),
    ]
    if model_version is not None:
        conditions.append(photo.c.model_version == model_version)
    return conditions


def _staff_agree() -> ColumnElement[bool]:
    # Case and surrounding spaces are typing, not a different breed (MariaDB's default
    # collation ignores case anyway; this makes the other servers agree with it).
    return func.lower(func.trim(photo.c.reviewed_breed)) == func.lower(func.trim(photo.c.breed))


def quality_counts(session: Session) -> list[VersionCounts]:
    """Per model version: rows decided, auto-labelled, audited, doubtful, staff's verdicts on
    the audits and the doubtful rows, and the auto-labels staff replaced with another breed
    (not a fair sample, but each one a certain mistake: a bound on precision)."""
    reviewed = photo.c.reviewed_breed.is_not(None)
    is_audit = photo.c.audit == 1
    doubtful = and_(photo.c.audit == 0, photo.c.review_reason.is_not(None))
    auto = and_(photo.c.audit == 0, photo.c.review_reason.is_(None))

    def count_if(*conditions: ColumnElement[bool]) -> Any:
        return func.sum(case((and_(*conditions), 1), else_=0))

    rows = session.execute(
        select(
            photo.c.model_version,
            func.count(),
            count_if(auto),
            count_if(is_audit),
            count_if(doubtful),
            count_if(is_audit, reviewed),
            count_if(is_audit, reviewed, _staff_agree()),
            count_if(doubtful, reviewed),
            count_if(doubtful, reviewed, _staff_agree()),
            count_if(auto, reviewed, ~_staff_agree()),
        )
        .where(*_decided())
        .group_by(photo.c.model_version)
        .order_by(photo.c.model_version)
    )
    return [
        VersionCounts(str(version), *(int(n or 0) for n in numbers)) for version, *numbers in rows
    ]


def staff_decided_photos(session: Session) -> list[dict[str, Any]]:
    """Classified photos whose breed staff decided: on the photo (``reviewed_breed``) or on
    its animal (``reviewed_breed``, or a breed set in the shelter's own UI, ``staff_values``),
    with the model version, its stored top three and its record for adapting."""
    rows = session.execute(
        select(
            photo.c.photo_id,
            photo.c.model_version,
            photo.c.breed,
            photo.c.confidence,
            photo.c.breed_2,
            photo.c.confidence_2,
            photo.c.breed_3,
            photo.c.confidence_3,
            photo.c.features,
            photo.c.reviewed_breed,
            photo.c.group_id,
            group.c.reviewed_breed.label("group_reviewed_breed"),
            group.c.staff_values,
        )
        .select_from(photo.outerjoin(group, photo.c.group_id == group.c.group_id))
        .where(
            photo.c.model_version.is_not(None),
            photo.c.breed.is_not(None),
            or_(
                photo.c.reviewed_breed.is_not(None),
                group.c.reviewed_breed.is_not(None),
                group.c.staff_values.is_not(None),
            ),
        )
    )
    return [dict(r) for r in rows.mappings()]


def group_decided_rows(session: Session, model_version: str | None = None) -> list[dict[str, Any]]:
    """Every animal a model version decided (``model_version``: only that one's), with staff's
    decision if any (for ``status`` and ``calibrate``)."""
    conditions: list[ColumnElement[bool]] = [
        group.c.status.in_(_DECIDED_STATUSES),
        group.c.model_version.is_not(None),
        group.c.breed.is_not(None),
    ]
    if model_version is not None:
        conditions.append(group.c.model_version == model_version)
    rows = session.execute(
        select(
            group.c.model_version,
            group.c.breed,
            group.c.confidence,
            group.c.confidence_2,
            group.c.audit,
            group.c.review_reason,
            group.c.reviewed_breed,
            group.c.refused_breed,
            group.c.staff_values,
            group.c.written_values,
        ).where(*conditions)
    )
    return [dict(r) for r in rows.mappings()]


def decided_rows(session: Session, model_version: str) -> list[dict[str, Any]]:
    """Every row this model version decided, with what calibration needs to weigh it."""
    rows = session.execute(
        select(
            photo.c.confidence,
            photo.c.confidence_2,
            photo.c.breed,
            photo.c.audit,
            photo.c.review_reason.is_(None).label("auto"),
            photo.c.reviewed_breed.is_not(None).label("reviewed"),
            _staff_agree().label("agree"),
        ).where(*_decided(model_version))
    )
    return [dict(r) for r in rows.mappings()]


def calibrated_threshold(session: Session, model_version: str) -> CalibratedThreshold | None:
    row = (
        session.execute(select(threshold).where(threshold.c.model_version == model_version))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return CalibratedThreshold(
        model_version=row["model_version"],
        review_threshold=float(row["review_threshold"]),
        review_margin=None if row["review_margin"] is None else float(row["review_margin"]),
        target_precision=float(row["target_precision"]),
        rows_used=int(row["rows_used"]),
        created_at=row["created_at"],
        precision_lower=None if row["precision_lower"] is None else float(row["precision_lower"]),
    )


def store_calibrated_threshold(
    session: Session,
    value: CalibratedThreshold,
    *,
    coverage: float | None,
    evidence: str,
    created_by: str | None,
) -> None:
    """Replace the calibrated threshold of ``value.model_version`` (delete + insert works the
    same on every server; the caller's transaction makes it atomic)."""
    session.execute(delete(threshold).where(threshold.c.model_version == value.model_version))
    session.execute(
        threshold.insert().values(
            model_version=value.model_version,
            review_threshold=value.review_threshold,
            review_margin=value.review_margin,
            target_precision=value.target_precision,
            precision_lower=value.precision_lower,
            coverage=coverage,
            rows_used=value.rows_used,
            evidence=evidence[:20000],
            created_at=value.created_at,
            created_by=(created_by or None) and created_by[:128],
        )
    )
