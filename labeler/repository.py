"""Every SQL statement the labeler runs. Functions take a session and never commit: the caller
frames the transaction. All values are bound parameters; the only names in SQL text are the
validated identifiers of the configured source."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import String as SAString
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.classifier import Prediction
from labeler.schema import (
    FAILED,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    STATUSES,
    photo,
    run,
)
from labeler.source import Source

ERROR_MAX = 1000


@dataclass(frozen=True)
class Outcome:
    """What a pass decided for one claimed photo."""

    photo_id: str
    status: str  # labelled | needs_review | failed
    prediction: Prediction | None = None
    error: str | None = None
    photo_ref: str | None = None


@dataclass(frozen=True)
class SaveCounts:
    labelled: int = 0
    needs_review: int = 0
    failed: int = 0
    lost: int = 0


# --- discovery -------------------------------------------------------------------------------


def _source_filter(source: Source) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if source.filter_column and source.filter_values:
        column = source.table.c[source.filter_column]
        conditions.append(column.in_([_typed(column, v) for v in source.filter_values]))
    if source.writeback_breed_column:
        # A breed already typed into the association's own column means a human named it.
        conditions.append(source.table.c[source.writeback_breed_column].is_(None))
    return conditions


def discover(session: Session, source: Source, now: datetime) -> int:
    """Register every source photo the labeler has not seen yet as pending.

    One INSERT ... SELECT on the server: nothing is streamed through Python, and concurrent
    labelers racing on the same new rows are absorbed by the primary key.
    """
    photo_id = cast(source.id, SAString(255))
    already = exists().where(photo.c.photo_id == photo_id)
    query = select(
        photo_id,
        literal(PENDING, SAString(16)),
        literal(now),
        literal(now),
    ).where(~already, source.id.is_not(None), *_source_filter(source))
    insert = _insert_ignoring_duplicates(session).from_select(
        ["photo_id", "status", "discovered_at", "updated_at"], query
    )
    result = session.execute(insert, execution_options={"preserve_rowcount": True})
    return max(int(result.rowcount or 0), 0)  # type: ignore[attr-defined]


def _insert_ignoring_duplicates(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(photo).on_conflict_do_nothing(index_elements=["photo_id"])
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(photo).prefix_with("IGNORE")
    if dialect == "sqlite":
        return sqlite.insert(photo).on_conflict_do_nothing(index_elements=["photo_id"])
    raise NotImplementedError(f"database {dialect!r} is not supported")


# --- claims ----------------------------------------------------------------------------------


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


def fetch_images(session: Session, source: Source, photo_ids: Sequence[str]) -> dict[str, Any]:
    """The image values of the claimed photos, keyed by the labeler's text id."""
    by_value = {source.id_value(pid): pid for pid in photo_ids if _convertible(source, pid)}
    if not by_value:
        return {}
    rows = session.execute(select(source.id, source.image).where(source.id.in_(list(by_value))))
    out: dict[str, Any] = {}
    for id_value, image in rows:
        key = by_value.get(id_value, str(id_value))
        out.setdefault(key, image)
    return out


def _convertible(source: Source, photo_id: str) -> bool:
    try:
        source.id_value(photo_id)
    except ValueError:
        return False
    return True


# --- results ---------------------------------------------------------------------------------


def save_outcomes(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcomes: Iterable[Outcome],
    now: datetime,
) -> SaveCounts:
    """Write a batch's results, the optional write-back and the run's counters.

    Each UPDATE is guarded by the claim token and by ``reviewed_breed IS NULL``: a result for a
    row whose claim was lost, or that staff reviewed meanwhile, changes nothing.
    """
    counts = {LABELLED: 0, NEEDS_REVIEW: 0, FAILED: 0, "lost": 0}
    for outcome in outcomes:
        values: dict[str, Any] = {
            "status": outcome.status,
            "claimed_by": None,
            "claim_expires_at": None,
            "run_id": run_id,
            "updated_at": now,
        }
        if outcome.photo_ref is not None:
            values["photo_ref"] = outcome.photo_ref
        if outcome.status == FAILED:
            values["attempts"] = photo.c.attempts + 1
            values["last_error"] = (outcome.error or "unknown error")[:ERROR_MAX]
        else:
            assert outcome.prediction is not None
            values.update(_prediction_columns(outcome.prediction))
            values.update(
                model_version=model_version,
                labelled_at=now,
                attempts=0,
                last_error=None,
                review_reason=(outcome.error or "")[:255] or None,
            )
        previous_breed = None
        if source.writeback_breed_column and outcome.status == LABELLED:
            previous_breed = session.scalar(
                select(photo.c.breed).where(photo.c.photo_id == outcome.photo_id)
            )
        result = session.execute(
            update(photo)
            .where(
                photo.c.photo_id == outcome.photo_id,
                photo.c.claimed_by == token,
                photo.c.reviewed_breed.is_(None),
            )
            .values(**values)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            counts["lost"] += 1
            continue
        counts[outcome.status] += 1
        if outcome.status == LABELLED and outcome.prediction is not None:
            _write_back(session, source, outcome, previous_breed)
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(
            labelled=run.c.labelled + counts[LABELLED],
            needs_review=run.c.needs_review + counts[NEEDS_REVIEW],
            failed=run.c.failed + counts[FAILED],
            lost=run.c.lost + counts["lost"],
        )
    )
    return SaveCounts(counts[LABELLED], counts[NEEDS_REVIEW], counts[FAILED], counts["lost"])


