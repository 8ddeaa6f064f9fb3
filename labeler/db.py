"""Engine construction: the only place that knows the differences between the three databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from labeler.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """Build the engine for the configured database. Connects lazily: nothing happens here."""
    url = settings.url
    backend = url.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True, **kwargs}
    if backend == "sqlite":
        options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    else:
        options.setdefault("pool_size", 2)
        options.setdefault("max_overflow", 2)
        options.setdefault("pool_recycle", 1800)
        if backend in ("postgresql", "mysql", "mariadb"):
            options.setdefault("connect_args", {"connect_timeout": 10})
        if backend in ("mysql", "mariadb"):
            # REPEATABLE READ's gap locks would make concurrent claimers block each other.
            options.setdefault("isolation_level", "READ COMMITTED")
    engine = create_engine(url, **options)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, emit BEGIN, so transactions mean the same as elsewhere.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # SQLite allows one writer: take the write lock at BEGIN, so two labelers queue up
    # instead of deadlocking when both try to upgrade a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def backend_name(engine: Engine) -> str:
    name = engine.dialect.name
    return "mysql" if name == "mariadb" else name
