"""The database plumbing shared by every command: engine construction (the only place that knows
the differences between the three databases), the clock convention, which errors are worth a
retry, and the one retry policy used by both the pass and the scheduler."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labeler.config.settings import Settings, setting_default
from labeler.core.textsafe import error_line

log = logging.getLogger("labeler.store.engine")
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(settings: Settings) -> Engine:
    """Build the engine for the configured database. Connects lazily: nothing happens here."""
    url = settings.url
    backend = url.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    else:
        # The pass's threads each hold a connection: the main one (save) and one per batch
        # being prepared (claim, read).
        options.setdefault("pool_size", settings.prefetch_batches + 1)
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
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        event.listen(engine, "do_execute", _binary_results)
    return engine


# Execution option: ask the server for binary results (PostgreSQL with psycopg), for the
# statement that reads photos.
BINARY_RESULTS = "labeler_binary_results"


def _binary_results(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
    """PostgreSQL sends bytea as hex text unless the client asks for binary results: twice
    the bytes, hex-encoded by the server and decoded here (a 2.5 MB photo: 11 ms, in binary
    3.6 ms). Returning True tells SQLAlchemy the statement ran; errors, results and the
    connection's state stay SQLAlchemy's."""
    if context is None or not context.execution_options.get(BINARY_RESULTS):
        return None
    cursor.execute(statement, parameters, binary=True)
    return True


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, emit BEGIN, so transactions mean the same as elsewhere.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


# Execution option: this transaction only reads (see _sqlite_on_begin).
READ_ONLY = "labeler_read_only"
# Execution option: how long (ms) this transaction's BEGIN waits for another writer on SQLite,
# instead of SQLITE_BUSY_TIMEOUT_MS (the writes to the shelter's record wait less).
BUSY_TIMEOUT_MS = "labeler_busy_timeout_ms"


def _sqlite_on_begin(conn: Any) -> None:
    # SQLite allows one writer: take the write lock at BEGIN, so two labelers queue up
    # instead of deadlocking when both try to upgrade a read lock. A transaction that only
    # reads (the photos of a batch: megabytes) needs no write lock, and with WAL it neither
    # waits for writers nor holds them up.
    options = conn.get_execution_options()
    busy = int(options.get(BUSY_TIMEOUT_MS, SQLITE_BUSY_TIMEOUT_MS))
    if conn.info.get(BUSY_TIMEOUT_MS, SQLITE_BUSY_TIMEOUT_MS) != busy:
        # Per connection, not per transaction: set it back for the transactions that follow.
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {busy}")
        conn.info[BUSY_TIMEOUT_MS] = busy
    conn.exec_driver_sql("BEGIN" if options.get(READ_ONLY) else "BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def utc_now() -> datetime:
    """Naive UTC: the one convention every supported database stores faithfully."""
    return datetime.now(UTC).replace(tzinfo=None)


# MySQL/MariaDB server errors that a retry may cure (client-side errors, 2000-2999, always may):
# too many connections, shutdown in progress, lock wait timeout, deadlock, connection killed,
# disconnected for inactivity. Everything else the server says (1142 no grant, 1288 view not
# updatable, 1644 a SIGNAL in a view) is permanent although the driver calls it operational.
_MYSQL_TRANSIENT = frozenset({1040, 1053, 1205, 1213, 1927, 4031})
# SQLSTATE classes that name the connection or the server's state, not the statement.
_SQLSTATE_TRANSIENT = frozenset({"08", "40", "53", "57", "58"})


def is_transient(exc: BaseException) -> bool:
    """Connection-level database errors that a retry may cure (a permanent error
    on one row must fail that row, not be retried as an outage)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if isinstance(exc, InterfaceError):
        return True
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and type(orig).__module__.startswith("pymysql"):
        return 2000 <= args[0] < 3000 or args[0] in _MYSQL_TRANSIENT
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _SQLSTATE_TRANSIENT
    if type(orig).__module__.startswith("sqlite3"):
        message = str(orig).lower()
        return any(w in message for w in ("locked", "busy", "disk i/o", "unable to open"))
    return True


def is_lock_timeout(exc: BaseException) -> bool:
    """A statement gave up waiting for a lock another session holds: PostgreSQL's
    lock_not_available (lock_timeout), MariaDB's lock wait timeout (1205), SQLite's busy
    database. Not an outage: the row (the animal) waits for the next pass."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    orig = exc.orig
    args = getattr(orig, "args", ())
    if type(orig).__module__.startswith("pymysql"):
        return bool(args and args[0] == 1205)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate == "55P03"
    if isinstance(orig, sqlite3.OperationalError):
        message = str(orig).lower()
        return "locked" in message or "busy" in message
    return False


# Errors that name the source itself, not one of its rows: its table or a column is gone
# (dropped, renamed), SELECT was revoked, a column's type changed under a filter. Every row
# would fail the same way, so a pass must stop instead of failing photos one by one.
# PostgreSQL SQLSTATEs: undefined_table, undefined_column, insufficient_privilege,
# datatype_mismatch, undefined_function (an operator for the column's new type).
_SQLSTATE_SOURCE = {
    "42P01": "table",
    "42703": "column",
    "42501": "privilege",
    "42804": "type",
    "42883": "type",
}
# MariaDB/MySQL: no such table, unknown column, command denied, column denied, a view that
# references a table or column that is no longer there.
_MYSQL_SOURCE = {1146: "table", 1054: "column", 1142: "privilege", 1143: "privilege", 1356: "table"}
_SQLITE_SOURCE = (("no such table", "table"), ("no such column", "column"))


def source_error_kind(exc: BaseException) -> str | None:
    """What a database error says is wrong with the statement's tables rather than a row:
    ``"table"``, ``"column"``, ``"privilege"`` or ``"type"``; None for anything else
    (a row's data, a transient outage, an error that is not the database's)."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return None
    orig = exc.orig
    module = type(orig).__module__
    args = getattr(orig, "args", ())
    if module.startswith("pymysql"):
        return _MYSQL_SOURCE.get(args[0]) if args and isinstance(args[0], int) else None
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return _SQLSTATE_SOURCE.get(sqlstate)
    if module.startswith("sqlite3") and isinstance(orig, sqlite3.OperationalError):
        message = str(orig).lower()
        return next((kind for words, kind in _SQLITE_SOURCE if words in message), None)
    return None


def short_error(exc: BaseException) -> str:
    """The first line of a (DBAPI) error, at most 300 characters (``textsafe.error_line``)."""
    return error_line(exc, 300)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``backoff_seconds`` after the first failure, doubling, capped."""

    retries: int = setting_default("db_connect_retries")
    backoff_seconds: float = setting_default("db_retry_backoff_seconds")
    max_delay_seconds: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        exponent = min(max(failures, 1) - 1, 62)  # 2**62 s is already far past any cap
        return float(min(self.backoff_seconds * 2**exponent, self.max_delay_seconds))


def with_retries(
    action: Callable[[], T], policy: RetryPolicy, stop: threading.Event, what: str
) -> T:
    """Run a self-contained transaction, retrying transient database errors with backoff."""
    for attempt in range(policy.retries + 1):
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.retries:
                raise
            delay = policy.delay(attempt + 1)
            log.warning(
                "database error while %s (attempt %d of %d), retrying in %.0fs: %s",
                what,
                attempt + 1,
                policy.retries + 1,
                delay,
                short_error(exc),
            )
            # A shutdown request cuts the wait short; the retry still happens once.
            stop.wait(delay)
    raise AssertionError("unreachable")