def _prediction_columns(prediction: Prediction) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    names = (("breed", "confidence"), ("breed_2", "confidence_2"), ("breed_3", "confidence_3"))
    for i, (breed_col, conf_col) in enumerate(names):
        if i < len(prediction.candidates):
            label, probability = prediction.candidates[i]
            columns[breed_col], columns[conf_col] = label[:128], float(probability)
        else:
            columns[breed_col], columns[conf_col] = None, None
    return columns


def _write_back(
    session: Session, source: Source, outcome: Outcome, previous_breed: str | None
) -> None:
    """Copy an auto-accepted breed into the association's own columns, never over a value
    that someone other than the labeler wrote."""
    if not source.writeback_breed_column or outcome.prediction is None:
        return
    breed_col = source.table.c[source.writeback_breed_column]
    values: dict[str, Any] = {breed_col.key: outcome.prediction.label}
    if source.writeback_confidence_column:
        values[source.writeback_confidence_column] = outcome.prediction.confidence
    untouched: ColumnElement[bool] = breed_col.is_(None)
    if previous_breed is not None:
        untouched = or_(untouched, breed_col == previous_breed)
    session.execute(
        update(source.table)
        .where(source.id == source.id_value(outcome.photo_id), untouched)
        .values(**values)
    )


# --- runs ------------------------------------------------------------------------------------


def start_run(
    session: Session, *, command: str, worker: str, model_version: str, now: datetime
) -> int:
    result = session.execute(
        run.insert().values(
            command=command, worker=worker, model_version=model_version, started_at=now
        )
    )
    key = result.inserted_primary_key  # type: ignore[attr-defined]
    assert key is not None
    return int(key[0])


def add_run_counts(
    session: Session, run_id: int, *, discovered: int = 0, released: int = 0
) -> None:
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(discovered=run.c.discovered + discovered, released=run.c.released + released)
    )


def finish_run(
    session: Session, run_id: int, *, status: str, now: datetime, errors: str | None
) -> dict[str, Any]:
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(status=status, finished_at=now, errors=errors[:4000] if errors else None)
    )
    return dict(session.execute(select(run).where(run.c.id == run_id)).mappings().one())


# --- relabelling -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RelabelSelection:
    """Which rows to send back to pending. Conditions combine with AND; at least one is set."""

    other_model_version: str | None = None  # rows labelled by any version but this one
    photo_ids: tuple[str, ...] = ()
    failed: bool = False
    labelled_before: datetime | None = None
    everything: bool = False

    def is_empty(self) -> bool:
        return not (
            self.other_model_version
            or self.photo_ids
            or self.failed
            or self.labelled_before
            or self.everything
        )


def relabel(session: Session, selection: RelabelSelection, now: datetime) -> int:
    """Mark the selected rows pending again. Rows with a staff decision are never selected."""
    if selection.is_empty():
        raise ValueError("relabel needs a selection")
    conditions: list[ColumnElement[bool]] = [
        photo.c.reviewed_breed.is_(None),
        photo.c.status != REVIEWED,
    ]
    if selection.other_model_version:
        conditions.append(photo.c.model_version.is_not(None))
        conditions.append(photo.c.model_version != selection.other_model_version)
    if selection.photo_ids:
        conditions.append(photo.c.photo_id.in_(list(selection.photo_ids)))
    if selection.failed:
        conditions.append(photo.c.status == FAILED)
    if selection.labelled_before:
        conditions.append(photo.c.labelled_at < selection.labelled_before)
    result = session.execute(
        update(photo)
        .where(*conditions)
        .values(
            status=PENDING,
            attempts=0,
            last_error=None,
            claimed_by=None,
            claim_expires_at=None,
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- status ----------------------------------------------------------------------------------


def status_counts(session: Session) -> dict[str, int]:
    """Rows per status; a row staff reviewed counts as reviewed whatever its status says."""
    reviewed = case((photo.c.reviewed_breed.is_(None), 0), else_=1)
    rows = session.execute(
        select(photo.c.status, reviewed, func.count()).group_by(photo.c.status, reviewed)
    )
    counts = dict.fromkeys(STATUSES, 0)
    for status, reviewed, count in rows:
        key = REVIEWED if reviewed else status
        counts[key] = counts.get(key, 0) + int(count)
    return counts


def claimed_count(session: Session, now: datetime) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                photo.c.claimed_by.is_not(None), photo.c.claim_expires_at >= now
            )
        )
        or 0
    )


def review_queue_size(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                photo.c.status == NEEDS_REVIEW, photo.c.reviewed_breed.is_(None)
            )
        )
        or 0
    )


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
        .where(photo.c.status == NEEDS_REVIEW, photo.c.reviewed_breed.is_(None))
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


def recent_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    rows = session.execute(select(run).order_by(run.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


def _typed(column: Any, value: str) -> Any:
    try:
        if column.type.python_type is int:
            return int(value)
    except (NotImplementedError, ValueError):
        pass
    return value
