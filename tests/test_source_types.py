"""Photo columns labeler cannot read are refused once, at start-up and in `check`, naming the
column and its type; a PostgreSQL materialized view is a source like a table."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labeler.config.settings import Settings
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.shelter.source import SourceError, reflect_source
from labeler.store import migrate
from tests.conftest import _database
from tests.helpers import png_bytes

PHOTO = base64.b64encode(png_bytes((200, 120, 40))).decode("ascii")


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    yield from _database("postgresql", tmp_path)


def _settings(url: str, table: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "source_table": table,
        "source_image_column": "photo",
        "image_kind": "base64",
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("column_type", "value"),
    [
        ("jsonb", f"'\"{PHOTO}\"'::jsonb"),
        ("oid", "1234"),
        ("text[]", f"ARRAY['{PHOTO}']"),
    ],
)
def test_a_photo_column_of_an_unreadable_type_is_refused_with_its_name_and_type(
    pg_url: str,
    column_type: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE odd (id INTEGER PRIMARY KEY, photo {column_type})"))
        conn.execute(text(f"INSERT INTO odd VALUES (1, {value})"))
        with pytest.raises(SourceError) as refused:
            reflect_source(conn, _settings(pg_url, "odd"))
    engine.dispose()
    message = str(refused.value)
    assert "LABELER_SOURCE_IMAGE_COLUMN='photo'" in message
    shown = {"jsonb": "JSONB", "oid": "OID", "text[]": "TEXT[]"}[column_type]
    assert shown in message.upper() and "text column" in message
    # `labeler check` says the same on its photo source line.
    monkeypatch.setenv("LABELER_DATABASE_URL", pg_url)
    monkeypatch.setenv("LABELER_SOURCE_TABLE", "odd")
    monkeypatch.setenv("LABELER_SOURCE_IMAGE_COLUMN", "photo")
    assert main(["check"]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "photo source" in ln)
    assert line.startswith("FAIL") and "LABELER_SOURCE_IMAGE_COLUMN='photo'" in line, line


def test_a_materialized_view_is_a_source(pg_url: str, tiny_artifact: Path) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE pics (id INTEGER PRIMARY KEY, photo TEXT)"))
        conn.execute(text("INSERT INTO pics VALUES (1, :p), (2, :p)"), {"p": PHOTO})
        conn.execute(text("CREATE MATERIALIZED VIEW pics_snapshot AS SELECT id, photo FROM pics"))
    engine.dispose()
    service = Service.build(_settings(pg_url, "pics_snapshot", model_dir=tiny_artifact))
    migrate.upgrade(service.engine)
    summary = service.run_pass()
    assert summary.status == "finished" and summary.failed == 0
    assert summary.labelled + summary.needs_review == 2
    service.engine.dispose()


def test_sqlite_columns_without_a_declared_type_stay_readable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'untyped.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE loose (id INTEGER PRIMARY KEY, photo)"))
        source = reflect_source(conn, _settings(url, "loose"))
    engine.dispose()
    assert source.image_column == "photo"
