"""Finding the source's photos and keeping labeler's rows in line with the source: new photos
registered as pending (with their animal), the rows discovery refuses, the source a database
was read from, photos replaced under the same id set back to pending, and the sweep that
turns vanished photos ``gone`` and follows merged animals. Reads the shelter's source, writes
only labeler's own tables. Functions take a session and never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import String as SAString
from sqlalchemy.orm import Session

from labeler.shelter.source import Source
from labeler.store.animals import insert_ignoring_duplicates, mark_groups_pending
from labeler.store.keys import (
    chunks,
    id_text,
    source_filter,
)
from labeler.store.schema import (
    FAILED,
    GONE,
    ID_LENGTH,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    group,
    photo,
)
from labeler.store.source_rows import change_marker


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
    insert = insert_ignoring_duplicates(session).from_select(names, query)
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
    insert = insert_ignoring_duplicates(session, group, "group_id").from_select(
        ["group_id", "status", "discovered_at", "updated_at"], missing
    )
    session.execute(insert)


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
