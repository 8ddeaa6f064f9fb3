"""labeler_group, one row per animal: animals to decide again, ready to decide, waiting for
staff, reviewed on labeler's side, and the rows of the per-animal review view. The decisions
themselves and their write-back are in ``writeback``. Functions take a session and never
commit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import Table as SATable
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.store.keys import (
    chunks,
)
from labeler.store.schema import (
    FAILED,
    GONE,
    GROUP_REVIEW_VIEW,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    group,
    photo,
)


def insert_ignoring_duplicates(
    session: Session, table: SATable = photo, key: str = "photo_id"
) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(table).prefix_with("IGNORE")
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    raise NotImplementedError(f"database {dialect!r} is not supported")


def mark_groups_pending(session: Session, group_ids: Iterable[str], now: datetime) -> None:
    """Animals whose photos changed are decided again, unless a person decided them."""
    ids = sorted(set(group_ids))
    for chunk in chunks(ids):
        have = set(session.scalars(select(group.c.group_id).where(group.c.group_id.in_(chunk))))
        new = [
            {"group_id": g, "status": PENDING, "discovered_at": now, "updated_at": now}
            for g in chunk
            if g not in have
        ]
        if new:
            session.execute(insert_ignoring_duplicates(session, group, "group_id"), new)
        session.execute(
            update(group)
            .where(
                group.c.group_id.in_(chunk),
                group.c.status != REVIEWED,
                group.c.staff_values.is_(None),
                group.c.reviewed_breed.is_(None),
            )
            .values(
                status=PENDING,
                attempts=0,
                updated_at=now,
                # Why an animal was gone no longer holds once it has photos to decide again;
                # a pending animal's last_error is read as a write waiting for a grant.
                last_error=case((group.c.status == GONE, None), else_=group.c.last_error),
            )
        )


def ready_groups(
    session: Session, *, run_id: int, max_attempts: int, now: datetime, limit: int
) -> list[str]:
    """Animals to decide now: pending (or whose write failed in an earlier run), none of whose
    photos is still pending or claimed."""
    busy = exists().where(
        photo.c.group_id == group.c.group_id,
        or_(
            photo.c.status == PENDING,
            and_(photo.c.claimed_by.is_not(None), photo.c.claim_expires_at >= now),
        ),
    )
    retry = and_(
        group.c.status == FAILED,
        group.c.attempts > 0,
        group.c.attempts < max_attempts,
        or_(group.c.run_id.is_(None), group.c.run_id != run_id),
    )
    query = (
        select(group.c.group_id)
        .where(or_(group.c.status == PENDING, retry), ~busy)
        .order_by(group.c.group_id)
        .limit(limit)
    )
    return list(session.scalars(query))


def get_group(session: Session, group_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """The animal's row; ``lock`` holds it until commit, so two labelers deciding the same
    animal take turns (and the second sees what the first wrote). SQLite serialises writers."""
    query = select(group).where(group.c.group_id == group_id)
    if lock and session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    row = session.execute(query).mappings().first()
    return dict(row) if row else None


def group_photos(session: Session, group_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(photo.c.photo_id, photo.c.status, photo.c.scores, photo.c.context, photo.c.attempts)
        .where(photo.c.group_id == group_id)
        .order_by(photo.c.photo_id)
    )
    return [dict(r) for r in rows.mappings()]


def save_group(session: Session, group_id: str, values: Mapping[str, Any]) -> None:
    session.execute(update(group).where(group.c.group_id == group_id).values(**values))


def waiting_for_staff() -> ColumnElement[bool]:
    """No reviewed breed, or only one labeler refused and staff have not changed since (the
    per-animal review view's condition)."""
    return or_(group.c.reviewed_breed.is_(None), group.c.reviewed_breed == group.c.refused_breed)


def open_groups(session: Session, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Animals no person has decided yet, in key order from ``after``: their target rows are
    checked for a breed staff set in their own UI (also after a refused reviewed breed)."""
    query = select(group.c.group_id, group.c.written_values).where(
        group.c.status.in_([PENDING, LABELLED, NEEDS_REVIEW, FAILED]),
        group.c.staff_values.is_(None),
        waiting_for_staff(),
    )
    if after is not None:
        query = query.where(group.c.group_id > after)
    rows = session.execute(query.order_by(group.c.group_id).limit(limit))
    return [dict(r) for r in rows.mappings()]


def reviewed_groups(session: Session, limit: int, max_attempts: int = 3) -> list[dict[str, Any]]:
    """Animals with a reviewed breed set on labeler's side that is not written yet."""
    rows = session.execute(
        select(group.c.group_id, group.c.reviewed_breed, group.c.written_values)
        .where(
            group.c.reviewed_breed.is_not(None),
            # A refusal is said once; a new value from staff is tried again.
            or_(group.c.refused_breed.is_(None), group.c.reviewed_breed != group.c.refused_breed),
            group.c.staff_values.is_(None),
            group.c.status.not_in([REVIEWED, GONE]),
            group.c.attempts < max_attempts,  # a write the target keeps refusing retires
        )
        .order_by(group.c.group_id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def gone_with_photos(session: Session) -> list[str]:
    """Animals ``gone`` although photos of theirs still count: their record went missing while
    the photos stayed (the only other way to be gone is to have no photo left). No person has
    decided them."""
    live_photo = exists().where(photo.c.group_id == group.c.group_id, photo.c.status != GONE)
    query = select(group.c.group_id).where(
        group.c.status == GONE,
        group.c.staff_values.is_(None),
        group.c.reviewed_breed.is_(None),
        live_photo,
    )
    return list(session.scalars(query.order_by(group.c.group_id)))


def gone_reviewed(session: Session) -> list[str]:
    """Animals ``gone`` (their record went missing) with a reviewed breed from staff that was
    not written yet: it is written once the record is back."""
    query = select(group.c.group_id).where(
        group.c.status == GONE,
        group.c.staff_values.is_(None),
        group.c.reviewed_breed.is_not(None),
        or_(group.c.refused_breed.is_(None), group.c.reviewed_breed != group.c.refused_breed),
    )
    return list(session.scalars(query.order_by(group.c.group_id)))


def written_group_count(session: Session) -> int:
    """How many animals labeler has written a breed for."""
    return int(
        session.scalar(
            select(func.count()).select_from(group).where(group.c.written_values.is_not(None))
        )
        or 0
    )


def group_rows(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Every animal labeler knows, with its answer and who decided (for the demo and reports)."""
    rows = session.execute(
        select(
            group.c.group_id,
            group.c.status,
            group.c.breed,
            group.c.confidence,
            group.c.photos_used,
            group.c.review_reason,
            group.c.written_values,
            group.c.staff_values,
            group.c.reviewed_breed,
            group.c.context,
        )
        .order_by(group.c.group_id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


def group_review_queue(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The rows of the per-animal review view, least confident first."""

    names: tuple[str, ...] = ("group_id", "context", "photo_ids", "photos_used", "review_reason")
    names += ("breed", "confidence", "breed_2", "confidence_2", "breed_3", "confidence_3")
    names += ("reviewed_breed", "refusal", "breed_name", "breed_name_2", "breed_name_3")
    names += ("confidence_pct",)
    view = sa_table(GROUP_REVIEW_VIEW, *(sa_column(n) for n in names))
    rows = session.execute(
        select(*view.c).order_by(view.c.confidence, view.c.group_id).limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


NAME_COLUMNS = (("breed", "breed_name"), ("breed_2", "breed_name_2"), ("breed_3", "breed_name_3"))


def names_in_review(session: Session) -> list[dict[str, Any]]:
    """The labels and stored breed names of every animal in review, to bring the names in
    line with the breed map (animals decided before names were kept, or an edited map)."""
    columns = [group.c.group_id] + [group.c[c] for pair in NAME_COLUMNS for c in pair]
    rows = session.execute(
        select(*columns).where(group.c.status == NEEDS_REVIEW, group.c.breed.is_not(None))
    )
    return [dict(r) for r in rows.mappings()]
