"""Finding a row by labeler's text id: the key comparisons every statement shares.

Labeler keeps every id as text; the source's and the target's keys have their own types and
collations. These build the WHERE clauses that find exactly the row an id names (its index
used, and byte for byte for text keys on every server), and the source's filter. Expressions
only: nothing here runs a statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    cast,
    collate,
    false,
    type_coerce,
)
from sqlalchemy import String as SAString
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from labeler.shelter.source import Source
from labeler.store.schema import exact_collation


def source_filter(source: Source, *, staff_breed: bool = True) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if source.filter_column and source.filter_values:
        column = source.table.c[source.filter_column]
        conditions.append(column.in_([typed_value(column, v) for v in source.filter_values]))
    if source.writeback_breed_column and staff_breed:
        # A breed already typed into the association's own column means a human named it.
        conditions.append(source.table.c[source.writeback_breed_column].is_(None))
    return conditions


def id_text(session: Session, value: Any) -> ColumnElement[Any]:
    """A source value as the text of labeler's id columns, compared byte for byte: on MariaDB
    in a binary no-pad collation whatever the source column's (an explicit COLLATE also
    avoids "Illegal mix of collations" against a case-insensitive source column)."""
    dialect = session.get_bind().dialect
    if dialect.name in ("mysql", "mariadb"):
        return collate(cast(value, mysql.CHAR(charset="utf8mb4")), exact_collation(dialect))
    return cast(value, SAString())


def is_text(column: Any) -> bool:
    try:
        return column.type.python_type is str
    except NotImplementedError:
        return False


def exact_text(session: Session, column: Any) -> ColumnElement[Any]:
    """A text key as compared byte for byte, whatever the column's own collation: MariaDB's
    default collation, PostgreSQL's citext or a nondeterministic collation, and SQLite's
    COLLATE NOCASE would all match 'Rex-1' for 'rex-1' (and MariaDB 'Rex-1 ' too)."""
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        return id_text(session, column)
    if dialect == "postgresql":
        return collate(cast(column, Text()), "C")
    return collate(column, "BINARY")  # SQLite: an explicit COLLATE wins over the column's


def source_key_values(session: Session, source: Source, photo_id: str) -> list[Any]:
    """The values to look labeler's text id up by in the source's id column: the id in the
    column's own type (the key's index is used), none when it cannot be (the row can no
    longer be there). SQLite stores each value with its own type whatever the column's
    affinity: an INTEGER column may hold '12abc' or 1.5, and an untyped one 1 beside '1'.
    There the text itself is looked up (the column's affinity converts it as it converted the
    stored value), with its integer and real readings for a column without affinity; the
    caller keeps only rows whose id reads back as exactly this text."""
    if session.get_bind().dialect.name == "sqlite":
        values: list[Any] = [photo_id]
        with suppress(ValueError):
            values.append(int(photo_id))
        try:
            number = float(photo_id)
        except ValueError:
            pass
        else:
            if number == number and number not in values:  # NaN matches nothing
                values.append(number)
        return values
    try:
        return [source.id_value(photo_id)]
    except ValueError:
        return []


def key_column(session: Session, column: Any) -> Any:
    """The key column for comparisons against :func:`source_key_values`: on SQLite its
    values are bound as they are (text, integer or real), never converted by the column's
    SQLAlchemy type first."""
    if session.get_bind().dialect.name == "sqlite":
        return type_coerce(column, NullType())
    return column


def same_source_key(session: Session, source: Source, photo_id: str) -> list[ColumnElement[bool]]:
    """The source row whose id is exactly labeler's ``photo_id`` (see :func:`same_key`)."""
    values = source_key_values(session, source, photo_id)
    if not values:
        return [false()]
    return same_keys(session, source.id, values, [photo_id])


def same_key(session: Session, column: Any, value: Any, text: str) -> list[ColumnElement[bool]]:
    """The source (or target) row whose key is exactly labeler's id ``text``: the plain
    comparison (it uses the key's index), and for a text key the exact one too."""
    conditions: list[ColumnElement[bool]] = [column == value]
    if is_text(column):
        conditions.append(exact_text(session, column) == text)
    return conditions


def same_keys(
    session: Session, column: Any, values: Sequence[Any], texts: Sequence[str]
) -> list[ColumnElement[bool]]:
    """:func:`same_key` for many keys at once (``values[i]`` is ``texts[i]`` as typed)."""
    conditions: list[ColumnElement[bool]] = [key_column(session, column).in_(list(values))]
    if is_text(column):
        conditions.append(exact_text(session, column).in_(list(texts)))
    return conditions


CHUNK = 500


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def typed_value(column: Any, value: str) -> Any:
    """A configured filter value in the column's type: an integer column compares with ints."""
    try:
        if column.type.python_type is int:
            return int(value)
    except (NotImplementedError, ValueError):
        pass
    return value
