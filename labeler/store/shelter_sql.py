"""Every statement that writes to the shelter's own tables, and nothing else.

This is the code that touches someone else's data, kept small enough to review line by line:
the per-photo write-back into the source, the breed written on the animal's record (one
statement, guarded by what the record holds, at most one record changed, the configured
stamps beside it), the lock timeout around those writes, and the trial writes and counts
`labeler check` runs (inside transactions it rolls back). Functions take a session and never
commit; values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from labeler.core.domain import Outcome
from labeler.shelter.breedmap import value_text
from labeler.shelter.source import Source
from labeler.shelter.target import STAMP_INCREMENT, STAMP_NOW, TargetValueError
from labeler.store.keys import chunks, same_key, same_keys, same_source_key, source_filter


def as_text(value: object) -> str | None:
    """A target value as the breed map writes it, for comparisons in Python; None stays."""
    return None if value is None else value_text(value)


def write_source_breed(
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
    same_row = same_source_key(session, source, outcome.photo_id)
    session.execute(update(source.table).where(*same_row, untouched).values(**values))


def read_targets(
    session: Session, target: Any, group_ids: Sequence[str]
) -> dict[str, dict[str, str | None]]:
    """The target rows' current breed values as text, keyed by group id."""
    by_key: dict[Any, str] = {}
    for gid in group_ids:
        try:
            by_key[target.key_value(gid)] = gid
        except TargetValueError:
            continue
    out: dict[str, dict[str, str | None]] = {}
    columns = [target.table.c[c] for c in target.columns]
    for chunk in chunks(list(by_key)):
        same = same_keys(session, target.key, chunk, [by_key[k] for k in chunk])
        rows = session.execute(select(target.key, *columns).where(*same))
        for row in rows:
            gid = by_key.get(row[0], as_text(row[0]) or "")
            out[gid] = {c: as_text(v) for c, v in zip(target.columns, row[1:], strict=True)}
    return out


class NotOneRecord(ValueError):
    """A write-back statement matched more than one record: the target key is not unique."""


def one_record(
    session: Session, target: Any, group_id: str, statement: Any, *, nested: bool = True
) -> int:
    """Run an UPDATE meant for one record; more than one matched is undone and refused.

    A key that is not unique (a view over a join, a column staff thought was an id) would
    otherwise put one animal's breed on several records. The savepoint puts them back even if
    a caller goes on with the transaction.
    """
    savepoint = session.begin_nested() if nested else None
    try:
        result = session.execute(statement, execution_options={"preserve_rowcount": True})
    except Exception:
        # Back to before the statement, so a caller may record why and go on (PostgreSQL
        # refuses any statement after an error until then).
        if savepoint is not None and savepoint.is_active:
            savepoint.rollback()
        raise
    changed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if changed > 1:
        if savepoint is not None:
            savepoint.rollback()
        raise NotOneRecord(
            f"{changed} {target.table.name} records have {target.key_column} = {group_id!r}: "
            "LABELER_TARGET_KEY_COLUMN must name a unique key of LABELER_TARGET_TABLE; "
            "nothing was written"
        )
    if savepoint is not None:
        savepoint.commit()
    return changed


def write_target(
    session: Session,
    target: Any,
    group_id: str,
    values: Mapping[str, str | None],
    last_written: Mapping[str, str] | None,
) -> int:
    """Set the breed on the animal's record, in ONE statement guarded by what the record holds:
    exactly what labeler wrote last (``last_written``), or the undecided values when labeler
    has nothing on the record. 0: someone else decided (a person who set the record back to
    the undecided values after labeler's write decided too). Changes at most one record
    (:class:`NotOneRecord` otherwise)."""
    table = target.table
    expected = target.typed(last_written) if last_written else target.typed(target.undecided)
    statement = (
        update(table)
        .where(*same_key(session, target.key, target.key_value(group_id), group_id))
        .where(and_(*[table.c[c] == v for c, v in expected.items()]))
        .values(**target.typed(values), **stamp_values(target))
    )
    return one_record(session, target, group_id, statement)


