"""Reading the shelter's source: the claimed photos' rows (image value, animal, context and
change marker, the size limit checked by the server), and the counts and probes ``check``
and the write-back need. Nothing here writes. Values are bound parameters; the only names in
SQL text are the validated identifiers of the configured source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    Numeric,
    Text,
    Time,
    case,
    cast,
    func,
    literal,
    null,
    select,
)
from sqlalchemy import String as SAString
from sqlalchemy.orm import Session

from labeler.core.domain import SourceRow
from labeler.core.textsafe import storable
from labeler.shelter.source import Source
from labeler.store.engine import BINARY_RESULTS
from labeler.store.keys import (
    id_text,
    is_text,
    same_keys,
    source_filter,
    source_key_values,
    typed_value,
)
from labeler.store.schema import (
    ID_LENGTH,
)


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
        labeler.photos.stored counts it: the limit itself for bytes; for text, base64 (4
        characters per 3 bytes, plus line breaks every 76 characters and a data: header) or
        hex (2 per byte). ``auto`` may find base64, so it allows base64's length."""
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


def filter_matches(session: Session, source: Source) -> tuple[bool, bool]:
    """(the source has a row, a row passes LABELER_SOURCE_FILTER_*): two LIMIT 1 probes."""
    first = select(literal(1)).select_from(source.table).limit(1)
    has_rows = session.scalar(first) is not None
    if not (source.filter_column and source.filter_values):
        return has_rows, has_rows
    column = source.table.c[source.filter_column]
    wanted = column.in_([typed_value(column, v) for v in source.filter_values])
    return has_rows, session.scalar(first.where(wanted)) is not None


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
