"""What ``labeler status`` counts and lists: photos per status, the review queue and what it
holds, labelled and failed rows, recent runs, animals per status and the answers waiting for
a write. Read-only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from labeler.store.animals import waiting_for_staff
from labeler.store.schema import (
    FAILED,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    STATUSES,
    group,
    photo,
)


def status_counts(session: Session) -> dict[str, int]:
    """Rows per status; a row staff reviewed counts as reviewed whatever its status says, and
    so does a classified photo of an animal staff decided (on labeler's side or in their own
    screens): its photos keep the status they were labelled with, but no longer wait for
    anyone. A photo that is gone or failed stays counted as such."""
    # Grouped by plain columns (no bound values), which every server accepts in GROUP BY.
    reviewed = case((photo.c.reviewed_breed.is_(None), 0), else_=1)
    rows = session.execute(
        select(photo.c.status, reviewed, group.c.status, func.count())
        .select_from(photo.outerjoin(group, photo.c.group_id == group.c.group_id))
        .group_by(photo.c.status, reviewed, group.c.status)
    )
    counts = dict.fromkeys(STATUSES, 0)
    for status, reviewed, animal_status, count in rows:
        by_animal = animal_status == REVIEWED and status in (LABELLED, NEEDS_REVIEW)
        key = REVIEWED if reviewed or by_animal else status
        counts[key] = counts.get(key, 0) + int(count)
    return counts


def review_queue_size(session: Session) -> int:
    """Items waiting for staff: photos without an animal, and animals."""
    photos = session.scalar(
        select(func.count()).where(
            photo.c.status == NEEDS_REVIEW,
            photo.c.reviewed_breed.is_(None),
            photo.c.group_id.is_(None),
        )
    )
    animals = session.scalar(
        select(func.count()).where(group.c.status == NEEDS_REVIEW, waiting_for_staff())
    )
    return int(photos or 0) + int(animals or 0)


def review_breakdown(session: Session) -> dict[str, int]:
    """For ``status``: what the review queue holds, and the animals still ``needs_review`` that
    are not in it, so the summary accounts for every animal in review. ``photos`` and
    ``animals`` add up to :func:`review_queue_size`; ``audits`` and ``refused`` are among the
    animals; ``reviewed_waiting`` have a reviewed breed from staff that the next pass writes
    (left out of the queue at once, as the view does)."""
    in_review = group.c.status == NEEDS_REVIEW
    refused = group.c.reviewed_breed == group.c.refused_breed
    waiting = and_(in_review, waiting_for_staff())

    def count(*conditions: ColumnElement[bool]) -> int:
        return int(session.scalar(select(func.count()).where(*conditions)) or 0)

    return {
        "photos": count(
            photo.c.status == NEEDS_REVIEW,
            photo.c.reviewed_breed.is_(None),
            photo.c.group_id.is_(None),
        ),
        "animals": count(waiting),
        "audits": count(waiting, group.c.audit == 1),
        "refused": count(in_review, refused),
        "reviewed_waiting": count(
            in_review,
            group.c.reviewed_breed.is_not(None),
            or_(group.c.refused_breed.is_(None), group.c.reviewed_breed != group.c.refused_breed),
        ),
    }


def review_queue(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            photo.c.photo_id,
            photo.c.photo_ref,
            photo.c.breed,
            photo.c.confidence,
            photo.c.breed_2,
            photo.c.confidence_2,
            photo.c.breed_3,
            photo.c.confidence_3,
        )
        .where(
            photo.c.status == NEEDS_REVIEW,
            photo.c.reviewed_breed.is_(None),
            photo.c.group_id.is_(None),
        )
        .order_by(photo.c.confidence, photo.c.photo_id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def labelled_rows(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.execute(
        select(photo.c.photo_id, photo.c.photo_ref, photo.c.breed, photo.c.confidence)
        .where(photo.c.status == LABELLED)
        .order_by(photo.c.confidence.desc(), photo.c.photo_id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def failed_rows(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.execute(
        select(photo.c.photo_id, photo.c.attempts, photo.c.last_error)
        .where(photo.c.status == FAILED)
        .order_by(photo.c.updated_at.desc())
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def waiting_animals(session: Session) -> dict[str, Any]:
    """For ``status``: animals whose answer waits for a write the database refused for lack of
    privilege (pending with a reason), and reviewed breeds labeler refused, each with an
    example reason."""
    out: dict[str, Any] = {}
    kinds = {
        "writes_waiting": and_(group.c.status == PENDING, group.c.last_error.is_not(None)),
        "refused_reviews": and_(
            group.c.status == NEEDS_REVIEW, group.c.reviewed_breed == group.c.refused_breed
        ),
    }
    for name, condition in kinds.items():
        count = int(session.scalar(select(func.count()).where(condition)) or 0)
        reason = None
        if count:
            column = group.c.last_error if name == "writes_waiting" else group.c.refusal
            reason = session.scalar(
                select(column).where(condition).order_by(group.c.group_id).limit(1)
            )
        out[name] = {"count": count, "example": reason}
    return out


def group_status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(group.c.status, func.count()).group_by(group.c.status))
    return {str(status): int(n) for status, n in rows}
