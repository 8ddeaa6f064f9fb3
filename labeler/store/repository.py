"""The statements labeler runs against its own tables, and its reads of the shelter's source.
(Elsewhere: every write to the shelter's tables in ``shelter_sql``, the key comparisons in
``keys``, the per-connection SQLite pragmas in ``engine``, schema changes in ``migrations/``
through Alembic, reflection of the source in ``labeler.shelter.source``, and the demo's sample
shelter in ``labeler.demo.shelter``.) Functions take a session and never commit: the caller
frames the transaction. All values are bound parameters; the only names in SQL text are the
validated identifiers of the configured source."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Insert,
    Integer,
    LargeBinary,
    Numeric,
    Text,
    Time,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy import String as SAString
from sqlalchemy import Table as SATable
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from labeler.core.domain import Outcome, Prediction, RunStatus, SaveCounts, SourceRow
from labeler.decide.decision import CalibratedThreshold
from labeler.decide.thresholds import VersionCounts
from labeler.shelter.source import Source
from labeler.store.engine import BINARY_RESULTS, is_transient, short_error
from labeler.store.keys import (
    chunks,
    id_text,
    is_text,
    same_keys,
    source_filter,
    source_key_values,
    typed_value,
)
from labeler.store.schema import (
    FAILED,
    GONE,
    ID_LENGTH,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    STATUSES,
    group,
    photo,
    run,
    threshold,
)
from labeler.store.shelter_sql import write_source_breed

ERROR_MAX = 1000


def storable(text: str | None, limit: int) -> str | None:
    """Text every server accepts: no NUL or other control characters (PostgreSQL rejects NUL;
    they only hide things from reviewers), at most ``limit`` characters."""
    if text is None:
        return None
    clean = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n" else ch
        for ch in str(text)
    )
    return clean[:limit]


# --- discovery --------------------------------------------------------------------------------


def _char_length(session: Session, text: ColumnElement[Any]) -> ColumnElement[int]:
    if session.get_bind().dialect.name == "sqlite":
        return func.length(text)  # characters for text; SQLite has no char_length
    return func.char_length(text)


def _ids_fit(session: Session, source: Source) -> tuple[ColumnElement[bool], ...]:
    """The row's id (and group value) fit labeler's id columns: longer ones are never cut
    (two ids sharing a 255-character prefix would become one row)."""
    fits = [_char_length(session, id_text(session, source.id)) <= ID_LENGTH]
    if source.group is not None:
        fits.append(_char_length(session, id_text(session, source.group)) <= ID_LENGTH)
    return tuple(fits)


@dataclass(frozen=True)
class RefusedIds:
    """Source rows discovery leaves out because an id does not fit labeler's columns."""

    long_ids: int = 0
    long_groups: int = 0

    def message(self, source: Source) -> str | None:
        parts = []
        if self.long_ids:
            parts.append(
                f"{self.long_ids} source rows have an id longer than {ID_LENGTH} characters "
                f"(LABELER_SOURCE_ID_COLUMN {source.id_column})"
            )
        if self.long_groups:
            parts.append(
                f"{self.long_groups} source rows have a group value longer than {ID_LENGTH} "
                f"characters (LABELER_SOURCE_GROUP_COLUMN {source.group_column})"
            )
        if not parts:
            return None
        return "; ".join(parts) + ": they are not labelled"


def refused_ids(session: Session, source: Source) -> RefusedIds:
    """Count the rows the filter matches whose id or group value is too long to register."""
    base = [source.id.is_not(None), *source_filter(source)]
    if source.group is not None:
        base.append(source.group.is_not(None))
    too_long = _char_length(session, id_text(session, source.id)) > ID_LENGTH
    group_long: ColumnElement[bool] = literal(False)
    if source.group is not None:
        group_long = _char_length(session, id_text(session, source.group)) > ID_LENGTH
    fits = and_(~too_long, ~group_long)
    # One scan: rows that fit are counted out cheaply, the rest split by what is too long.
    long_ids, long_groups = session.execute(
        select(
            func.sum(case((too_long, 1), else_=0)),
            func.sum(case((and_(~too_long, group_long), 1), else_=0)),
        ).where(*base, ~fits)
    ).one()
    return RefusedIds(int(long_ids or 0), int(long_groups or 0))


