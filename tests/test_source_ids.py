"""Every distinct source id (and group value) is its own labeler row on every server, or is
refused loudly at discovery: ids that differ only in letter case or a trailing
space stay apart on MariaDB, and ids longer than labeler's columns are never cut into one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy.orm import Session

from labeler.config.settings import Settings
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.shelter.source import reflect_source, reflect_table
from labeler.shelter.target import Target
from labeler.store import migrate, shelter_sql
from labeler.store.engine import make_engine
from labeler.store.schema import group, photo, run
from labeler.store.seam import SqlStore
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


# Key columns that ignore letter case, per server: SQLite's COLLATE NOCASE, PostgreSQL's
# citext and a nondeterministic ICU collation, MariaDB's default collation (and a latin1 one).
CASE_BLIND = [
    ("sqlite", "nocase"),
    ("postgresql", "icu"),
    ("postgresql", "citext"),
    ("mariadb", None),
    ("mariadb", "latin1"),
]


def _key_type(conn: Any, collation: str | None, length: int = 300) -> str:
    """The column type of a text key under ``collation`` (creating what it needs)."""
    if collation == "citext":
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS citext"))
        return "CITEXT"
    if collation == "icu":
        conn.execute(
            text(
                "CREATE COLLATION IF NOT EXISTS pets_ci (provider = icu, "
                "locale = 'und-u-ks-level2', deterministic = false)"
            )
        )
        return f'VARCHAR({length}) COLLATE "pets_ci"'
    if collation == "nocase":
        return f"VARCHAR({length}) COLLATE NOCASE"
    return f"VARCHAR({length})"


def _table_options(engine: Any, collation: str | None) -> str:
    """MariaDB: the server's default case-insensitive collation, or a latin1 table."""
    if engine.dialect.name != "mysql":
        return ""
    if collation == "latin1":
        return " DEFAULT CHARSET latin1 COLLATE latin1_swedish_ci"
    return " DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_general_ci"


