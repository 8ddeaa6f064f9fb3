"""What a labelling pass needs from the database, as one seam.

:class:`Store` is the protocol the pass talks to; :class:`SqlStore` implements it over the
statement modules of this package (``discovery``, ``claims``, ``source_rows``, ``results``,
``runs``, ``animals``, ``writeback``) with one session per transaction (their functions take
a session and never commit: each method here frames one transaction) and the shared retry
policy for transient database errors. The unit tests use an
in-memory fake (tests/fake_store.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from labeler.core.domain import Outcome, SaveCounts, SourceRow
from labeler.shelter.source import Source, SourceError
from labeler.shelter.target import Target, TargetValueError
from labeler.store import animals, claims, discovery, results, runs, shelter_sql, source_rows
from labeler.store.engine import (
    BUSY_TIMEOUT_MS,
    READ_ONLY,
    RetryPolicy,
    is_lock_timeout,
    is_transient,
    short_error,
    source_error_kind,
    with_retries,
)
from labeler.store.staff import apply_review, refresh_breed_names, revive_returned, sync_staff
from labeler.store.writeback import GroupPolicy, fail_group, settle_group

T = TypeVar("T")

log = logging.getLogger("labeler.pass")


class SourceChanged(SourceError):
    """The configured source is not the one labeler_photo's rows were read from."""


class SourceUnreadable(Exception):
    """The source table, view or one of its columns can no longer be read at all (dropped,
    renamed, SELECT revoked, a column's type changed). Not a row's fault: the pass stops, its
    claims are released and no photo spends an attempt. Not a :class:`SourceError` either:
    the settings were fine when the pass started, so it ends as a failed pass (exit 1) that
    the scheduler retries, rather than as a configuration error."""


class Refused(Exception):
    """The database refused an operation on these rows for good (not a transient error):
    the rows (or the animal) fail with this reason, and the pass goes on."""


class TargetLocked(Exception):
    """Another session held the animal's record (on SQLite: the database) locked for longer
    than LABELER_TARGET_LOCK_TIMEOUT_SECONDS. Nothing was written and no attempt counts: the
    animal stays as it was and is tried again at the next pass. ``database_wide``: every other
    animal would wait the same (SQLite has one lock for the whole database)."""

    def __init__(self, message: str, *, database_wide: bool = False) -> None:
        super().__init__(message)
        self.database_wide = database_wide


class Store(Protocol):
    """The database as a labelling pass sees it. Every method is one transaction; transient
    errors are retried inside, so an exception out of a method is final."""

    @property
    def grouped(self) -> bool:
        """Whether the source groups photos by animal."""
        ...

    def start_run(self, *, command: str, worker: str, model_version: str, now: datetime) -> int: ...

    def check_source(self) -> None:
        """Raise :class:`SourceChanged` when the stored rows came from another source."""
        ...

    def discover(self, run_id: int, now: datetime) -> int: ...

    def claimable_count(self, *, run_id: int, now: datetime, max_attempts: int) -> int: ...

    def claim(
        self,
        token: str,
        *,
        run_id: int,
        now: datetime,
        ttl: timedelta,
        limit: int,
        max_attempts: int,
    ) -> list[str]: ...

    def fetch_rows(self, photo_ids: Sequence[str]) -> dict[str, SourceRow]:
        """The claimed photos' source rows as they are now; raise :class:`Refused` when the
        source cannot read (one of) them, :class:`SourceUnreadable` when it cannot be read
        at all (its table or a column gone, SELECT revoked): that stops the pass."""
        ...

    def save_outcomes(
        self,
        token: str,
        run_id: int,
        model_version: str,
        outcomes: Sequence[Outcome],
        now: datetime,
    ) -> SaveCounts: ...

    def release(self, token: str, run_id: int) -> int: ...

    def finish_run(
        self, run_id: int, *, status: str, now: datetime, errors: str | None
    ) -> Mapping[str, Any]:
        """Close the run; returns its row (``released`` counts every release of the run)."""
        ...

    # one answer per animal, written to the target through labeler.store.writeback

    def sync_staff(self, now: datetime) -> int: ...

    def reviewed_groups(self, limit: int, max_attempts: int) -> list[Mapping[str, Any]]: ...

    def apply_review(self, row: Mapping[str, Any], now: datetime) -> str:
        """Write a reviewed breed; raise :class:`Refused` when the target refuses it, and
        :class:`TargetLocked` when its record stays locked past the lock timeout."""
        ...

    def ready_groups(
        self, *, run_id: int, max_attempts: int, now: datetime, limit: int
    ) -> list[str]: ...

    def settle_group(
        self, group_id: str, policy: GroupPolicy, *, model_version: str, run_id: int, now: datetime
    ) -> str:
        """Decide one animal; raise :class:`Refused` when the target refuses the result, and
        :class:`TargetLocked` when its record stays locked past the lock timeout."""
        ...

    def fail_group(self, group_id: str, reason: str, *, run_id: int, now: datetime) -> None: ...


