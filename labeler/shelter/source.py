"""The association's photo source: a table or view named in settings, reflected at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Table, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.types import NullType

from labeler.config.settings import Settings


class SourceError(Exception):
    """The configured source table, view or columns do not exist or do not fit."""


@dataclass(frozen=True)
class Source:
    table: Table
    id_column: str
    image_column: str
    filter_column: str | None = None
    filter_values: tuple[str, ...] = ()
    writeback_breed_column: str | None = None
    writeback_confidence_column: str | None = None
    group_column: str | None = None  # the animal a photo belongs to
    context_columns: tuple[str, ...] = ()
    change_column: str | None = None  # changes when a photo is replaced under the same id

    @property
    def name(self) -> str:
        """Which table and id column rows come from: recorded on each row, compared each pass."""
        return f"{self.table.fullname}.{self.id_column}"[:255]

    @property
    def group(self) -> Column[Any] | None:
        return self.table.c[self.group_column] if self.group_column else None

    @property
    def change(self) -> Column[Any] | None:
        return self.table.c[self.change_column] if self.change_column else None

    @property
    def id(self) -> Column[Any]:
        return self.table.c[self.id_column]

    @property
    def image(self) -> Column[Any]:
        return self.table.c[self.image_column]

    def id_value(self, photo_id: str) -> Any:
        """Turn the labeler's text id back into the source column's own type, so lookups use
        the source's primary-key index instead of casting every row."""
        try:
            python_type = self.id.type.python_type
        except NotImplementedError:
            return photo_id
        if python_type is int:
            return int(photo_id)
        return photo_id


def reflect_table(conn: Connection, qualified_name: str, role: str, env: str) -> Table:
    """Reflect a configured ``[schema.]name`` table or view; ``role`` and ``env`` name it in
    the error (e.g. "source", LABELER_SOURCE_TABLE)."""
    schema, _, name = qualified_name.rpartition(".")
    inspector = inspect(conn)
    names = set(inspector.get_table_names(schema=schema or None)) | set(
        inspector.get_view_names(schema=schema or None)
    )
    if conn.dialect.name == "postgresql":
        # A materialized view is a common stable, cheap snapshot to hand a service.
        names |= set(inspector.get_materialized_view_names(schema=schema or None))
    if name not in names:
        raise SourceError(f"{role} table or view {qualified_name!r} does not exist ({env})")
    try:
        return Table(name, MetaData(), schema=schema or None, autoload_with=conn)
    except NoSuchTableError as exc:
        raise SourceError(f"{role} table {qualified_name!r} cannot be read") from exc


def check_image_column(column: Column[Any], dialect: Dialect) -> None:
    """Photos are read from text (paths, URLs, base64) or binary columns only; any other type
    (JSON, arrays, large-object ids) is refused here, once, instead of failing every row."""
    if dialect.name == "sqlite" and isinstance(column.type, NullType):
        return  # a SQLite column declared without a type holds whatever was stored
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = None
    if python_type in (str, bytes):
        return
    try:
        shown = column.type.compile(dialect=dialect)
    except Exception:
        shown = str(column.type)
    raise SourceError(
        f"LABELER_SOURCE_IMAGE_COLUMN={column.name!r} is of type {shown}, which labeler cannot "
        "read photos from: use a text column (file paths, URLs, base64) or a binary one "
        "(bytea, BLOB), for example through a view that casts it"
    )


def reflect_source(conn: Connection, settings: Settings) -> Source:
    """Reflect the configured table or view and check that every named column exists."""
    table = reflect_table(conn, settings.source_table, "source", "LABELER_SOURCE_TABLE")

    wanted = {
        "LABELER_SOURCE_ID_COLUMN": settings.source_id_column,
        "LABELER_SOURCE_IMAGE_COLUMN": settings.source_image_column,
        "LABELER_SOURCE_FILTER_COLUMN": settings.source_filter_column,
        "LABELER_WRITEBACK_BREED_COLUMN": settings.writeback_breed_column,
        "LABELER_WRITEBACK_CONFIDENCE_COLUMN": settings.writeback_confidence_column,
        "LABELER_SOURCE_GROUP_COLUMN": settings.source_group_column,
        "LABELER_SOURCE_CHANGE_COLUMN": settings.source_change_column,
    }
    for env, column in [*wanted.items()] + [
        ("LABELER_CONTEXT_COLUMNS", c) for c in settings.context_columns
    ]:
        if column is not None and column not in table.c:
            raise SourceError(
                f"{env}={column!r}: no such column in {settings.source_table!r} "
                f"(it has {', '.join(sorted(table.c.keys()))})"
            )
    check_image_column(table.c[settings.source_image_column], conn.dialect)
    if settings.source_filter_column:
        check_filter_values(table.c[settings.source_filter_column], settings.source_filter_values)
    return Source(
        table=table,
        id_column=settings.source_id_column,
        image_column=settings.source_image_column,
        filter_column=settings.source_filter_column,
        filter_values=tuple(settings.source_filter_values),
        writeback_breed_column=settings.writeback_breed_column,
        writeback_confidence_column=settings.writeback_confidence_column,
        group_column=settings.source_group_column,
        context_columns=tuple(settings.context_columns),
        change_column=settings.source_change_column,
    )


# --- filter values must fit the filter column -------------------------------------------------


def check_filter_values(column: Column[Any], values: list[str]) -> None:
    """Refuse filter values the reflected column cannot hold: they would never match (a pass
    that silently labels nothing) or make the server reject the query on every pass."""
    where = "LABELER_SOURCE_FILTER_VALUES does not fit "
    where += f"LABELER_SOURCE_FILTER_COLUMN={column.name!r}"
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return  # a type SQLAlchemy cannot map: leave the comparison to the server
    if python_type is bool:
        raise SourceError(f"{where}: a boolean column cannot be matched against text values")
    for value in values:
        if python_type is int:
            try:
                int(value)
            except ValueError:
                raise SourceError(f"{where} ({column.type}): {value!r} is not an integer") from None
        elif python_type in (float, Decimal):
            try:
                float(value)
            except ValueError:
                raise SourceError(f"{where} ({column.type}): {value!r} is not a number") from None
        elif python_type is str:
            length = getattr(column.type, "length", None)
            if length is not None and len(value) > length:
                raise SourceError(
                    f"{where} ({column.type}): {value!r} is longer than the column's "
                    f"{length} characters"
                )
        else:
            raise SourceError(
                f"{where}: its type {column.type} is not text or a number "
                "(filter on a text or integer column, or through a view)"
            )