def stamp_values(target: Any) -> dict[str, Any]:
    """LABELER_TARGET_STAMP as SET clauses: the database's own clock for `now` (a function,
    not a time labeler formats), the column plus one for `increment`, bound values otherwise.
    Only columns the guard never compares, so a stamp cannot look like a staff change."""
    out: dict[str, Any] = {}
    for name, value in target.typed_stamps().items():
        column = target.table.c[name]
        if value == STAMP_NOW:
            out[name] = func.current_timestamp()
        elif value == STAMP_INCREMENT:
            out[name] = func.coalesce(column, 0) + 1
        else:
            # Text for a date or number column goes as text: the database converts it.
            kind = None if isinstance(value, str) else column.type
            out[name] = bindparam(f"stamp_{name}", value, type_=kind)
    return out


@contextmanager
def lock_timeout(session: Session, seconds: int | None) -> Iterator[None]:
    """Within this block, a statement that waits longer than ``seconds`` for a lock another
    session holds fails instead of waiting; after it, the setting is put back, so the rest of
    the transaction waits as usual (PostgreSQL: a transaction-local setting; MariaDB: the
    session's). A block that fails leaves it to the transaction's end (PostgreSQL) or puts it
    back (MariaDB). SQLite locks the whole database at BEGIN: its busy timeout is set there,
    see :data:`labeler.store.engine.BUSY_TIMEOUT_MS`."""
    dialect = session.get_bind().dialect.name
    if seconds is None or dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    if dialect == "postgresql":
        # is_local: ends with the transaction at the latest, also when the transaction fails.
        before = session.scalar(select(func.current_setting("lock_timeout")))
        session.execute(select(func.set_config("lock_timeout", f"{int(seconds) * 1000}", True)))
        yield
        session.execute(select(func.set_config("lock_timeout", str(before), True)))
        return
    before = session.scalar(text("SELECT @@SESSION.innodb_lock_wait_timeout"))
    session.execute(
        text("SET SESSION innodb_lock_wait_timeout = :seconds"), {"seconds": int(seconds)}
    )
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        try:
            session.execute(
                text("SET SESSION innodb_lock_wait_timeout = :seconds"),
                {"seconds": int(before or 50)},
            )
        except Exception:
            # The connection itself went away: the original error says why; a new
            # connection starts with the server's default.
            if not failed:
                raise


def duplicate_target_key(session: Session, target: Any) -> tuple[Any, int] | None:
    """A key value that more than one target record holds, with its count; None if unique."""
    key = target.key
    row = session.execute(
        select(key, func.count().label("n"))
        .where(key.is_not(None))
        .group_by(key)
        .having(func.count() > 1)
        .limit(1)
    ).first()
    return None if row is None else (row[0], int(row[1]))


def undecided_record_count(session: Session, target: Any) -> int:
    """How many target records hold the undecided values (LABELER_TARGET_UNDECIDED)."""
    table = target.table
    undecided = target.typed(target.undecided)
    if not undecided:
        return 0
    return int(
        session.scalar(
            select(func.count())
            .select_from(table)
            .where(*[table.c[c] == v for c, v in undecided.items()])
        )
        or 0
    )


def try_source_write_back(session: Session, source: Source) -> str | None:
    """The per-photo write-back statement on one source row, for `labeler check` (which rolls
    it back); the id of the row it was tried on, or None when the source has no row."""
    if not source.writeback_breed_column:
        return None
    photo_id = session.scalar(select(source.id).where(*source_filter(source)).limit(1))
    if photo_id is None:
        return None
    values: dict[str, Any] = {source.writeback_breed_column: "beagle"}
    if source.writeback_confidence_column:
        values[source.writeback_confidence_column] = 0.5
    key = str(photo_id)
    session.execute(
        update(source.table).where(*same_source_key(session, source, key)).values(**values)
    )
    return key


def try_write_target(
    session: Session, target: Any, group_id: str, values: Mapping[str, str]
) -> int:
    """The write-back statement on one record, for `labeler check` (which rolls it back)."""
    statement = (
        update(target.table)
        .where(*same_key(session, target.key, target.key_value(group_id), group_id))
        .values(**target.typed(values), **stamp_values(target))
    )
    return one_record(session, target, group_id, statement, nested=False)
