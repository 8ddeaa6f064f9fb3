"""Bookkeeping and start-up checks against the real databases: runs left `running` by a killed
pass, filter values that do not fit their column, the container health check, `check`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, insert, select

from labeler.config.settings import Settings, load_settings
from labeler.shelter.source import SourceError, check_filter_values, reflect_source
from labeler.store import migrate, runs
from labeler.store.engine import make_engine, session_factory
from labeler.store.schema import LABELLED, PENDING, photo, run
from tests.helpers import create_photos

NOW = datetime(2026, 11, 25, 3, 0, 0)
TTL = timedelta(minutes=15)
LONG_AGO = NOW - timedelta(hours=2)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() installs its own log handler on the root logger; put pytest's back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved


def _engine(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(Settings(database_url=db_url))
    migrate.upgrade(engine)
    return engine


def _photo(photo_id: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "photo_id": photo_id,
        "status": PENDING,
        "discovered_at": LONG_AGO,
        "updated_at": LONG_AGO,
        "claimed_by": None,
        "claim_expires_at": None,
        "run_id": None,
    }
    row.update(values)
    return row


def test_runs_of_killed_passes_are_marked_abandoned(db_url: str) -> None:
    engine = _engine(db_url)
    planted = {
        # id: (worker, status, started_at)
        1: ("host-a:101", "running", LONG_AGO),  # killed: nothing live, last save long ago
        2: ("host-b:202", "running", LONG_AGO),  # alive: holds an unexpired claim
        3: ("host-c:303", "running", LONG_AGO),  # alive: saved a result a minute ago
        4: ("host-d:404", "finished", LONG_AGO),  # ended properly
        5: ("host-e:505", "running", NOW - timedelta(minutes=1)),  # just started
        6: ("a_b:606", "running", LONG_AGO),  # '_' must not match 'axb' (LIKE wildcard)
        7: ("host-g:707", "running", LONG_AGO),  # its claims all expired: dead
        8: ("host-h:808 onnxruntime", "running", LONG_AGO),  # worker + runtime; alive
    }
    with session_factory(engine).begin() as s:
        for run_id, (worker, status, started) in planted.items():
            s.execute(
                insert(run).values(
                    id=run_id,
                    command="run-once",
                    worker=worker,
                    status=status,
                    started_at=started,
                    labelled=run_id * 10,
                    failed=1,
                )
            )
        s.execute(
            insert(photo),
            [
                _photo("1", status=LABELLED, run_id=1, updated_at=NOW - timedelta(hours=1)),
                _photo("2", claimed_by="host-b:202:tok", claim_expires_at=NOW + TTL),
                _photo("3", status=LABELLED, run_id=3, updated_at=NOW - timedelta(minutes=1)),
                _photo("6", claimed_by="axb:606:tok", claim_expires_at=NOW + TTL),
                _photo("7", claimed_by="host-g:707:tok", claim_expires_at=NOW - timedelta(1)),
                _photo("8", claimed_by="host-h:808:tok", claim_expires_at=NOW + TTL),
            ],
        )
    with session_factory(engine).begin() as s:
        abandoned = runs.abandon_dead_runs(s, now=NOW, claim_ttl=TTL)
    assert sorted(abandoned) == [1, 6, 7]
    with session_factory(engine)() as s:
        rows = {r.id: r for r in s.execute(select(run))}
    for run_id in (1, 6, 7):
        r = rows[run_id]
        assert r.status == runs.ABANDONED and r.errors == runs.ABANDONED_NOTE
        assert (r.labelled, r.failed) == (run_id * 10, 1), "the counts it saved are kept"
    assert rows[1].finished_at == NOW - timedelta(hours=1), "ends at its last sign of life"
    assert rows[7].finished_at == LONG_AGO
    alive = (2, 3, 5, 8)
    assert [rows[i].status for i in alive] == ["running"] * 4 and rows[4].status == "finished"

    with session_factory(engine).begin() as s:  # a second pass finds nothing more to do
        assert runs.abandon_dead_runs(s, now=NOW, claim_ttl=TTL) == []
    engine.dispose()


def test_filter_values_must_fit_the_filter_column(db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(db_url)
    create_photos(engine, "bytes", [{"id": 1, "species": "dog"}])
    monkeypatch.setenv("LABELER_DATABASE_URL", db_url)
    monkeypatch.setenv("LABELER_SOURCE_TABLE", "animals")
    monkeypatch.setenv("LABELER_SOURCE_IMAGE_COLUMN", "photo")

    def reflect(column: str, values: str) -> object:
        monkeypatch.setenv("LABELER_SOURCE_FILTER_COLUMN", column)
        monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", values)
        with engine.connect() as conn:
            return reflect_source(conn, load_settings())

    assert reflect("species", "dog,Dog").filter_values == ("dog", "Dog")  # type: ignore[attr-defined]
    assert reflect("id", "1,2").filter_values == ("1", "2")  # type: ignore[attr-defined]
    with pytest.raises(SourceError) as info:
        reflect("id", "1,dog")
    assert "LABELER_SOURCE_FILTER_VALUES" in str(info.value) and "'dog' is not an integer" in str(
        info.value
    )
    with pytest.raises(SourceError, match="longer than the column's 16 characters"):
        reflect("species", "dog,a-very-long-species-name")
    with pytest.raises(SourceError, match="'high' is not a number"):
        reflect("breed_confidence", "high")
    engine.dispose()


def test_filter_value_check_by_type() -> None:
    from sqlalchemy import Boolean, Column, Date, Float

    check_filter_values(Column("n", Integer), ["1", "-2"])
    check_filter_values(Column("s", String(3)), ["dog"])
    check_filter_values(Column("f", Float), ["1.5"])
    for column, values, expected in (
        (Column("b", Boolean), ["true"], "boolean"),
        (Column("d", Date), ["2026-01-01"], "not text or a number"),
        (Column("f", Float), ["heavy"], "not a number"),
        (Column("s", String(3)), ["dogs"], "longer than"),
    ):
        with pytest.raises(SourceError, match=expected):
            check_filter_values(column, values)


def test_health_checks_database_and_schema_only(db_url: str, tmp_path: Path) -> None:
    from labeler.service.app import health

    settings = Settings(database_url=db_url, model_dir=tmp_path / "no-model-needed")
    with pytest.raises(RuntimeError, match="run `labeler db upgrade`"):
        health(settings)
    _engine(db_url).dispose()
    assert health(settings).startswith("healthy: database reachable, schema at ")


def test_health_and_check_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler.service import cli

    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    monkeypatch.setenv("LABELER_DATABASE_URL", url)
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tmp_path / "no-model"))
    assert cli.main(["health"]) == 1
    assert "unhealthy: database schema is at nothing" in capsys.readouterr().out
    _engine(url).dispose()
    assert cli.main(["health"]) == 0

    monkeypatch.setenv("LABELER_PHOTO_ROOT", str(tmp_path / "unmounted"))
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  photo root: LABELER_PHOTO_ROOT=" in out and "does not exist" in out


def test_check_masks_credentials_in_query_parameters(
    server_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler.service import cli

    secret = "qu3ry-s3cret"
    monkeypatch.setenv("LABELER_DATABASE_URL", f"{server_db_url}?password={secret}")
    monkeypatch.setenv("LABELER_LOG_LEVEL", "DEBUG")
    cli.main(["check"])
    out, err = capsys.readouterr()
    if server_db_url.startswith("postgresql"):  # trust authentication: any password connects
        assert "ok    database reachable" in out and "password=***" in out
    else:  # MariaDB's root has no password: refused, and the error must not show it either
        assert "FAIL  database reachable" in out and "Access denied" in out
    assert secret not in out + err


def test_a_filter_that_matches_nothing_is_reported(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler.service import cli
    from labeler.service.app import check_filter_matches

    engine = _engine(db_url)
    create_photos(engine, "bytes", [{"id": 1, "species": "dog"}, {"id": 2, "species": "cat"}])
    monkeypatch.setenv("LABELER_DATABASE_URL", db_url)
    monkeypatch.setenv("LABELER_SOURCE_TABLE", "animals")
    monkeypatch.setenv("LABELER_SOURCE_IMAGE_COLUMN", "photo")
    monkeypatch.setenv("LABELER_SOURCE_FILTER_COLUMN", "species")

    def check(values: str) -> str:
        monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", values)
        with engine.connect() as conn:
            source = reflect_source(conn, load_settings())
        return check_filter_matches(engine, source)

    assert check("dog") == "species in (dog)"
    with pytest.raises(SourceError) as info:
        check("hund,chien")  # a misspelling matches no row
    message = str(info.value)
    assert "LABELER_SOURCE_FILTER_VALUES='hund,chien' matches no row" in message

    monkeypatch.setenv("LABELER_MODEL_DIR", "/nonexistent")
    assert cli.main(["check"]) == 1
    assert "FAIL  source filter: LABELER_SOURCE_FILTER_VALUES=" in capsys.readouterr().out
    engine.dispose()