def discover(session: Session, source: Source, now: datetime) -> int:
    """Register every source photo the labeler has not seen yet as pending.

    One INSERT ... SELECT on the server: nothing is streamed through Python, and concurrent
    labelers racing on the same new rows are absorbed by the primary key. With a group column,
    photos without an animal are not registered (there is no record to give a breed to), and
    every new animal gets its labeler_group row. Ids and group values compare exactly (letter
    case included) on every server; rows whose id or group value is longer than labeler's
    columns are left out, never cut (see :func:`refused_ids`, which counts them).
    """
    photo_id = id_text(session, source.id)
    already = exists().where(photo.c.photo_id == photo_id)
    columns: list[Any] = [
        photo_id,
        literal(PENDING, SAString(16)),
        literal(now),
        literal(now),
        literal(source.name, SAString(255)),
    ]
    names = ["photo_id", "status", "discovered_at", "updated_at", "source_name"]
    conditions = [~already, source.id.is_not(None), *_ids_fit(session, source)]
    conditions += source_filter(source)
    if source.group is not None:
        columns.append(id_text(session, source.group))
        names.append("group_id")
        conditions.append(source.group.is_not(None))
    query = select(*columns).where(*conditions)
    insert = _insert_ignoring_duplicates(session).from_select(names, query)
    result = session.execute(insert, execution_options={"preserve_rowcount": True})
    found = max(int(result.rowcount or 0), 0)  # type: ignore[attr-defined]
    if source.group is not None:
        ensure_groups(session, now)
    return found


def ensure_groups(session: Session, now: datetime) -> None:
    """A labeler_group row for every animal that has a photo row."""
    missing = (
        select(
            photo.c.group_id,
            literal(PENDING, SAString(16)),
            literal(now),
            literal(now),
        )
        .where(
            photo.c.group_id.is_not(None),
            ~exists().where(group.c.group_id == photo.c.group_id),
        )
        .distinct()
    )
    insert = _insert_ignoring_duplicates(session, group, "group_id").from_select(
        ["group_id", "status", "discovered_at", "updated_at"], missing
    )
    session.execute(insert)


