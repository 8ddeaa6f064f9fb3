"""An in-memory :class:`labeler.store.seam.Store` for unit tests of the pass (no database).

It keeps the same contract as :class:`labeler.store.seam.SqlStore`: one "transaction" per method,
saves guarded by the claim token, transient errors retried with
:func:`labeler.store.engine.with_retries`
(the pass's real retry policy, with no waiting). Faults are injected per method name:
``store.faults["claim"] = [transient(), None, RuntimeError("x")]`` makes the next three calls
raise a transient error, succeed, then raise for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from labeler.core.domain import Outcome, PhotoStatus, RunStatus, SaveCounts, SourceRow
from labeler.store.engine import RetryPolicy, with_retries
from labeler.store.seam import Refused, TargetLocked
from labeler.store.writeback import WRITE_DENIED, GroupPolicy

T = TypeVar("T")


def transient() -> OperationalError:
    """An error :func:`labeler.store.engine.is_transient` takes for a lost connection."""
    return OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))


@dataclass
class FakePhoto:
    image: object
    status: str = PhotoStatus.PENDING
    claimed_by: str | None = None
    attempts: int = 0
    last_error: str | None = None
    run_id: int | None = None
    breed: str | None = None
    review_reason: str | None = None
    audit: bool = False
    group_id: str | None = None  # the animal, with one answer per animal
    unreadable: bool = False  # fetching this row raises a permanent error (a hostile view)
    in_source: bool = True  # False: the row vanished from the source


@dataclass
class FakeRun:
    command: str
    worker: str
    model_version: str
    status: str = RunStatus.RUNNING
    discovered: int = 0
    labelled: int = 0
    needs_review: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    errors: str | None = None


@dataclass
class FakeStore:
    photos: dict[str, FakePhoto] = field(default_factory=dict)
    runs: dict[int, FakeRun] = field(default_factory=dict)
    new_photos: dict[str, object] = field(default_factory=dict)  # found by the next discover
    faults: dict[str, list[BaseException | None]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    # Called after each successful claim with the claimed ids (e.g. to stop the pass there).
    on_claim: Callable[[list[str]], None] | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(retries=2, backoff_seconds=0))
    grouped: bool = False
    # shelter fit, kept minimal: an animal's status, why it failed, and the animals whose
    # record the target refuses (settle_group raises Refused for them).
    animals: dict[str, str] = field(default_factory=dict)
    animal_errors: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    # Animals whose record stays locked (value: the lock is the whole database's, as on
    # SQLite), and animals the database user may not write: both stay pending.
    locked: dict[str, bool] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, photo_id: str, image: object, **fields: Any) -> FakePhoto:
        self.photos[photo_id] = FakePhoto(image, **fields)
        return self.photos[photo_id]

    def claimed(self) -> list[str]:
        return sorted(pid for pid, p in self.photos.items() if p.claimed_by is not None)

    def status_of(self, photo_id: str) -> str:
        return self.photos[photo_id].status

    # -- the contract ---------------------------------------------------------------------

    def _tx(self, name: str, fn: Callable[[], T]) -> T:
        def action() -> T:
            with self._lock:
                self.calls.append(name)
                queued = self.faults.get(name)
                if queued:
                    fault = queued.pop(0)
                    if fault is not None:
                        raise fault
                return fn()

        return with_retries(action, self.retry, threading.Event(), name)

    def start_run(self, *, command: str, worker: str, model_version: str, now: datetime) -> int:
        def action() -> int:
            run_id = len(self.runs) + 1
            self.runs[run_id] = FakeRun(command, worker, model_version)
            return run_id

        return self._tx("start_run", action)

    def check_source(self) -> None:
        self._tx("check_source", lambda: None)

    def discover(self, run_id: int, now: datetime) -> int:
        def action() -> int:
            for pid, image in self.new_photos.items():
                self.photos.setdefault(pid, FakePhoto(image))
            found = len(self.new_photos)
            self.new_photos = {}
            self.runs[run_id].discovered += found
            return found

        return self._tx("discover", action)

    def _claimable(self, p: FakePhoto, run_id: int, max_attempts: int) -> bool:
        if p.claimed_by is not None:
            return False
        if p.status == PhotoStatus.PENDING:
            return True
        return p.status == PhotoStatus.FAILED and p.attempts < max_attempts and p.run_id != run_id

    def claimable_count(self, *, run_id: int, now: datetime, max_attempts: int) -> int:
        return self._tx(
            "claimable_count",
            lambda: sum(self._claimable(p, run_id, max_attempts) for p in self.photos.values()),
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
        def action() -> list[str]:
            ids = [
                pid
                for pid, p in sorted(self.photos.items())
                if self._claimable(p, run_id, max_attempts)
            ][:limit]
            for pid in ids:
                self.photos[pid].claimed_by = token
            return ids

        ids = self._tx("claim", action)
        if ids and self.on_claim is not None:
            self.on_claim(ids)
        return ids

    def fetch_rows(self, photo_ids: Sequence[str]) -> dict[str, SourceRow]:
        def action() -> dict[str, SourceRow]:
            if any(self.photos[pid].unreadable for pid in photo_ids):
                raise Refused("division by zero in the source view")
            return {
                pid: SourceRow(self.photos[pid].image, self.photos[pid].group_id)
                for pid in photo_ids
                if self.photos[pid].in_source
            }

        return self._tx("fetch_rows", action)

    def save_outcomes(
        self,
        token: str,
        run_id: int,
        model_version: str,
        outcomes: Sequence[Outcome],
        now: datetime,
    ) -> SaveCounts:
        def action() -> SaveCounts:
            counts = {s: 0 for s in PhotoStatus} | {"lost": 0}
            touched: set[str] = set()
            for o in outcomes:
                p = self.photos[o.photo_id]
                if p.claimed_by != token or p.status == PhotoStatus.REVIEWED:
                    counts["lost"] += 1
                    continue
                p.claimed_by, p.status, p.run_id = None, o.status, run_id
                if o.group_id is not None:
                    p.group_id = o.group_id
                    self.animals[o.group_id] = PhotoStatus.PENDING
                    touched.add(o.group_id)
                if o.status == PhotoStatus.FAILED:
                    p.attempts += 1
                    p.last_error = o.error or "unknown error"
                elif o.status == PhotoStatus.GONE:
                    p.last_error = o.error
                else:
                    assert o.prediction is not None
                    p.breed, p.attempts, p.last_error = o.prediction.label, 0, None
                    p.review_reason, p.audit = o.error, o.audit
                counts[o.status] += 1
            run = self.runs[run_id]
            run.labelled += counts[PhotoStatus.LABELLED]
            run.needs_review += counts[PhotoStatus.NEEDS_REVIEW]
            run.failed += counts[PhotoStatus.FAILED]
            run.lost += counts["lost"]
            return SaveCounts(
                counts[PhotoStatus.LABELLED],
                counts[PhotoStatus.NEEDS_REVIEW],
                counts[PhotoStatus.FAILED],
                counts["lost"],
                counts[PhotoStatus.GONE],
                tuple(sorted(touched)),
            )

        return self._tx("save_outcomes", action)

    def release(self, token: str, run_id: int) -> int:
        def action() -> int:
            held = [p for p in self.photos.values() if p.claimed_by == token]
            for p in held:
                p.claimed_by = None
            self.runs[run_id].released += len(held)
            return len(held)

        return self._tx("release", action)

    def finish_run(
        self, run_id: int, *, status: str, now: datetime, errors: str | None
    ) -> Mapping[str, Any]:
        def action() -> Mapping[str, Any]:
            run = self.runs[run_id]
            run.status, run.errors = status, errors
            return dict(vars(run))

        return self._tx("finish_run", action)

    # -- shelter fit, minimal: an animal is decided once none of its photos waits ----------
    # (staff decisions and reviews are not modelled; the SQL tests cover them)

    def sync_staff(self, now: datetime) -> int:
        return self._tx("sync_staff", lambda: 0)

    def reviewed_groups(self, limit: int, max_attempts: int) -> list[Mapping[str, Any]]:
        return self._tx("reviewed_groups", list)

    def apply_review(self, row: Mapping[str, Any], now: datetime) -> str:
        raise NotImplementedError("reviews are not modelled")

    def ready_groups(
        self, *, run_id: int, max_attempts: int, now: datetime, limit: int
    ) -> list[str]:
        def action() -> list[str]:
            waiting = {
                p.group_id
                for p in self.photos.values()
                if p.claimed_by is not None or p.status == PhotoStatus.PENDING
            }
            pending = [g for g, s in sorted(self.animals.items()) if s == PhotoStatus.PENDING]
            return [g for g in pending if g not in waiting][:limit]

        return self._tx("ready_groups", action)

    def settle_group(
        self, group_id: str, policy: GroupPolicy, *, model_version: str, run_id: int, now: datetime
    ) -> str:
        def action() -> str:
            if group_id in self.refuse:
                raise Refused(self.refuse[group_id])
            if group_id in self.locked:
                raise TargetLocked("locked", database_wide=self.locked[group_id])
            if group_id in self.denied:
                return WRITE_DENIED
            labelled = [
                p
                for p in self.photos.values()
                if p.group_id == group_id and p.status == PhotoStatus.LABELLED
            ]
            status = PhotoStatus.LABELLED if labelled else PhotoStatus.NEEDS_REVIEW
            self.animals[group_id] = status
            return status

        return self._tx("settle_group", action)

    def fail_group(self, group_id: str, reason: str, *, run_id: int, now: datetime) -> None:
        def action() -> None:
            self.animals[group_id] = PhotoStatus.FAILED
            self.animal_errors[group_id] = reason

        self._tx("fail_group", action)
