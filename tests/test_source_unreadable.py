"""The source itself breaking in the middle of a pass (its table dropped or renamed, its image
column renamed, SELECT revoked) is not a row's fault: the pass must stop with one error that
names the setting, give back its claims and spend no photo's attempts, instead of failing
every remaining photo one by one until LABELER_MAX_ATTEMPTS retires them all."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from labeler.core.domain import SourceRow
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.engine import is_transient, source_error_kind
from labeler.store.schema import LABELLED, NEEDS_REVIEW, PENDING, photo, run
from labeler.store.seam import SourceUnreadable, SqlStore
from tests.helpers import create_photos, fresh_database, png_bytes

# --- the classifier, on constructed driver errors -------------------------------------------


def _pg(sqlstate: str, message: str = "boom") -> DBAPIError:
    orig = psycopg.errors.lookup(sqlstate)(message)
    return ProgrammingError("SELECT 1", {}, orig)


def _my(code: int, message: str = "boom") -> DBAPIError:
    return OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, message))


def _lite(message: str) -> DBAPIError:
    return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_pg("42P01", 'relation "animals" does not exist'), "table"),
        (_pg("42703", 'column "photo" does not exist'), "column"),
        (_pg("42501", "permission denied for table animals"), "privilege"),
        (_pg("42804"), "type"),
        (_pg("42883", "operator does not exist: integer = character varying"), "type"),
        (_my(1146, "Table 'shelter.animals' doesn't exist"), "table"),
        (_my(1054, "Unknown column 'photo' in 'field list'"), "column"),
        (_my(1142, "SELECT command denied to user"), "privilege"),
        (_my(1143, "SELECT command denied to user for column 'photo'"), "privilege"),
        (_my(1356, "View 'shelter.dogs' references invalid table(s) or column(s)"), "table"),
        (_lite("no such table: animals"), "table"),
        (_lite("no such column: photo"), "column"),
        (_lite("error in view dogs: no such table: main.animals"), "table"),
    ],
)
def test_errors_of_the_source(exc: DBAPIError, kind: str) -> None:
    assert source_error_kind(exc) == kind
    assert not is_transient(exc)  # never retried as an outage either


@pytest.mark.parametrize(
    "exc",
    [
        _pg("22P02", "invalid input syntax for type integer"),  # one row's data
        _pg("P0001", "a view raised on this row"),
        _pg("22012", "division by zero"),
        _pg("40001", "could not serialize access"),
        _my(1644, "a SIGNAL in a view"),
        _my(1205, "Lock wait timeout exceeded"),
        _my(2013, "Lost connection to MySQL server during query"),
        _lite("database is locked"),
        _lite("disk I/O error"),
        ValueError("no such table: not a database error"),
    ],
)
def test_errors_of_a_row_or_the_connection(exc: Exception) -> None:
    assert source_error_kind(exc) is None


def test_an_invalidated_connection_is_not_the_source() -> None:
    exc = _pg("42P01")
    exc.connection_invalidated = True
    assert source_error_kind(exc) is None


# --- a pass whose source breaks between batches, on each database -----------------------------

ROWS = 12
BATCH = 4

BREAKS = {
    "drop table": "DROP TABLE animals",
    "rename table": "ALTER TABLE animals RENAME TO animals_old",
    "rename image column": "ALTER TABLE animals RENAME COLUMN photo TO picture",
}
# What the error names, by break.
NAMED = {
    "drop table": "LABELER_SOURCE_TABLE=animals",
    "rename table": "LABELER_SOURCE_TABLE=animals",
    "rename image column": "LABELER_SOURCE_IMAGE_COLUMN=photo",
}


def _settings(db_url: str, artifact: Path) -> dict[str, Any]:
    return {
        "database_url": db_url,
        "source_table": "animals",
        "source_image_column": "photo",
        "image_kind": "bytes",
        "model_dir": artifact,
        "batch_size": BATCH,
        "prefetch_batches": 1,
    }


def _shelter(service: Service) -> None:
    colours = [(20 * i % 256, 90, 255 - 20 * i % 256) for i in range(ROWS)]
    create_photos(
        service.engine,
        "bytes",
        [
            {"id": i + 1, "name": f"dog {i + 1}", "species": "dog", "photo": png_bytes(c)}
            for i, c in enumerate(colours)
        ],
    )
    migrate.upgrade(service.engine)


def _break_on_read(
    monkeypatch: pytest.MonkeyPatch, service: Service, statement: str, on_call: int
) -> list[int]:
    """Run ``statement`` on the shelter's database just before the ``on_call``-th read of a
    batch's rows: after that batch's claim, before its read."""
    calls: list[int] = []
    real = SqlStore.fetch_rows

    def fetch_rows(store: SqlStore, photo_ids: Sequence[str]) -> dict[str, SourceRow]:
        calls.append(len(photo_ids))
        if len(calls) == on_call:
            with service.engine.begin() as conn:
                conn.execute(text(statement))
        return real(store, photo_ids)

    monkeypatch.setattr(SqlStore, "fetch_rows", fetch_rows)
    return calls


def _state(service: Service) -> tuple[list[Any], list[Any]]:
    with service.engine.connect() as conn:
        photos = list(conn.execute(select(photo).order_by(photo.c.photo_id)))
        runs = list(conn.execute(select(run).order_by(run.c.id)))
    return photos, runs


@pytest.mark.parametrize("breakage", list(BREAKS))
def test_pass_stops_once_when_the_source_breaks(
    db_url: str, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    from labeler.config.settings import Settings

    service = Service.build(Settings(**_settings(db_url, tiny_artifact)))
    _shelter(service)
    calls = _break_on_read(monkeypatch, service, BREAKS[breakage], on_call=2)

    with pytest.raises(SourceUnreadable) as caught:
        service.run_pass()

    message = str(caught.value)
    assert NAMED[breakage] in message, message
    assert "LABELER_SOURCE_TABLE=animals" in message
    # Read once per batch, never narrowed row by row: the first batch, then the broken one.
    assert calls == [BATCH, BATCH]
    photos, runs = _state(service)
    assert len(photos) == ROWS
    done = [p for p in photos if p.status in (LABELLED, NEEDS_REVIEW)]
    assert len(done) == BATCH  # the batch read before the break was saved
    for row in photos:
        assert row.claimed_by is None and row.claim_expires_at is None, row.photo_id
        assert row.attempts == 0, row.photo_id
        assert row.last_error is None, row.photo_id
        if row not in done:
            assert row.status == PENDING, row.photo_id
    (run_row,) = runs
    assert run_row.status == "failed"
    assert run_row.failed == 0
    assert run_row.released == BATCH
    errors = (run_row.errors or "").splitlines()
    assert len(errors) == 1 and NAMED[breakage] in errors[0], errors
    service.engine.dispose()


def test_run_once_exits_1_with_the_message_once(
    db_url: str,
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from labeler.config.settings import Settings

    values = _settings(db_url, tiny_artifact)
    service = Service.build(Settings(**values))
    _shelter(service)
    for name, value in values.items():
        monkeypatch.setenv(f"LABELER_{name.upper()}", str(value))
    # Broken before the very first read: every claimed photo goes back untouched.
    calls = _break_on_read(monkeypatch, service, "DROP TABLE animals", on_call=1)

    assert main(["run-once"]) == 1

    err = capsys.readouterr().err
    final = [line for line in err.splitlines() if line.startswith("labeler: ")]
    assert len(final) == 1, err
    assert "SourceUnreadable" in final[0] and "LABELER_SOURCE_TABLE=animals" in final[0]
    assert re.search(r"photo \S+ failed", err) is None, err  # no photo failed on its own
    assert calls == [BATCH]
    photos, runs = _state(service)
    assert all(p.status == PENDING and p.attempts == 0 for p in photos)
    assert all(p.claimed_by is None and p.claim_expires_at is None for p in photos)
    assert [r.status for r in runs] == ["failed"]
    service.engine.dispose()


@pytest.mark.integration  # a PostgreSQL server, without the db_url fixture
def test_select_revoked_mid_pass(
    tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, as a role with only the privileges the README lists: SELECT on the
    source revoked between two batches stops the pass the same way."""
    from labeler.config.settings import Settings
    from tests.test_least_privilege import GRANTS

    role = f"labeler_app_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with fresh_database("postgresql", tmp_path) as owner_url:
        owner = Service.build(Settings(**_settings(owner_url, tiny_artifact)))
        _shelter(owner)
        with owner.engine.begin() as conn:
            # DDL takes no bound parameters; the password is hex from uuid4.
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            for statement in GRANTS.format(role=role).strip().splitlines():
                conn.execute(text(statement))
        try:
            url = make_url(owner_url).set(username=role, password=password)
            values = _settings(url.render_as_string(hide_password=False), tiny_artifact)
            service = Service.build(Settings(**values))
            revoke = f"REVOKE SELECT ON animals FROM {role}"
            _break_on_read(monkeypatch, owner, revoke, on_call=2)
            with pytest.raises(SourceUnreadable, match="LABELER_SOURCE_TABLE=animals") as caught:
                service.run_pass()
            service.engine.dispose()
            assert "SELECT revoked" in str(caught.value)
            photos, runs = _state(owner)
            assert all(p.claimed_by is None and p.attempts == 0 for p in photos)
            assert [r.status for r in runs] == ["failed"]
        finally:
            with owner.engine.begin() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
            owner.engine.dispose()
