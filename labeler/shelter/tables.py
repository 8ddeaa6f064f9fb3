"""Reads of the shelter's lookup tables beside the photo source (its breed table)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import column as sa_column
from sqlalchemy import select
from sqlalchemy import table as sa_table
from sqlalchemy.orm import Session

from labeler.core.identifiers import IDENTIFIER

BREED_TABLE_MAX_ROWS = 100_000


def breed_table_rows(session: Session, table_name: str, columns: Sequence[str]) -> list[tuple]:
    """The values of ``columns`` in every row of the shelter's breed lookup table.

    Names come from settings and are validated identifiers (``schema.table`` allowed); write
    them as the server reports them (PostgreSQL: lower case for ASM3's unquoted names).
    """
    schema, _, name = table_name.rpartition(".")
    for part in (name, *([schema] if schema else []), *columns):
        if not IDENTIFIER.match(part):
            raise ValueError(f"{part!r} is not a plain SQL identifier")
    lookup = sa_table(name, *(sa_column(c) for c in columns), schema=schema or None)
    rows = session.execute(select(*lookup.c).limit(BREED_TABLE_MAX_ROWS))
    return [tuple(r) for r in rows]
