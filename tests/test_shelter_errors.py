"""Permanent database errors are not outages: each fails only its row or its write, with the
database's reason, counts an attempt, and the rest of the pass is saved - on every server."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from labeler.config.settings import Settings
from labeler.service.app import Service
from labeler.store import migrate, reports
from labeler.store.schema import FAILED, LABELLED, PENDING, REVIEWED, group, photo
from tests.helpers import FULLFRAME, require
from tests.test_shelter_helpers import ScriptedModel

# Two pets per case, each with two photos of one breed folder.
FOLDERS = {
    1: "n02088364-beagle",
    2: "n02086240-Shih-Tzu",
    3: "n02099601-golden_retriever",  # mapped to a name longer than the column holds
    4: "n02111889-Samoyed",  # mapped to an id that is not a number
}
MAP = """label,breed_id,breed_name
beagle,19,Beagle
Shih-Tzu,188,Shih Tzu
golden_retriever,96,Golden Retriever of the Long Name
Samoyed,x176,Samoyed
"""
UNDECIDED = "breed_id=442,breed_name=Mixed Breed"


@dataclass
class Pets:
    url: str
    dialect: str
    files: dict[int, Path]  # photo id -> file
    service: Service


def _ddl(dialect: str) -> list[str]:
    photo_type = "LONGTEXT" if dialect == "mysql" else "TEXT"
    name_check = "" if dialect != "sqlite" else " CHECK (length(breed_name) <= 20)"
    return [
        f"CREATE TABLE pets (id INTEGER PRIMARY KEY, breed_id INTEGER NOT NULL, "
        f"breed_name VARCHAR(20){name_check}, breed_text VARCHAR(6)"
        + (" CHECK (length(breed_text) <= 6)" if dialect == "sqlite" else "")
        + ")",
        f"CREATE TABLE pet_photos (id INTEGER PRIMARY KEY, pet_id INTEGER, "
        f"species VARCHAR(8), photo {photo_type}, meta VARCHAR(50))",
    ]


def _meta(dialect: str, ok: bool) -> str:
    if dialect == "sqlite":
        return '{"n": 1}' if ok else "not json"
    return "1" if ok else "abc"


def _context_view(dialect: str) -> str:
    """A source view whose `meta_num` column raises for one row (a real-world view bug)."""
    if dialect == "sqlite":
        expr = "json_extract(meta, '$.n')"
    elif dialect == "postgresql":
        expr = "CAST(meta AS integer)"
    else:
        expr = "pets_boom(meta)"
    return (
        f"CREATE VIEW pet_photo_view AS SELECT id, pet_id, species, photo, meta, "
        f"{expr} AS meta_num FROM pet_photos"
    )


MARIADB_BOOM = """
CREATE FUNCTION pets_boom(x VARCHAR(50)) RETURNS INT DETERMINISTIC
BEGIN
  IF x = 'abc' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'meta is not a number'; END IF;
  RETURN 1;