def _create_source(url: str, collation: str | None = None) -> None:
    """A source whose text id column is not unique and, on MariaDB, has the server's default
    case-insensitive collation; ``collation`` makes its id and group columns ignore case
    (see CASE_BLIND)."""
    engine = create_engine(url)
    rows = {**FITTING, **LONG_IDS, **LONG_GROUPS}
    with engine.begin() as conn:
        key = _key_type(conn, collation)
        conn.execute(
            text(
                f"CREATE TABLE pets (id {key} NOT NULL, pet {key}, species VARCHAR(8), "
                f"photo VARCHAR(400)){_table_options(engine, collation)}"
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


@pytest.mark.parametrize(("db_url", "collation"), CASE_BLIND, indirect=["db_url"])
def test_ids_from_a_source_in_another_charset_or_collation(
    db_url: str, collation: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Source id and group columns that ignore letter case (or, on MariaDB, a latin1 table):
    no "Illegal mix of collations", still one row per distinct id, and reading one id by its
    key brings back that row only, not the ones equal to it in the column's collation."""
    _create_source(db_url, collation)
    store, engine, _ = _discover_twice(db_url, caplog)
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
    for one in ("rex-1", "Rex-1", "Rex-1 ", "BÄR"):
        read = store.fetch_rows([one])
        assert {pid: (r.image, r.group_id) for pid, r in read.items()} == {
            one: (f"value of [{one}]", FITTING[one])
        }
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


@pytest.mark.parametrize(
    ("db_url", "collation"),
    [("sqlite", None), ("postgresql", None), *CASE_BLIND],
    indirect=["db_url"],
)
def test_write_back_reaches_only_the_row_with_exactly_that_id(
    db_url: str, collation: str | None, tiny_artifact: Path
) -> None:
    """Photo-mode write-back on a source id column that ignores letter case (MariaDB's
    default, SQLite NOCASE, PostgreSQL citext or a nondeterministic collation): the breed for
    'rex-1' must not land on 'Rex-1'."""
    engine = create_engine(db_url)
    blob = {"postgresql": "BYTEA", "mysql": "LONGBLOB"}.get(engine.dialect.name, "BLOB")
    colours = {"Rex-1": (230, 20, 20), "rex-1": (20, 20, 230)}
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE pets (id {_key_type(conn, collation, 50)} NOT NULL, "
                f"photo {blob}, breed VARCHAR(128), breed_confidence FLOAT)"
                + _table_options(engine, collation)
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


# --- the animal's record: the write-back key -------------------------------------------------

TARGET_KEYS = {"Ab1": "Unknown", "ab1": "Unknown", "ab1 ": "Unknown", "AB1": "Poodle"}


def _target(url: str, collation: str | None) -> tuple[Any, Target]:
    """A shelter record table whose key column ignores letter case (and, on MariaDB, trailing
    spaces), with labeler's write-back target on it: breed 'Unknown' means undecided."""
    engine = create_engine(url)
    with engine.begin() as conn:
        key = _key_type(conn, collation, 50)
        conn.execute(
            text(
                f"CREATE TABLE animal (k {key} NOT NULL, breed VARCHAR(40))"
                + _table_options(engine, collation)
            )
        )
        conn.execute(
            text("INSERT INTO animal (k, breed) VALUES (:k, :b)"),
            [{"k": k, "b": b} for k, b in TARGET_KEYS.items()],
        )
        table = reflect_table(conn, "animal", "target", "LABELER_TARGET_TABLE")
    target = Target(
        table=table,
        key_column="k",
        columns=("breed",),
        undecided={"breed": "Unknown"},
        lookup=lambda label: {"breed": label},
    )
    return engine, target


def _records(engine: Any) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT k, breed FROM animal")).all())


@pytest.mark.parametrize(("db_url", "collation"), CASE_BLIND, indirect=["db_url"])
def test_write_back_to_the_record_matches_its_key_exactly(
    db_url: str, collation: str | None
) -> None:
    """Animals 'Ab1' and 'ab1' are two records: labeler's breed for one never reaches the
    other (nor 'ab1 ', nor 'AB1'), and reading a record back reads that record only."""
    engine, target = _target(db_url, collation)
    with Session(engine) as session, session.begin():
        assert shelter_sql.write_target(session, target, "ab1", {"breed": "Beagle"}, None) == 1
    assert _records(engine) == {**TARGET_KEYS, "ab1": "Beagle"}
    with Session(engine) as session, session.begin():
        # Labeler's own earlier value is the guard: still exactly one record.
        earlier = {"breed": "Beagle"}
        assert shelter_sql.write_target(session, target, "ab1", {"breed": "Boxer"}, earlier)
        assert shelter_sql.write_target(session, target, "Ab1", {"breed": "Pug"}, None) == 1
        # 'aB1' is no animal: nothing is written, though the column's collation matches four.
        assert shelter_sql.write_target(session, target, "aB1", {"breed": "Pug"}, None) == 0
        assert shelter_sql.try_write_target(session, target, "aB1", {"breed": "Pug"}) == 0
    assert _records(engine) == {**TARGET_KEYS, "ab1": "Boxer", "Ab1": "Pug"}
    with Session(engine) as session:
        assert shelter_sql.read_targets(session, target, ["ab1", "AB1", "aB1"]) == {
            "ab1": {"breed": "Boxer"},
            "AB1": {"breed": "Poodle"},
        }
    with Session(engine) as session:
        # `labeler check`'s trial write (rolled back): one record, the one with that key.
        assert shelter_sql.try_write_target(session, target, "ab1 ", {"breed": "Pug"}) == 1
        session.rollback()
    engine.dispose()


# --- `labeler check`, and a group value that grows after discovery -----------------------------


def _check_line(capsys: pytest.CaptureFixture[str], name: str) -> str:
    capsys.readouterr()
    main(["check"])
    lines = [line for line in capsys.readouterr().out.splitlines() if f" {name}: " in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_check_counts_ids_too_long_to_label(
    db_url: str,
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`labeler check` warns, as discovery will, about ids and group values longer than
    labeler's columns: how many, the limit and the setting."""
    _create_source(db_url)
    _store(db_url)[1].dispose()  # migrated
    env = {
        "LABELER_DATABASE_URL": db_url,
        "LABELER_SOURCE_TABLE": "pets",
        "LABELER_SOURCE_ID_COLUMN": "id",
        "LABELER_SOURCE_IMAGE_COLUMN": "photo",
        "LABELER_SOURCE_GROUP_COLUMN": "pet",
        "LABELER_MODEL_DIR": str(tiny_artifact),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    line = _check_line(capsys, "source rows")
    assert line.startswith("ok    source rows: 11 source rows match the filter (warning"), line
    assert (
        "2 source rows have an id longer than 255 characters (LABELER_SOURCE_ID_COLUMN id)" in line
    )
    assert (
        "2 source rows have a group value longer than 255 characters "
        "(LABELER_SOURCE_GROUP_COLUMN pet)" in line
    ), line

    monkeypatch.delenv("LABELER_SOURCE_GROUP_COLUMN")
    line = _check_line(capsys, "source rows")
    assert "id longer than 255" in line and "group value" not in line, line

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM pets WHERE id IN :ids").bindparams(bindparam("ids", expanding=True)),
            {"ids": list(LONG_IDS)},
        )
    engine.dispose()
    line = _check_line(capsys, "source rows")
    assert line == "ok    source rows: 9 source rows match the filter", line


def test_a_group_value_grown_too_long_fails_its_photo_and_is_never_cut(
    server_db_url: str, tiny_artifact: Path
) -> None:
    """Staff lengthen an animal's id after discovery: its photo fails with the limit named,
    keeps its animal as discovered, and no animal with a cut id appears."""
    engine = create_engine(server_db_url)
    blob = "BYTEA" if engine.dialect.name == "postgresql" else "LONGBLOB"
    with engine.begin() as conn:
        conn.execute(
            text(f"CREATE TABLE pets (id VARCHAR(20) NOT NULL, pet VARCHAR(400), photo {blob})")
        )
        conn.execute(
            text("INSERT INTO pets (id, pet, photo) VALUES (:i, :p, :v)"),
            [
                {"i": "1", "p": "Pet-A", "v": png_bytes((230, 20, 20))},
                {"i": "2", "p": "Pet-B", "v": png_bytes((20, 20, 230))},
            ],
        )
    engine.dispose()
    settings = Settings(
        database_url=server_db_url,
        source_table="pets",
        source_id_column="id",
        source_image_column="photo",
        source_group_column="pet",
        model_dir=tiny_artifact,
        review_threshold=0.0,
        review_margin=0.0,
        audit_share=0.0,
    )
    service = Service.build(settings)
    migrate.upgrade(service.engine)
    store, store_engine = _store(server_db_url)
    run_id = store.start_run(command="run-once", worker="test", model_version="v1", now=NOW)
    assert store.discover(run_id, NOW) == 2
    with service.engine.begin() as conn:
        conn.execute(text("UPDATE pets SET pet = :p WHERE id = '2'"), {"p": "B" * 300})

    read = store.fetch_rows(["1", "2"])
    assert read["1"].group_id == "Pet-A" and read["1"].error is None
    assert read["2"].group_id is None
    reason = read["2"].error or ""
    assert "300 characters, longer than 255 (LABELER_SOURCE_GROUP_COLUMN pet)" in reason

    assert service.run_pass().status == "finished"
    with service.engine.connect() as conn:
        photos = {r.photo_id: r for r in conn.execute(select(photo))}
        groups = set(conn.execute(select(group.c.group_id)).scalars())
    assert photos["1"].status == "labelled"
    assert photos["2"].status == "failed" and photos["2"].last_error == reason
    assert photos["2"].group_id == "Pet-B"  # as discovered: never the cut "BBB..."
    assert groups == {"Pet-A", "Pet-B"}
    service.engine.dispose()
    store_engine.dispose()


# What an SQLite id column may hold whatever its declared type: each value keeps the type it
# was stored with ('007' becomes the integer 7 in an INTEGER column, '12abc' and 1.5 do not).
MIXED_IDS: list[Any] = [1, "12abc", 1.5, "007", -3]


@pytest.mark.parametrize("declared", ["INTEGER", "NUMERIC", ""])
def test_sqlite_ids_of_mixed_types_are_read_and_written_back(
    tmp_path: Path, tiny_artifact: Path, declared: str
) -> None:
    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE pets (id {declared}, photo BLOB, breed VARCHAR(64))"))
        conn.execute(
            text("INSERT INTO pets (id, photo) VALUES (:i, :v)"),
            [{"i": i, "v": png_bytes((30 * n, 200, 20))} for n, i in enumerate(MIXED_IDS)],
        )
        stored = list(conn.execute(text("SELECT CAST(id AS TEXT) FROM pets")).scalars())
    engine.dispose()
    settings = Settings(
        database_url=url,
        source_table="pets",
        source_id_column="id",
        source_image_column="photo",
        writeback_breed_column="breed",
        model_dir=tiny_artifact,
        review_threshold=0.0,
        review_margin=0.0,
        audit_share=0.0,
    )
    service = Service.build(settings)
    migrate.upgrade(service.engine)
    summary = service.run_pass()
    assert summary.status == "finished"
    assert summary.gone == 0
    with service.engine.connect() as conn:
        photos = {r.photo_id: r for r in conn.execute(select(photo))}
        written = {
            str(i): b for i, b in conn.execute(text("SELECT CAST(id AS TEXT), breed FROM pets"))
        }
    assert set(photos) == set(stored)
    assert {p: r.status for p, r in photos.items()} == dict.fromkeys(stored, "labelled")
    # The write-back reached each row, '12abc' and 1.5 included.
    assert written == {p: r.breed for p, r in photos.items()}
    service.engine.dispose()
