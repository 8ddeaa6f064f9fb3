"""Reading a batch's photos: PostgreSQL sends them (bytea) in binary, not as hex text, with
the values and the reviewer context the same either way; on SQLite the read takes no write
lock, so it neither waits for a writer nor holds one up."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from sqlalchemy import event, text

from labeler.config.settings import Settings
from labeler.shelter.source import reflect_source
from labeler.store import migrate, source_rows
from labeler.store.engine import make_engine
from labeler.store.seam import SqlStore
from tests.helpers import create_photos, png_bytes


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_photos_are_read_in_binary_and_context_as_text(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    photo = os.urandom(300_000) + b"\x00\xff"
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS citext"))
        conn.execute(text("CREATE TYPE sex AS ENUM ('male', 'female')"))
        conn.execute(
            text(
                "CREATE TABLE animals (id int PRIMARY KEY, pet text, photo bytea, name text, "
                "sex sex, born date, weight numeric(5, 1), vaccinated boolean, nick citext)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO animals VALUES (1, 'a', :p, 'Rex', 'male', '2020-03-01', 12.5, true, "
                "'Rexy'), (2, 'b', :p, NULL, NULL, NULL, NULL, NULL, NULL)"
            ),
            {"p": photo},
        )
    settings = Settings(
        database_url=db_url,
        source_table="animals",
        source_image_column="photo",
        source_group_column="pet",
        context_columns=["name", "sex", "born", "weight", "vaccinated", "nick"],
    )
    with engine.connect() as conn:
        source = reflect_source(conn, settings)
    formats: list[Any] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "photo" in statement and statement.lstrip().upper().startswith("SELECT"):
            result = cursor.pgresult
            formats.append({result.fformat(i) for i in range(result.nfields)})

    event.listen(engine, "after_cursor_execute", note)
    with engine.connect() as conn, conn.begin():
        from sqlalchemy.orm import Session

        rows = source_rows.fetch_rows(Session(bind=conn), source, ["1", "2"])
    assert formats == [{1}]  # every column in binary (libpq's format code 1)
    assert rows["1"].image == photo and rows["2"].image == photo
    assert (rows["1"].group_id, rows["2"].group_id) == ("a", "b")
    # As on the other servers: Python's form for numbers, booleans and dates; enum and citext
    # labels as text, not bytes.
    assert rows["1"].context == (
        "name: Rex; sex: male; born: 2020-03-01; weight: 12.5; vaccinated: True; nick: Rexy"
    )
    assert rows["2"].context is None or rows["2"].context == ""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reading_photos_on_sqlite_does_not_wait_for_a_writer(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    create_photos(engine, "bytes", ({"id": i, "photo": png_bytes((i, 9, 9))} for i in range(3)))
    settings = Settings(database_url=db_url, source_table="animals", source_image_column="photo")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        store = SqlStore(engine, reflect_source(conn, settings))
    rows: dict[str, Any] = {}
    with engine.connect() as writer:  # another labeler in the middle of a write
        writer.exec_driver_sql("UPDATE animals SET name = 'x' WHERE id = 0")
        reader = threading.Thread(target=lambda: rows.update(store.fetch_rows(["0", "1", "2"])))
        reader.start()
        reader.join(timeout=60)  # a read that took the write lock would wait for the commit
        held = reader.is_alive()
        writer.commit()
    reader.join(timeout=60)
    assert not held, "reading photos waited for another transaction's write lock"
    assert sorted(rows) == ["0", "1", "2"]
