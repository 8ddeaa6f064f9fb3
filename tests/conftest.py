from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from tests.helpers import (
    ALLOW_SKIP,
    BACKENDS,
    SHARED,
    ServerUnavailable,
    build_tiny_artifact,
    fresh_database,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not (SHARED / "data").is_dir() and not ALLOW_SKIP:
        raise pytest.UsageError(
            f"the shared data folder was not found (looked for {SHARED}): put it beside the "
            "project or set LABELER_TEST_SHARED to its path"
        )


_SERVER_FIXTURES = {"db_url", "server_db_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Split the suite: ``pytest -m unit`` runs in-process tests only, ``-m integration`` the
    ones that need a database server or start labeler processes."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SERVER_FIXTURES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _clean_labeler_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LABELER_") and not key.startswith("LABELER_TEST_"):
            monkeypatch.delenv(key)


def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    try:
        with fresh_database(backend, tmp_path) as url:
            yield url
    except ServerUnavailable as exc:
        if ALLOW_SKIP:
            pytest.skip(str(exc))
        pytest.fail(f"database server needed by this test is unavailable: {exc}")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each of SQLite, PostgreSQL and MariaDB."""
    yield from _database(request.param, tmp_path)


@pytest.fixture(params=("postgresql", "mariadb"))
def server_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each real server (for row-locking behaviour)."""
    yield from _database(request.param, tmp_path)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("model") / "tiny")
