"""Every distinct source id (and group value) is its own labeler row on every server, or is
refused loudly at discovery (issue 10): ids that differ only in letter case or a trailing
space stay apart on MariaDB, and ids longer than labeler's columns are never cut into one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from labeler import migrate
from labeler.app import Service
from labeler.cli import main
from labeler.db import make_engine
from labeler.schema import group, photo, run
from labeler.settings import Settings
from labeler.source import reflect_source
from labeler.store import SqlStore
from tests.helpers import png_bytes

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC).replace(tzinfo=None)
PREFIX = "a" * 255

# id -> group value
FITTING = {
    "Rex-1": "Pet-A",
    "rex-1": "pet-a",  # letter case only
    "REX-1": "Pet-A",
    "Rex-1 ": "Pet-A ",  # a trailing space only
    "Bär": "Pet-Ä",
    "BÄR": "Pet-ä",
    PREFIX: "Pet-A",  # exactly as long as the column
}
LONG_IDS = {PREFIX + "x": "Pet-A", PREFIX + "y": "Pet-A"}  # share a 255-character prefix
LONG_GROUPS = {"G-1": "p" * 300, "G-2": "p" * 299}


def _create_source(url: str, exotic: bool = False) -> None:
    """A source whose text id column is not unique and, on MariaDB, has the server's default
    case-insensitive collation. ``exotic``: on MariaDB a latin1 table (a charset other than
    labeler's), on PostgreSQL a case-insensitive (nondeterministic ICU) collation."""
    engine = create_engine(url)
    options, collate = "", ""
    if engine.dialect.name == "mysql":
        charset = "latin1 COLLATE latin1_swedish_ci" if exotic else "utf8mb4 COLLATE "
        options = " DEFAULT CHARSET " + (charset if exotic else charset + "utf8mb4_general_ci")
    rows = {**FITTING, **LONG_IDS, **LONG_GROUPS}
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql" and exotic:
            conn.execute(
                text(
                    "CREATE COLLATION pets_ci (provider = icu, locale = 'und-u-ks-level2', "
                    "deterministic = false)"
                )
            )
            collate = ' COLLATE "pets_ci"'
        conn.execute(
            text(
                f"CREATE TABLE pets (id VARCHAR(300){collate} NOT NULL, "
                f"pet VARCHAR(300){collate}, species VARCHAR(8), photo VARCHAR(400)){options}"
            )
        )
        conn.execute(
            text("INSERT INTO pets (id, pet, species, photo) VALUES (:i, :p, 'dog', :v)"),
            [{"i": i, "p": p, "v": f"value of [{i}]"} for i, p in rows.items()],
        )
    engine.dispose()


def _store(url: str, grouped: bool = True) -> tuple[SqlStore, Any]:
    settings = Settings(
        database_url=url,
        source_table="pets",
        source_id_column="id",
        source_image_column="photo",
        source_group_column="pet" if grouped else None,
    )
    engine = make_engine(settings)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        source = reflect_source(conn, settings)
    return SqlStore(engine, source), engine


def _discover_twice(url: str, caplog: pytest.LogCaptureFixture) -> tuple[SqlStore, Any, int]:
    store, engine = _store(url)
    run_id = store.start_run(command="run-once", worker="test", model_version="v1", now=NOW)
    with caplog.at_level(logging.WARNING, logger="labeler.pass"):
        found = store.discover(run_id, NOW)
        assert store.discover(run_id, NOW) == 0  # nothing new the second time, nothing merged
    assert found == len(FITTING)
    return store, engine, run_id


def test_each_distinct_id_is_its_own_row_or_refused_loudly(
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _create_source(db_url)
    store, engine, run_id = _discover_twice(db_url, caplog)
    with engine.connect() as conn:
        rows = {r.photo_id: r.group_id for r in conn.execute(select(photo))}
        groups = set(conn.execute(select(group.c.group_id)).scalars())
        errors = conn.execute(select(run.c.errors).where(run.c.id == run_id)).scalar_one()
    assert rows == FITTING  # byte for byte: case, trailing space and length all kept
    assert groups == set(FITTING.values())

    # The refused rows are counted and reported, in the log and in the run (`status`).
    assert "2 source rows have an id longer than 255 characters" in errors
    assert "LABELER_SOURCE_ID_COLUMN" in errors
    assert "2 source rows have a group value longer than 255 characters" in errors
    assert "LABELER_SOURCE_GROUP_COLUMN" in errors
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("id longer than 255" in w for w in warnings), warnings

    # The run's own errors at its end do not wipe the note (finish_run keeps it).
    finished = store.finish_run(run_id, status="finished", now=NOW, errors="1x other problem")
    assert "id longer than 255" in finished["errors"]
    assert "other problem" in finished["errors"]
    monkeypatch.setenv("LABELER_DATABASE_URL", db_url)
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "2 source rows have an id longer than 255 characters" in capsys.readouterr().out

    # Each id reads its own source row, even where the source column ignores case.
    read = store.fetch_rows(list(FITTING))
    assert {pid: r.image for pid, r in read.items()} == {i: f"value of [{i}]" for i in FITTING}
    assert {pid: r.group_id for pid, r in read.items()} == FITTING
    engine.dispose()


def test_ids_from_a_source_in_another_charset_or_collation(
    server_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MariaDB: a latin1 source; PostgreSQL: a case-insensitive collation on the source's id
    and group columns. No "Illegal mix of collations", and still one row per distinct id."""
    _create_source(server_db_url, exotic=True)
    store, engine, _ = _discover_twice(server_db_url, caplog)
    with engine.connect() as conn:
        assert dict(conn.execute(select(photo.c.photo_id, photo.c.group_id)).all()) == FITTING
        if engine.dialect.name == "mysql":
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name, collation_name "
                    "FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND column_name IN ('photo_id', 'group_id') "
                    "AND table_name IN ('labeler_photo', 'labeler_group')"
                )
            ).all()
            assert len(columns) == 3
            assert {c[2] for c in columns} == {"utf8mb4_nopad_bin"}, columns
    read = store.fetch_rows(list(FITTING))
    assert {pid: r.image for pid, r in read.items()} == {i: f"value of [{i}]" for i in FITTING}
    engine.dispose()


def test_without_a_group_column_only_long_ids_are_refused(db_url: str) -> None:
    _create_source(db_url)
    store, engine = _store(db_url, grouped=False)
    run_id = store.start_run(command="run-once", worker="test", model_version="v1", now=NOW)
    assert store.discover(run_id, NOW) == len(FITTING) + len(LONG_GROUPS)
    with engine.connect() as conn:
        ids = set(conn.execute(select(photo.c.photo_id)).scalars())
        errors = conn.execute(select(run.c.errors).where(run.c.id == run_id)).scalar_one()
    assert ids == set(FITTING) | set(LONG_GROUPS)
    assert errors == (
        "2 source rows have an id longer than 255 characters (LABELER_SOURCE_ID_COLUMN id): "
        "they are not labelled"
    )
    engine.dispose()


def test_write_back_reaches_only_the_row_with_exactly_that_id(
    db_url: str, tiny_artifact: Path
) -> None:
    """Photo-mode write-back on a case-insensitive source column (MariaDB's default): the
    breed for 'rex-1' must not land on 'Rex-1'."""
    engine = create_engine(db_url)
    blob = {"postgresql": "BYTEA", "mysql": "LONGBLOB"}.get(engine.dialect.name, "BLOB")
    colours = {"Rex-1": (230, 20, 20), "rex-1": (20, 20, 230)}
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE pets (id VARCHAR(50) NOT NULL, photo {blob}, "
                "breed VARCHAR(128), breed_confidence FLOAT)"
            )
        )
        conn.execute(
            text("INSERT INTO pets (id, photo) VALUES (:i, :p)"),
            [{"i": i, "p": png_bytes(c)} for i, c in colours.items()],
        )
    engine.dispose()
    service = Service.build(
        Settings(
            database_url=db_url,
            source_table="pets",
            source_image_column="photo",
            writeback_breed_column="breed",
            writeback_confidence_column="breed_confidence",
            model_dir=tiny_artifact,
            review_threshold=0.0,
            review_margin=0.0,
            audit_share=0.0,
        )
    )
    migrate.upgrade(service.engine)
    assert service.run_pass().status == "finished"
    with service.engine.connect() as conn:
        labelled = dict(conn.execute(select(photo.c.photo_id, photo.c.breed)).all())
        written = dict(conn.execute(text("SELECT id, breed FROM pets")).all())
    assert set(labelled) == set(colours)
    assert len(set(labelled.values())) == 2, labelled  # two different answers to tell apart
    assert written == labelled
    service.engine.dispose()