END
"""


def _build(db_url: str, tmp_path: Path, artifact: Path, **settings: Any) -> Pets:
    require(FULLFRAME)
    engine = create_engine(db_url)
    dialect = engine.dialect.name
    files: dict[int, Path] = {}
    with engine.begin() as conn:
        for statement in _ddl(dialect):
            conn.execute(text(statement))
        if dialect == "mysql":
            conn.execute(text(MARIADB_BOOM))
        conn.execute(text(_context_view(dialect)))
        for pet, folder in FOLDERS.items():
            conn.execute(
                text("INSERT INTO pets (id, breed_id, breed_name) VALUES (:i, 442, 'Mixed Breed')"),
                {"i": pet},
            )
            for n, path in enumerate(sorted((FULLFRAME / folder).glob("*.JPEG"))[:2]):
                pid = pet * 10 + n
                files[pid] = path
                conn.execute(
                    text(
                        "INSERT INTO pet_photos (id, pet_id, species, photo, meta) "
                        "VALUES (:i, :p, 'dog', :photo, :meta)"
                    ),
                    {
                        "i": pid,
                        "p": pet,
                        "photo": base64.b64encode(path.read_bytes()).decode("ascii"),
                        "meta": _meta(dialect, True),
                    },
                )
    engine.dispose()
    breed_map = tmp_path / "pets-map.csv"
    breed_map.write_text(MAP)
    values: dict[str, Any] = {
        "database_url": db_url,
        "source_table": "pet_photo_view",
        "source_image_column": "photo",
        "image_kind": "base64",
        "source_filter_column": "species",
        "source_filter_values": ["dog"],
        "source_group_column": "pet_id",
        "target_table": "pets",
        "target_key_column": "id",
        "breed_map": breed_map,
        "target_undecided": UNDECIDED,
        "model_dir": artifact,
        "batch_size": 3,
        "audit_share": 0.0,
        "db_connect_retries": 0,
    }
    values.update(settings)
    service = Service.build(Settings(**values))
    migrate.upgrade(service.engine)
    ScriptedModel(service.classifier, files.values())
    return Pets(db_url, "mariadb" if dialect == "mysql" else dialect, files, service)


@pytest.fixture
def pets(db_url: str, tmp_path: Path, tiny_artifact: Path) -> Iterator[Pets]:
    built = _build(db_url, tmp_path, tiny_artifact)
    yield built
    built.service.engine.dispose()


def _rows(service: Service) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    with service.engine.connect() as conn:
        photos = {int(r.photo_id): r for r in conn.execute(select(photo))}
        groups = {int(r.group_id): r for r in conn.execute(select(group))}
        pets = {int(r[0]): r for r in conn.execute(text("SELECT * FROM pets"))}
    return photos, groups, pets


def test_a_write_the_target_cannot_hold_fails_only_that_animal(pets: Pets) -> None:
    summary = pets.service.run_pass()
    assert summary.status == "finished"
    photos, groups, target = _rows(pets.service)
    assert all(p.status == LABELLED for p in photos.values())
    assert (target[1].breed_id, target[1].breed_name) == (19, "Beagle")
    assert (target[2].breed_id, target[2].breed_name) == (188, "Shih Tzu")
    assert groups[1].status == groups[2].status == LABELLED
    # Value too long: the database's own words, one attempt counted, the record untouched.
    too_long = groups[3]
    assert too_long.status == FAILED and too_long.attempts == 1
    reason = too_long.last_error.lower()
    assert any(w in reason for w in ("too long", "check constraint", "data too long")), reason
    assert (target[3].breed_id, target[3].breed_name) == (442, "Mixed Breed")
    # Type mismatch: refused before it reaches the database, with the column named.
    mismatch = groups[4]
    assert mismatch.status == FAILED and "breed_id" in mismatch.last_error
    assert "x176" in mismatch.last_error and target[4].breed_id == 442

    # Retried on later passes until max attempts retires it; never an outage.
    for attempts in (2, 3, 3):
        assert pets.service.run_pass().status == "finished"
        assert _rows(pets.service)[1][3].attempts == attempts


def test_a_view_that_raises_on_one_row_fails_only_that_row(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact, context_columns=["meta_num"], batch_size=8)
    engine = built.service.engine
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE pet_photos SET meta = :m WHERE id = 21"),
            {"m": _meta(engine.dialect.name, False)},
        )
    summary = built.service.run_pass()
    assert summary.status == "finished"
    photos, groups, target = _rows(built.service)
    bad = photos[21]
    assert bad.status == FAILED and bad.attempts == 1 and "cannot read this row" in bad.last_error
    assert all(p.status == LABELLED for pid, p in photos.items() if pid != 21)
    # The animal is decided from the photo that could be read.
    assert groups[2].status == LABELLED and groups[2].photos_used == 1
    assert target[2].breed_id == 188
    engine.dispose()


def test_a_target_view_that_is_not_updatable(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE pets_base (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    built = _build(db_url, tmp_path, tiny_artifact)
    with built.service.engine.begin() as conn:
        conn.execute(
            text("CREATE VIEW pets_view AS SELECT DISTINCT id, breed_id, breed_name FROM pets")
        )
    service = Service.build(built.service.settings.model_copy(update={"target_table": "pets_view"}))
    ScriptedModel(service.classifier, built.files.values())
    summary = service.run_pass()
    assert summary.status == "finished" and summary.labelled == len(built.files)
    _, groups, target = _rows(service)
    for pet in (1, 2):
        assert groups[pet].status == FAILED and groups[pet].attempts == 1
        reason = groups[pet].last_error.lower()
        assert "view" in reason or "updatable" in reason, reason
        assert target[pet].breed_id == 442
    service.engine.dispose()
    built.service.engine.dispose()


def test_a_missing_grant_keeps_the_answers_and_writes_them_once_granted(
    server_db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(server_db_url, tmp_path, tiny_artifact)
    user, password = f"lbl_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    owner = built.service.engine
    url = make_url(server_db_url)
    with owner.begin() as conn:
        if built.dialect == "postgresql":
            conn.execute(text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
            conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}"))
            conn.execute(
                text(f"GRANT INSERT, UPDATE ON labeler_photo, labeler_run, labeler_group TO {user}")
            )
            conn.execute(text(f"GRANT USAGE ON SEQUENCE labeler_run_id_seq TO {user}"))
        else:
            conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(text(f"GRANT SELECT, SHOW VIEW ON {url.database}.* TO '{user}'@'%'"))
            for table in ("labeler_photo", "labeler_run", "labeler_group"):
                conn.execute(
                    text(f"GRANT INSERT, UPDATE ON {url.database}.{table} TO '{user}'@'%'")
                )
            # The view's function runs with its definer's rights, but needs EXECUTE to start.
            conn.execute(text(f"GRANT EXECUTE ON {url.database}.* TO '{user}'@'%'"))
    try:
        restricted = url.set(username=user, password=password).render_as_string(hide_password=False)
        settings = built.service.settings.model_copy(update={"database_url": SecretStr(restricted)})
        service = Service.build(settings)
        ScriptedModel(service.classifier, built.files.values())
        for _night in range(4):  # more nights than LABELER_MAX_ATTEMPTS
            summary = service.run_pass()
            assert summary.status == "finished"
            # A lost grant is said once per pass, not once per animal.
            denied = [e for e in summary.errors if "may not update the target" in e]
            assert len(denied) == 1 and not denied[0].startswith(("2x", "3x", "4x")), denied
            # Pets 1 and 2 (3 too where the server checks grants before the value's length).
            assert summary.animals.get("write denied", 0) >= 2, summary.animals
            _, groups, target = _rows(built.service)
            for pet, label in ((1, "beagle"), (2, "Shih-Tzu")):
                # The recognition result stays; the write waits, without spending attempts.
                assert groups[pet].status == PENDING and groups[pet].attempts == 0
                assert groups[pet].breed == label
                reason = groups[pet].last_error.lower()
                assert "denied" in reason and "next pass" in reason, reason
                assert target[pet].breed_id == 442
        assert summary.labelled == 0, "no photo is classified again"
        with Session(built.service.engine) as session:
            waiting = reports.waiting_animals(session)["writes_waiting"]
        assert waiting["count"] >= 2 and "denied" in waiting["example"].lower()
        # The grant is back: the next pass writes them.
        with owner.begin() as conn:
            if built.dialect == "postgresql":
                conn.execute(text(f"GRANT UPDATE ON pets TO {user}"))
            else:
                conn.execute(text(f"GRANT UPDATE ON {url.database}.pets TO '{user}'@'%'"))
        summary = service.run_pass()
        assert not [e for e in summary.errors if "may not update" in e], summary.errors
        _, groups, target = _rows(built.service)
        assert groups[1].status == groups[2].status == LABELLED
        assert groups[1].last_error is None
        assert (target[1].breed_id, target[2].breed_id) == (19, 188)
        service.engine.dispose()
    finally:
        with owner.begin() as conn:
            if built.dialect == "postgresql":
                conn.execute(text(f"DROP OWNED BY {user}"))
                conn.execute(text(f"DROP ROLE {user}"))
            else:
                conn.execute(text(f"DROP USER '{user}'@'%'"))


def test_per_photo_write_back_too_long_fails_only_that_photo(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    """Issue 10: a write-back value the column cannot hold fails its row; the batch is saved."""
    built = _build(db_url, tmp_path, tiny_artifact)
    service = Service.build(
        Settings(
            database_url=db_url,
            source_table="pet_photos",
            source_image_column="photo",
            image_kind="base64",
            writeback_breed_column="breed_text",
            model_dir=tiny_artifact,
            batch_size=8,
            audit_share=0.0,
        )
    )
    # pet_photos has no breed_text: use the pets table's 6-character column via a copy.
    with service.engine.begin() as conn:
        conn.execute(text("DROP VIEW pet_photo_view"))
        conn.execute(text("ALTER TABLE pet_photos ADD COLUMN breed_text VARCHAR(6)"))
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER short_breed BEFORE UPDATE ON pet_photos "
                    "WHEN length(NEW.breed_text) > 6 BEGIN "
                    "SELECT RAISE(ABORT, 'breed_text: value too long'); END"
                )
            )
    service = Service.build(service.settings)
    ScriptedModel(service.classifier, built.files.values())
    summary = service.run_pass()
    assert summary.status == "finished"
    with service.engine.connect() as conn:
        photos = {int(r.photo_id): r for r in conn.execute(select(photo))}
        written = dict(conn.execute(text("SELECT id, breed_text FROM pet_photos")).all())
    for pid, path in built.files.items():
        label = path.parent.name.split("-", 1)[1]
        row = photos[pid]
        if len(label) <= 6:
            assert row.status == LABELLED and written[pid] == label
        else:
            assert row.status == FAILED and row.attempts == 1, (pid, label)
            assert "refused" in row.last_error and written[pid] is None
    service.engine.dispose()
    built.service.engine.dispose()


def test_status_reviewed_without_a_breed_is_never_overwritten(pets: Pets) -> None:
    """Issue 10: staff set status=reviewed (no reviewed breed) while the pass held the row."""
    model = ScriptedModel(pets.service.classifier, pets.files.values())

    def staff_review() -> None:
        with pets.service.engine.begin() as conn:
            conn.execute(update(photo).where(photo.c.photo_id == "10").values(status=REVIEWED))

    model.before_first_call = staff_review
    assert pets.service.run_pass().status == "finished"
    photos, _, _ = _rows(pets.service)
    assert photos[10].status == REVIEWED and photos[10].breed is None
    assert photos[11].status == LABELLED
