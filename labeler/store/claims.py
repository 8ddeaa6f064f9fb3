"""Claims on labeler_photo rows: which rows a pass may take, taking them without two labelers
ever holding one row, and giving them back. Functions take a session and never commit."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from labeler.store.schema import (
    FAILED,
    PENDING,
    photo,
)


def _claimable(now: datetime, max_attempts: int, run_id: int) -> ColumnElement[bool]:
    retryable_failure = and_(
        photo.c.status == FAILED,
        photo.c.attempts < max_attempts,
        # a row that failed in this very pass waits for the next one (compared by run, not
        # by time: MySQL's DATETIME keeps whole seconds only)
        or_(photo.c.run_id.is_(None), photo.c.run_id != run_id),
    )
    return and_(
        or_(photo.c.status == PENDING, retryable_failure),
        photo.c.reviewed_breed.is_(None),
        or_(photo.c.claimed_by.is_(None), photo.c.claim_expires_at < now),
    )


def claim(
    session: Session,
    token: str,
    *,
    now: datetime,
    ttl: timedelta,
    limit: int,
    max_attempts: int,
    run_id: int,
) -> list[str]:
    """Claim up to ``limit`` photos for ``token`` until ``now + ttl``.

    PostgreSQL and MariaDB lock the candidates with SKIP LOCKED, so concurrent labelers take
    disjoint rows without waiting; SQLite serialises writers (BEGIN IMMEDIATE). The UPDATE
    re-checks claimability, so a row can never be held by two tokens.
    """
    eligible = _claimable(now, max_attempts, run_id)
    candidates = select(photo.c.photo_id).where(eligible).limit(limit)
    if session.get_bind().dialect.name != "sqlite":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list(session.scalars(candidates))
    if not ids:
        return []
    session.execute(
        update(photo)
        .where(photo.c.photo_id.in_(ids), eligible)
        .values(claimed_by=token, claim_expires_at=now + ttl)
    )
    # Asked, not assumed: a claim retried after an ambiguous COMMIT finds its first rows too.
    return list(session.scalars(select(photo.c.photo_id).where(photo.c.claimed_by == token)))


def claimable_count(session: Session, *, now: datetime, max_attempts: int, run_id: int) -> int:
    """How many photos a pass starting now would label: the denominator of its progress."""
    query = select(func.count()).where(_claimable(now, max_attempts, run_id))
    return int(session.scalar(query) or 0)


def release(session: Session, token: str) -> int:
    """Give back every row still held by ``token`` (unfinished work on shutdown)."""
    result = session.execute(
        update(photo)
        .where(photo.c.claimed_by == token)
        .values(claimed_by=None, claim_expires_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def claimed_count(session: Session, now: datetime) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                photo.c.claimed_by.is_not(None), photo.c.claim_expires_at >= now
            )
        )
        or 0
    )