def _insert_ignoring_duplicates(
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


# --- where rows come from ---------------------------------------------------------------------


def other_source(session: Session, source_name: str) -> str | None:
    """A source other than ``source_name`` that labeler_photo rows were read from, if any."""
    return session.scalar(
        select(photo.c.source_name)
        .where(photo.c.source_name.is_not(None), photo.c.source_name != source_name)
        .limit(1)
    )


def adopt_source(session: Session, source_name: str) -> None:
    """Rows from before the source was recorded came from the configured source."""
    session.execute(
        update(photo).where(photo.c.source_name.is_(None)).values(source_name=source_name)
    )


def reset_source(session: Session, source_name: str) -> int:
    """Forget the photo rows read from any other source (their ids mean nothing in the new
    one). Per-animal results, written values and staff decisions in labeler_group stay."""
    result = session.execute(
        delete(photo).where(or_(photo.c.source_name.is_(None), photo.c.source_name != source_name))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- claims -----------------------------------------------------------------------------------


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


def fetch_images(session: Session, source: Source, photo_ids: Sequence[str]) -> dict[str, Any]:
    """The image values of the claimed photos, keyed by the labeler's text id."""
    return {pid: row.image for pid, row in fetch_rows(session, source, photo_ids).items()}


@dataclass(frozen=True)
class ImageLimit:
    """LABELER_MAX_IMAGE_BYTES in the form the database can check before a value is read."""

    max_bytes: int
    kind: str = "auto"  # LABELER_IMAGE_KIND: how much stored text one photo byte takes

    def stored_max(self) -> int:
        """The longest stored value that can still hold a photo within the limit, as
        labeler.photos.fetching counts it: the limit itself for bytes; for text, base64 (4
        characters
        per 3 bytes, plus line breaks every 76 characters and a data: header) or hex (2 per
        byte). ``auto`` may find base64, so it allows base64's length."""
        if self.kind == "bytes":
            return self.max_bytes
        per_3_bytes = 6 if self.kind == "hex" else 4
        text = (self.max_bytes + 3) * per_3_bytes // 3 + 4
        return text + text // 38 + 1024

    def reason(self, size: int) -> str:
        limit = f"over the limit of {_mb(self.max_bytes)} (LABELER_MAX_IMAGE_BYTES)"
        if self.kind == "bytes":
            return f"photo is {_mb(size)}, {limit}"
        if self.kind == "base64":
            return f"photo is about {_mb(size * 3 // 4)} ({_mb(size)} of base64 text), {limit}"
        if self.kind == "hex":
            return f"photo is about {_mb(size // 2)} ({_mb(size)} of hex text), {limit}"
        return f"photo value is {_mb(size)} as stored, {limit} even if it is base64 text"


def _mb(size: int) -> str:
    if size < 100_000:
        return f"{size} bytes"
    return f"{size / 1_000_000:.1f} MB"


def _stored_size(session: Session, value: ColumnElement[Any]) -> ColumnElement[int]:
    """The value's length in bytes, computed by the server (the value is not sent)."""
    if session.get_bind().dialect.name == "sqlite":
        # length() of a BLOB is read from its header; of text it counts characters, so text
        # is measured as bytes (a copy): base64 and hex columns hold text.
        return case(
            (func.typeof(value) == "blob", func.length(value)),
            else_=func.length(cast(value, LargeBinary)),
        )
    return func.octet_length(value)


def fetch_rows(
    session: Session,
    source: Source,
    photo_ids: Sequence[str],
    limit: ImageLimit | None = None,
) -> dict[str, SourceRow]:
    """The claimed photos as they are now, keyed by the labeler's text id.

    The filter is applied again: a row missing from the answer vanished or stopped matching
    (a dog re-filed as a cat), and is `gone`. With a ``limit``, the server measures each
    image value and sends only those within it, in the same statement (no race with a value
    growing in between): a larger one comes back as a row with no image and an ``error``
    saying its size, so a batch never holds more than batch size x the limit.

    Each row is keyed by its id as discovery wrote it, and matched exactly: a source id
    column that ignores letter case would also answer 'Rex-1' for 'rex-1'. A group value
    that grew longer than labeler's columns since discovery fails the photo (never cut)."""
    values = [v for pid in photo_ids for v in source_key_values(session, source, pid)]
    if not values:
        return {}
    size: ColumnElement[Any] = null()
    image: ColumnElement[Any] = source.image
    if limit is not None:
        size = _stored_size(session, source.image)
        image = case((size <= limit.stored_max(), source.image), else_=None)
    columns: list[Any] = [id_text(session, source.id), image, size]
    if source.group is not None:
        columns.append(id_text(session, source.group))
    columns += [_as_text(session, source.table.c[c]) for c in source.context_columns]
    if source.change is not None:
        columns.append(change_marker(session, source.change))
    conditions = same_keys(session, source.id, values, list(photo_ids))
    conditions += source_filter(source, staff_breed=False)
    if source.group is not None:
        conditions.append(source.group.is_not(None))
    wanted = set(photo_ids)
    out: dict[str, SourceRow] = {}
    statement = select(*columns).where(*conditions).execution_options(**{BINARY_RESULTS: True})
    for row in session.execute(statement):
        key = str(row[0])
        if key not in wanted:
            continue  # another id that the server's own comparison took for this one
        group_id = str(row[3]) if source.group is not None else None
        error = None
        if limit is not None and row[2] is not None and int(row[2]) > limit.stored_max():
            error = limit.reason(int(row[2]))
        if group_id is not None and len(group_id) > ID_LENGTH:
            error, group_id = long_group_reason(source, len(group_id)), None
        context = None
        first = 4 if source.group is not None else 3
        if source.context_columns:
            parts = [
                f"{name}: {value}"
                for name, value in zip(
                    source.context_columns,
                    row[first : first + len(source.context_columns)],
                    strict=True,
                )
                if value is not None
            ]
            context = storable("; ".join(parts), 1000)
        marker = str(row[-1]) if source.change is not None else None
        out.setdefault(key, SourceRow(row[1], group_id, context, error, marker))
    return out


# A marker as stored: 'v:' and the value's text, or NO_MARKER for SQL NULL, so that NULL in
# labeler_photo.change_marker only ever means "not recorded yet".
NO_MARKER = "-"
_MARKER_TEXT = 253


def change_marker(session: Session, column: Any) -> ColumnElement[Any]:
    """LABELER_SOURCE_CHANGE_COLUMN's value as labeler_photo.change_marker holds it, computed
    by the server: the same text whether it is read with a photo or compared in bulk."""
    text_value = func.substr(id_text(session, column), 1, _MARKER_TEXT, type_=SAString())
    return func.coalesce(
        literal("v:", SAString(2)) + text_value, literal(NO_MARKER, SAString(1)), type_=SAString()
    )


_DONE = (LABELLED, NEEDS_REVIEW, FAILED)
CHANGED_REASON = "the photo changed in the source since it was read (LABELER_SOURCE_CHANGE_COLUMN)"


def requeue_changed(session: Session, source: Source, now: datetime) -> tuple[int, int]:
    """Set back to pending every photo whose change marker differs from the one read when it
    was classified (a photo replaced under the same id): one scan of the source's id and
    marker, each row looking up its labeler_photo row by primary key; no photo is read.
    Photos staff decided are left alone. A row without a recorded marker (labelled before
    the setting was set) records the current one. Returns (set back, recorded)."""
    change = source.change
    if change is None:
        return 0, 0
    marker = change_marker(session, change)
    rows = session.execute(
        select(photo.c.photo_id, photo.c.change_marker, marker)
        .select_from(source.table)
        .join(photo, photo.c.photo_id == id_text(session, source.id))
        .where(
            photo.c.status.in_(_DONE),
            photo.c.reviewed_breed.is_(None),
            photo.c.claimed_by.is_(None),
            or_(photo.c.change_marker.is_(None), photo.c.change_marker != marker),
            *source_filter(source, staff_breed=False),
        )
    ).all()
    changed = sorted({str(r[0]) for r in rows if r[1] is not None})
    unrecorded = {str(r[0]): str(r[2]) for r in rows if r[1] is None}
    for chunk in chunks(changed):
        session.execute(
            update(photo)
            .where(
                photo.c.photo_id.in_(list(chunk)),
                photo.c.status.in_(_DONE),
                photo.c.reviewed_breed.is_(None),
                photo.c.claimed_by.is_(None),
            )
            .values(
                status=PENDING,
                attempts=0,
                last_error=CHANGED_REASON,
                updated_at=now,
            )
        )
    if unrecorded:
        session.execute(
            update(photo)
            .where(photo.c.photo_id == bindparam("w_photo_id"), photo.c.change_marker.is_(None))
            .values(change_marker=bindparam("v_marker")),
            [{"w_photo_id": k, "v_marker": v} for k, v in unrecorded.items()],
        )
    return len(changed), len(unrecorded)


# Photos the sweep compares with the source: every photo labeler has an answer or a verdict
# for. Pending ones are read with the filter when they are labelled, and claimed ones are
# saved by their pass (both follow the source there).
_SWEPT = (*_DONE, REVIEWED, GONE)
VANISHED_REASON = "the source row vanished or no longer matches the filter"
BACK_REASON = "the photo is back in the source (matching the filter again): labelled again"


@dataclass(frozen=True)
class Swept:
    """What :func:`sweep_source` changed."""

    gone: int = 0  # photos whose source row vanished or stopped matching the filter
    moved: int = 0  # photos whose group value changed (animals merged, a photo re-filed)
    back: int = 0  # gone photos found in the source again, set back to pending
    groups: tuple[str, ...] = ()  # animals to decide again


def sweep_source(session: Session, source: Source, now: datetime) -> Swept:
    """Bring photos labeler already answered in line with the source without reading a single
    photo value: one scan of the source's ids (and group values), against labeler's own rows.

    A photo whose row vanished (deleted, its animal deleted) or no longer matches the filter
    becomes ``gone``; a photo whose group value changed (two animals merged: the photos move to
    the one that stays) takes its new group_id, its scores kept (same photo, same bytes); a
    ``gone`` photo found in the source again is set back to pending. The animals concerned are
    decided again (:func:`mark_groups_pending` leaves the ones a person decided alone). A
    photo staff reviewed keeps its status, and a claimed one is left to the pass saving it.

    Labeler's rows are read first: a photo discovered and labelled by another labeler after
    that read is not in it, so it cannot be taken for one that vanished."""
    ours: dict[str, tuple[str | None, str]] = {
        str(pid): (None if gid is None else str(gid), str(status))
        for pid, gid, status in session.execute(
            select(photo.c.photo_id, photo.c.group_id, photo.c.status).where(
                photo.c.status.in_(_SWEPT),
                photo.c.reviewed_breed.is_(None),
                photo.c.claimed_by.is_(None),
            )
        )
    }
    if not ours:
        return Swept()
    columns: list[Any] = [id_text(session, source.id)]
    # The rows fetch_rows would return: the filter, and an animal to give the breed to.
    conditions = [source.id.is_not(None), *source_filter(source, staff_breed=False)]
    if source.group is not None:
        columns.append(id_text(session, source.group))
        conditions.append(source.group.is_not(None))
    moved: dict[str, tuple[str | None, str]] = {}
    back: list[str] = []
    statement = select(*columns).where(*conditions).execution_options(yield_per=10_000)
    for row in session.execute(statement):
        key = str(row[0])
        entry = ours.pop(key, None)
        if entry is None:
            continue  # new (discovery's), pending, claimed, or read twice by a view
        old_group, status = entry
        if status == GONE:
            back.append(key)
        elif source.group is not None:
            new_group = str(row[1])
            # A group value too long for labeler's columns is never cut (fetch_rows fails
            # such a photo when it is labelled again).
            if new_group != old_group and len(new_group) <= ID_LENGTH:
                moved[key] = (old_group, new_group)
    vanished = sorted(k for k, (_, status) in ours.items() if status in _DONE)
    free = (photo.c.reviewed_breed.is_(None), photo.c.claimed_by.is_(None))
    for chunk in chunks(vanished):
        session.execute(
            update(photo)
            .where(photo.c.photo_id.in_(list(chunk)), photo.c.status.in_(_DONE), *free)
            .values(status=GONE, last_error=VANISHED_REASON, updated_at=now)
        )
    for chunk in chunks(sorted(back)):
        session.execute(
            update(photo)
            .where(photo.c.photo_id.in_(list(chunk)), photo.c.status == GONE, *free)
            .values(status=PENDING, attempts=0, last_error=BACK_REASON, updated_at=now)
        )
    if moved:
        session.execute(
            update(photo)
            .where(
                photo.c.photo_id == bindparam("w_photo_id"),
                photo.c.group_id.is_not_distinct_from(bindparam("w_group_id")),
                photo.c.status != PENDING,  # executemany: no IN list
                *free,
            )
            .values(group_id=bindparam("v_group_id"), updated_at=now),
            [
                {"w_photo_id": k, "w_group_id": old, "v_group_id": new}
                for k, (old, new) in sorted(moved.items())
            ],
        )
    touched = {ours[k][0] for k in vanished} | {g for pair in moved.values() for g in pair}
    groups = tuple(sorted(g for g in touched if g is not None))
    if groups:
        mark_groups_pending(session, groups, now)
    return Swept(len(vanished), len(moved), len(back), groups)


def _as_text(session: Session, column: Any) -> ColumnElement[Any]:
    """A context column of a text-like or unknown type as text, on PostgreSQL: read in binary,
    a type psycopg has no binary loader for (an enum, citext) would come back as bytes.
    Numbers, booleans and dates keep the form they have on the other servers."""
    if session.get_bind().dialect.name == "postgresql" and not isinstance(
        column.type, _BINARY_SAFE
    ):
        return cast(column, Text)
    return column


_BINARY_SAFE = (Integer, Numeric, Boolean, Date, DateTime, Time)


def long_group_reason(source: Source, length: int) -> str:
    """Why a photo whose group value no longer fits labeler's columns is not labelled (the
    same limit discovery refuses such rows by, see :class:`RefusedIds`)."""
    return (
        f"its group value is {length} characters, longer than {ID_LENGTH} "
        f"(LABELER_SOURCE_GROUP_COLUMN {source.group_column}): not labelled"
    )


# --- results ----------------------------------------------------------------------------------


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

    Each UPDATE is guarded by the claim token, by ``reviewed_breed IS NULL`` and by a status
    other than ``reviewed``: a result for a row whose claim was lost, or that staff reviewed
    meanwhile (with or without a reviewed breed), changes nothing. The batch is first saved
    with one statement per shape of result (:func:`_save_at_once`); when that cannot account
    for every row, each row is saved inside its own SAVEPOINT: a permanent database error on
    one row (a value its column cannot hold, a write-back the source refuses) fails that row
    with the database's reason and the rest of the batch is saved. Connection-level errors
    propagate, for the caller to retry.
    """
    outcomes = list(outcomes)
    counts = {LABELLED: 0, NEEDS_REVIEW: 0, FAILED: 0, GONE: 0, "lost": 0}
    before: dict[str, str | None] = {}
    if source.group is not None and outcomes:
        before = {
            pid: gid
            for pid, gid in session.execute(
                select(photo.c.photo_id, photo.c.group_id).where(
                    photo.c.photo_id.in_([o.photo_id for o in outcomes])
                )
            )
        }
    touched: set[str] = set()
    outcomes = [_fitting_group(source, o) for o in outcomes]
    statuses = None
    if not source.writeback_breed_column:
        statuses = _save_at_once(session, token, run_id, model_version, outcomes, now)
    if statuses is None:
        statuses = [
            _save_refusable(session, source, token, run_id, model_version, outcome, now)
            for outcome in outcomes
        ]
    for outcome, saved in zip(outcomes, statuses, strict=True):
        counts[saved] += 1
        if saved != "lost":
            touched.update(g for g in (before.get(outcome.photo_id), outcome.group_id) if g)
    if touched:
        mark_groups_pending(session, touched, now)
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
    return SaveCounts(
        counts[LABELLED],
        counts[NEEDS_REVIEW],
        counts[FAILED],
        counts["lost"],
        counts[GONE],
        tuple(sorted(touched)),
    )


def _fitting_group(source: Source, outcome: Outcome) -> Outcome:
    """The outcome, or its failure when the group value is longer than labeler's columns:
    cut, it could become another animal's id (:func:`fetch_rows` already fails such rows)."""
    if outcome.group_id is None or len(outcome.group_id) <= ID_LENGTH:
        return outcome
    reason = long_group_reason(source, len(outcome.group_id))
    return Outcome(outcome.photo_id, FAILED, error=reason, photo_ref=outcome.photo_ref)


# A batch's rows saved by one statement share these: (bound columns, computed columns).
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


def _save_at_once(
    session: Session,
    token: str,
    run_id: int,
    model_version: str,
    outcomes: Sequence[Outcome],
    now: datetime,
) -> list[str] | None:
    """Save the batch in one SAVEPOINT with one executemany per shape of result: a few round
    trips instead of three per row (SAVEPOINT, UPDATE, RELEASE), which is most of a pass's
    database time. None (nothing saved) when some row was refused or not updated (its claim
    lost, staff reviewed it): the row-by-row path then finds which, and why."""
    if len(outcomes) < 2 or not session.get_bind().dialect.supports_sane_multi_rowcount:
        return None
    # Rows with the same columns share one statement; values the database computes
    # (attempts + 1) are part of the statement, the rest are bound per row.
    shapes: dict[_Shape, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for outcome in outcomes:
        values = _result_values(outcome, run_id, model_version, now)
        computed = {k: v for k, v in values.items() if isinstance(v, ColumnElement)}
        bound = tuple(sorted(k for k in values if k not in computed))
        row = {"w_photo_id": outcome.photo_id, **{f"v_{k}": values[k] for k in bound}}
        shapes.setdefault((bound, tuple(sorted(computed))), (computed, []))[1].append(row)
    try:
        with session.begin_nested() as savepoint:
            updated = 0
            for (bound, _), (computed, rows) in shapes.items():
                new_values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in bound} | computed
                statement = (
                    update(photo)
                    .where(*_still_ours(bindparam("w_photo_id"), token))
                    .values(new_values)
                )
                result = session.execute(statement, rows)
                updated += int(result.rowcount or 0)  # type: ignore[attr-defined]
            if updated != len(outcomes):
                savepoint.rollback()
                return None
    except StatementError as exc:
        if is_transient(exc):
            raise
        return None  # the savepoint is rolled back; row by row names the refused row
    return [o.status for o in outcomes]


def _still_ours(photo_id: Any, token: str) -> tuple[ColumnElement[bool], ...]:
    """A result is saved only while the claim holds and staff have not reviewed the row."""
    return (
        photo.c.photo_id == photo_id,
        photo.c.claimed_by == token,
        photo.c.reviewed_breed.is_(None),
        photo.c.status != REVIEWED,
    )


def _save_refusable(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcome: Outcome,
    now: datetime,
) -> str:
    """One row in its own SAVEPOINT; a permanent error fails the row with the reason."""
    try:
        with session.begin_nested():
            return _save_one(session, source, token, run_id, model_version, outcome, now)
    except StatementError as exc:
        if is_transient(exc):
            raise
        refused = Outcome(
            outcome.photo_id,
            FAILED,
            error=f"the database refused this row's result: {short_error(exc)}",
            photo_ref=outcome.photo_ref,
        )
        with session.begin_nested():
            return _save_one(session, source, token, run_id, model_version, refused, now)


def _save_one(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcome: Outcome,
    now: datetime,
) -> str:
    values = _result_values(outcome, run_id, model_version, now)
    previous_breed = None
    if source.writeback_breed_column and outcome.status == LABELLED:
        previous_breed = session.scalar(
            select(photo.c.breed).where(photo.c.photo_id == outcome.photo_id)
        )
    result = session.execute(
        update(photo).where(*_still_ours(outcome.photo_id, token)).values(**values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return "lost"
    if outcome.status == LABELLED and outcome.prediction is not None:
        write_source_breed(session, source, outcome, previous_breed)
    return outcome.status


def _result_values(
    outcome: Outcome, run_id: int, model_version: str, now: datetime
) -> dict[str, Any]:
    """The photo row's new values for this outcome (the claim is given back)."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "claimed_by": None,
        "claim_expires_at": None,
        "run_id": run_id,
        "updated_at": now,
    }
    if outcome.photo_ref is not None:
        values["photo_ref"] = storable(outcome.photo_ref, 1024)
    if outcome.group_id is not None:
        # Exactly as read, like discovery: cleaned or cut, it would name another animal.
        values["group_id"] = outcome.group_id
    if outcome.context is not None:
        values["context"] = outcome.context
    if outcome.change_marker is not None:
        values["change_marker"] = outcome.change_marker[:255]
    if outcome.status == FAILED:
        values["attempts"] = photo.c.attempts + 1
        values["last_error"] = storable(outcome.error or "unknown error", ERROR_MAX)
    elif outcome.status == GONE:
        # Not a failure: nothing to retry, and nothing for staff to review.
        values["last_error"] = storable(outcome.error, ERROR_MAX)
    else:
        assert outcome.prediction is not None
        values.update(_prediction_columns(outcome.prediction))
        values.update(
            model_version=storable(model_version, 128),
            labelled_at=now,
            attempts=0,
            last_error=None,
            review_reason=storable(outcome.error, 255) or None,
            audit=int(outcome.audit),
            scores=outcome.scores,
            fingerprint=outcome.fingerprint,
        )
    return values


def _prediction_columns(prediction: Prediction) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    names = (("breed", "confidence"), ("breed_2", "confidence_2"), ("breed_3", "confidence_3"))
    for i, (breed_col, conf_col) in enumerate(names):
        if i < len(prediction.candidates):
            label, probability = prediction.candidates[i]
            columns[breed_col], columns[conf_col] = storable(label, 128), float(probability)
        else:
            columns[breed_col], columns[conf_col] = None, None
    return columns


# --- runs -------------------------------------------------------------------------------------


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


def add_run_error(session: Session, run_id: int, message: str) -> None:
    """Note a problem on the run while it goes on (kept when the run finishes)."""
    before = session.scalar(select(run.c.errors).where(run.c.id == run_id))
    text = "\n".join(t for t in (before, message) if t)
    session.execute(update(run).where(run.c.id == run_id).values(errors=storable(text, 4000)))


def finish_run(
    session: Session, run_id: int, *, status: str, now: datetime, errors: str | None
) -> dict[str, Any]:
    noted = session.scalar(select(run.c.errors).where(run.c.id == run_id))  # add_run_error
    if noted == ABANDONED_NOTE:  # a slow pass taken for dead: its own end replaces the note
        noted = None
    text = "\n".join(t for t in (noted, errors) if t)
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(status=status, finished_at=now, errors=storable(text, 4000) if text else None)
    )
    return dict(session.execute(select(run).where(run.c.id == run_id)).mappings().one())


# --- relabelling ------------------------------------------------------------------------------


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


# --- status -----------------------------------------------------------------------------------


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
    """Items waiting for staff: photos without an animal, and animals."""
    photos = session.scalar(
        select(func.count()).where(
            photo.c.status == NEEDS_REVIEW,
            photo.c.reviewed_breed.is_(None),
            photo.c.group_id.is_(None),
        )
    )
    animals = session.scalar(
        select(func.count()).where(group.c.status == NEEDS_REVIEW, _waiting_for_staff())
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
    waiting = and_(in_review, _waiting_for_staff())

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


def recent_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    rows = session.execute(select(run).order_by(run.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


# --- audits, measured precision, calibrated thresholds ----------------------------------------
# (owned by the "trust" work: labeler.decide.audit, labeler.decide.thresholds, `labeler calibrate`)

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
    """Per model version: rows decided, auto-labelled, audited, doubtful, and staff's verdicts
    on the audits and the doubtful rows (auto-labels staff corrected are not a fair sample)."""
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
    with the model version and its stored top three."""
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
            photo.c.reviewed_breed,
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


def group_decided_rows(session: Session) -> list[dict[str, Any]]:
    """Every animal a model version decided, with staff's decision if any (for ``status``)."""
    rows = session.execute(
        select(
            group.c.model_version,
            group.c.breed,
            group.c.audit,
            group.c.review_reason,
            group.c.reviewed_breed,
            group.c.refused_breed,
            group.c.staff_values,
            group.c.written_values,
        ).where(
            group.c.status.in_(_DECIDED_STATUSES),
            group.c.model_version.is_not(None),
            group.c.breed.is_not(None),
        )
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


# --- runs left behind by a killed pass; the health ping ---------------------------------------

ABANDONED = RunStatus.ABANDONED.value
ABANDONED_NOTE = (
    "abandoned: the pass stopped without recording its end (killed, or the machine went "
    "down); the counts are what it had saved"
)


def abandon_dead_runs(session: Session, *, now: datetime, claim_ttl: timedelta) -> list[int]:
    """Mark ``running`` runs whose process is gone as ``abandoned``; return their ids.

    A live pass always holds claims (``<host>:<pid>:<token>``; ``<host>:<pid>`` starts the
    run's ``worker``, which may go on with a space and the runtime) that it renews batch by
    batch, or has saved a result within one claim TTL. So a run is taken for dead when none of
    its worker's claims is still valid and neither its start nor its last saved result is more
    recent than ``now - claim_ttl``. Its counts stay as saved batch by batch; ``finished_at``
    becomes its last sign of life. Should a very slow live pass be caught by mistake, its own
    ``finish_run`` later overwrites the status, so nothing is lost.
    """
    horizon = now - claim_ttl
    candidates = session.execute(
        select(run.c.id, run.c.worker, run.c.started_at).where(
            run.c.status == RunStatus.RUNNING.value, run.c.started_at < horizon
        )
    ).all()
    abandoned: list[int] = []
    for run_id, worker, started_at in candidates:
        claim_prefix = str(worker).split(" ", 1)[0] + ":"
        live_claims = session.scalar(
            select(func.count()).where(
                photo.c.claimed_by.startswith(claim_prefix, autoescape=True),
                photo.c.claim_expires_at >= now,
            )
        )
        if live_claims:
            continue
        last_saved = session.scalar(
            select(func.max(photo.c.updated_at)).where(photo.c.run_id == run_id)
        )
        last_seen = max(started_at, last_saved) if last_saved is not None else started_at
        if last_seen >= horizon:
            continue
        result = session.execute(
            update(run)
            .where(run.c.id == run_id, run.c.status == RunStatus.RUNNING.value)
            .values(status=ABANDONED, finished_at=last_seen, errors=ABANDONED_NOTE)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            abandoned.append(int(run_id))
    return abandoned


def ping(session: Session) -> None:
    """The cheapest statement that proves the database answers."""
    session.execute(select(literal(1)))


def filter_matches(session: Session, source: Source) -> tuple[bool, bool]:
    """(the source has a row, a row passes LABELER_SOURCE_FILTER_*): two LIMIT 1 probes."""
    first = select(literal(1)).select_from(source.table).limit(1)
    has_rows = session.scalar(first) is not None
    if not (source.filter_column and source.filter_values):
        return has_rows, has_rows
    column = source.table.c[source.filter_column]
    wanted = column.in_([typed_value(column, v) for v in source.filter_values])
    return has_rows, session.scalar(first.where(wanted)) is not None


# --- animals, the write-back target, `labeler check` ------------------------------------------


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
            session.execute(_insert_ignoring_duplicates(session, group, "group_id"), new)
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


def _waiting_for_staff() -> ColumnElement[bool]:
    """No reviewed breed, or only one labeler refused and staff have not changed since (the
    per-animal review view's condition)."""
    return or_(group.c.reviewed_breed.is_(None), group.c.reviewed_breed == group.c.refused_breed)


def open_groups(session: Session, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Animals no person has decided yet, in key order from ``after``: their target rows are
    checked for a breed staff set in their own UI (also after a refused reviewed breed)."""
    query = select(group.c.group_id, group.c.written_values).where(
        group.c.status.in_([PENDING, LABELLED, NEEDS_REVIEW, FAILED]),
        group.c.staff_values.is_(None),
        _waiting_for_staff(),
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


def written_group_count(session: Session) -> int:
    """How many animals labeler has written a breed for."""
    return int(
        session.scalar(
            select(func.count()).select_from(group).where(group.c.written_values.is_not(None))
        )
        or 0
    )


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


def count_source_rows(session: Session, source: Source) -> tuple[int, int | None]:
    """Rows the filter matches, and (for a text filter) how many match ignoring letter case:
    MariaDB's default collation ignores case, PostgreSQL and SQLite do not."""
    conditions = [source.id.is_not(None), *source_filter(source, staff_breed=False)]
    if source.group is not None:
        conditions.append(source.group.is_not(None))
    exact = int(session.scalar(select(func.count()).where(*conditions)) or 0)
    if not (source.filter_column and source.filter_values):
        return exact, None
    column = source.table.c[source.filter_column]
    if not is_text(column):
        return exact, None
    folded = func.lower(cast(column, SAString(255))).in_([v.lower() for v in source.filter_values])
    others = [source.id.is_not(None)]
    if source.group is not None:
        others.append(source.group.is_not(None))
    loose = int(session.scalar(select(func.count()).where(folded, *others)) or 0)
    return exact, loose


def some_group_key(session: Session, source: Source) -> str | None:
    """One animal the source would label, to try the write-back on."""
    if source.group is None:
        return None
    value = session.scalar(
        select(source.group)
        .where(source.group.is_not(None), *source_filter(source, staff_breed=False))
        .limit(1)
    )
    return None if value is None else str(value)


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
    from sqlalchemy import column as sa_column
    from sqlalchemy import table as sa_table

    from labeler.store.schema import GROUP_REVIEW_VIEW

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


def filter_value_counts(session: Session, source: Source) -> dict[str, int]:
    """Rows per distinct filter value that matches a configured value ignoring letter case,
    each spelled as stored (compared byte for byte, whatever the server's collation)."""
    if not (source.filter_column and source.filter_values):
        return {}
    column = source.table.c[source.filter_column]
    as_text = cast(column, SAString(255))
    key: Any = as_text
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        # MariaDB's default collation would fold 'Dog' and 'dog' into one group.
        key = cast(column, LargeBinary)
    rows = session.execute(
        select(key, func.count())
        .where(func.lower(as_text).in_([v.lower() for v in source.filter_values]))
        .group_by(key)
    )
    out: dict[str, int] = {}
    for value, count in rows:
        text_value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        out[text_value] = out.get(text_value, 0) + int(count)
    return out