class SqlStore:
    """:class:`Store` over SQLAlchemy: the labeler's tables, the source and the target."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        target: Target | None = None,
        *,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        image_limit: source_rows.ImageLimit | None = None,
        writeback_lock_timeout: int | None = None,
    ) -> None:
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        # Transactions that only read: no write lock on SQLite (labeler.store.engine.READ_ONLY).
        self.read_sessions: sessionmaker[Session] = sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        # Transactions that write the shelter's record: on SQLite their BEGIN waits only as
        # long as the target's lock timeout for another writer.
        busy = {BUSY_TIMEOUT_MS: target.lock_timeout_seconds * 1000} if target else {}
        self.target_sessions: sessionmaker[Session] = sessionmaker(
            engine.execution_options(**busy), expire_on_commit=False
        )
        self.source = source
        self.target = target
        self.retry = retry or RetryPolicy()
        # A shutdown request cuts a retry's backoff short (see labeler.store.engine.with_retries).
        self.stop = stop or threading.Event()
        # LABELER_MAX_IMAGE_BYTES, checked by the database before a value is read.
        self.image_limit = image_limit
        # How long the per-photo write-back waits for a source row another session holds.
        self.writeback_lock_timeout = (
            writeback_lock_timeout if source.writeback_breed_column else None
        )

    @property
    def grouped(self) -> bool:
        return self.source.group_column is not None

    def _tx(
        self,
        what: str,
        fn: Callable[[Session], T],
        *,
        read_only: bool = False,
        sessions: sessionmaker[Session] | None = None,
    ) -> T:
        if sessions is None:
            sessions = self.read_sessions if read_only else self.sessions

        def action() -> T:
            with sessions.begin() as session:
                return fn(session)

        return with_retries(action, self.retry, self.stop, what)

    def _refusable(
        self,
        what: str,
        fn: Callable[[Session], T],
        *errors: type[Exception],
        read_only: bool = False,
        sessions: sessionmaker[Session] | None = None,
    ) -> T:
        catch: tuple[type[Exception], ...] = (StatementError, *errors)
        try:
            return self._tx(what, fn, read_only=read_only, sessions=sessions)
        except catch as exc:
            if is_transient(exc):
                raise
            raise Refused(short_error(exc)) from exc

    def start_run(self, *, command: str, worker: str, model_version: str, now: datetime) -> int:
        return self._tx(
            "starting the run",
            lambda s: runs.start_run(
                s, command=command, worker=worker, model_version=model_version, now=now
            ),
        )

    def check_source(self) -> None:
        self._tx("checking the source", self._check_source)

    def _check_source(self, session: Session) -> None:
        """Refuse to mix rows of two sources: their ids mean different photos."""
        name = self.source.name
        other = discovery.other_source(session, name)
        if other is not None:
            raise SourceChanged(
                f"labeler_photo holds rows read from {other}, but the settings now name "
                f"{name} (LABELER_SOURCE_TABLE / LABELER_SOURCE_ID_COLUMN). If the "
                "change is intended, run `labeler reset-source --yes` (it forgets the old "
                "source's photo rows; per-animal results and staff decisions stay)."
            )
        discovery.adopt_source(session, name)

    def discover(self, run_id: int, now: datetime) -> int:
        """Register new photos, set photos replaced in the source back to pending, and sweep
        the ones already labelled whose row was deleted or moved to another animal (no photo
        value is read). Rows whose id or group value is too long for labeler's columns are left
        out, and said so every pass: in the log and in the run's errors."""

        def action(session: Session) -> int:
            with self._reading_source():
                found = discovery.discover(session, self.source, now)
                changed, _ = discovery.requeue_changed(session, self.source, now)
                swept = discovery.sweep_source(session, self.source, now)
            runs.add_run_counts(session, run_id, discovered=found)
            if swept.gone or swept.moved or swept.back:
                log.info(
                    "%d labelled photos left the source (gone), %d moved to another animal, "
                    "%d came back; %d animals to decide again",
                    swept.gone,
                    swept.moved,
                    swept.back,
                    len(swept.groups),
                    extra={"run_id": run_id},
                )
            if changed:
                log.info(
                    "%d photos changed in the source since they were labelled: labelling them "
                    "again",
                    changed,
                    extra={"run_id": run_id},
                )
            with self._reading_source():
                refused = discovery.refused_ids(session, self.source).message(self.source)
            if refused:
                runs.add_run_error(session, run_id, refused)
                log.warning("%s", refused, extra={"run_id": run_id})
            return found

        return self._tx("finding new photos", action)

    def claimable_count(self, *, run_id: int, now: datetime, max_attempts: int) -> int:
        return self._tx(
            "counting pending photos",
            lambda s: claims.claimable_count(s, now=now, max_attempts=max_attempts, run_id=run_id),
        )

    def claim(
        self,
        token: str,
        *,
        run_id: int,
        now: datetime,
        ttl: timedelta,
        limit: int,
        max_attempts: int,
    ) -> list[str]:
        return self._tx(
            "claiming photos",
            lambda s: claims.claim(
                s,
                token,
                now=now,
                ttl=ttl,
                limit=limit,
                max_attempts=max_attempts,
                run_id=run_id,
            ),
        )

    def fetch_rows(self, photo_ids: Sequence[str]) -> dict[str, SourceRow]:
        def read(session: Session) -> dict[str, SourceRow]:
            with self._reading_source():
                return source_rows.fetch_rows(session, self.source, photo_ids, self.image_limit)

        # A refusal here is one row's (a view raising on its data) and the pass narrows it
        # down; an error of the source itself is raised as SourceUnreadable, before that.
        return self._refusable("reading photos", read, read_only=True)

    @contextmanager
    def _reading_source(self) -> Iterator[None]:
        """Turn a database error that names the source itself into :class:`SourceUnreadable`."""
        try:
            yield
        except DBAPIError as exc:
            kind = source_error_kind(exc)
            if kind is None:
                raise
            raise SourceUnreadable(self._unreadable(kind, exc)) from exc

    def _unreadable(self, kind: str, exc: DBAPIError) -> str:
        source = self.source
        table = f"LABELER_SOURCE_TABLE={source.table.fullname}"
        if kind in ("column", "type"):
            named = [
                ("LABELER_SOURCE_ID_COLUMN", source.id_column),
                ("LABELER_SOURCE_IMAGE_COLUMN", source.image_column),
                ("LABELER_SOURCE_FILTER_COLUMN", source.filter_column),
                ("LABELER_SOURCE_GROUP_COLUMN", source.group_column),
                ("LABELER_CONTEXT_COLUMNS", ",".join(source.context_columns) or None),
                ("LABELER_SOURCE_CHANGE_COLUMN", source.change_column),
            ]
            settings = ", ".join([table] + [f"{k}={v}" for k, v in named if v])
        else:
            settings = table
        what = {
            "table": "the source table or view no longer exists (dropped or renamed?)",
            "column": "a source column no longer exists (dropped or renamed?)",
            "privilege": "the database user may no longer read the source (SELECT revoked?)",
            "type": "a source column's type changed",
        }[kind]
        return (
            f"{what}: {short_error(exc)}. Check {settings}. The pass stopped without "
            "spending any photo's attempts; it is tried again at the next pass."
        )

    def save_outcomes(
        self,
        token: str,
        run_id: int,
        model_version: str,
        outcomes: Sequence[Outcome],
        now: datetime,
    ) -> SaveCounts:
        return self._tx(
            "saving results",
            lambda s: results.save_outcomes(
                s,
                self.source,
                token,
                run_id,
                model_version,
                outcomes,
                now,
                lock_timeout_seconds=self.writeback_lock_timeout,
            ),
        )

    def release(self, token: str, run_id: int) -> int:
        def action(session: Session) -> int:
            n = claims.release(session, token)
            runs.add_run_counts(session, run_id, released=n)
            return n

        return self._tx("releasing claims", action)

    def finish_run(
        self, run_id: int, *, status: str, now: datetime, errors: str | None
    ) -> Mapping[str, Any]:
        return self._tx(
            "recording the run",
            lambda s: runs.finish_run(s, run_id, status=status, now=now, errors=errors),
        )

    def sync_staff(self, now: datetime) -> int:
        target = self.target
        if target is None:
            return 0
        # The queue shows the shelter's breed names: keep them in line with the map in force.
        self._tx("showing breed names", lambda s: refresh_breed_names(s, target))
        revived = self._tx("finding records back", lambda s: revive_returned(s, target, now))
        if revived:
            log.info("%d animals whose record is back are decided again", revived)
        return self._tx("reading staff decisions", lambda s: sync_staff(s, target, now))

    def reviewed_groups(self, limit: int, max_attempts: int) -> list[Mapping[str, Any]]:
        return list(
            self._tx("reading reviews", lambda s: animals.reviewed_groups(s, limit, max_attempts))
        )

    def _writing_target(self, what: str, fn: Callable[[Session], T]) -> T:
        """One animal's transaction that may write its record: a lock held past the lock
        timeout becomes :class:`TargetLocked` (never retried within the pass, never an
        attempt); a permanent refusal :class:`Refused`."""
        timeout = self.target.lock_timeout_seconds if self.target is not None else None

        def guarded(session: Session) -> T:
            try:
                with shelter_sql.lock_timeout(session, timeout):
                    return fn(session)
            except DBAPIError as exc:
                if not is_lock_timeout(exc):
                    raise
                sqlite = session.get_bind().dialect.name == "sqlite"
                held = "the database" if sqlite else "the animal's record"
                raise TargetLocked(
                    f"{held} stayed locked by another session for more than {timeout} s "
                    "(LABELER_TARGET_LOCK_TIMEOUT_SECONDS); nothing written, tried again at "
                    "the next pass",
                    database_wide=sqlite,
                ) from exc

        return self._refusable(
            what,
            guarded,
            TargetValueError,
            shelter_sql.NotOneRecord,
            sessions=self.target_sessions,
        )

    def apply_review(self, row: Mapping[str, Any], now: datetime) -> str:
        return self._writing_target(
            "writing a reviewed breed", lambda s: apply_review(s, self.target, row, now)
        )

    def ready_groups(
        self, *, run_id: int, max_attempts: int, now: datetime, limit: int
    ) -> list[str]:
        return self._tx(
            "finding animals to decide",
            lambda s: animals.ready_groups(
                s, run_id=run_id, max_attempts=max_attempts, now=now, limit=limit
            ),
        )

    def settle_group(
        self, group_id: str, policy: GroupPolicy, *, model_version: str, run_id: int, now: datetime
    ) -> str:
        return self._writing_target(
            "deciding an animal",
            lambda s: settle_group(
                s,
                group_id,
                self.target,
                policy,
                model_version=model_version,
                run_id=run_id,
                now=now,
            ),
        )

    def fail_group(self, group_id: str, reason: str, *, run_id: int, now: datetime) -> None:
        self._tx(
            "recording a failed animal",
            lambda s: fail_group(s, group_id, reason, run_id=run_id, now=now),
        )
