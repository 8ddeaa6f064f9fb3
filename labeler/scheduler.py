"""`labeler schedule`: run a pass on a cron schedule until SIGTERM/SIGINT.

Never two passes at once (one job instance, coalesced misfires), a generous grace time for a
machine that was asleep at the scheduled hour, and a failed pass (database down) retried a
little later instead of waiting for the next night.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from labeler.labelling import PassSummary, is_transient

log = logging.getLogger("labeler.scheduler")

MAX_RETRY_DELAY = 3600


class PassScheduler:
    def __init__(
        self,
        run_pass: Callable[[threading.Event], PassSummary],
        *,
        cron: str,
        timezone: str,
        misfire_grace_seconds: int,
        probe: Callable[[], str] | None = None,
        run_at_start: bool = False,
        retry_seconds: int = 300,
    ) -> None:
        self.run_pass = run_pass
        self.probe = probe
        self.stop = threading.Event()
        self.scheduler = BlockingScheduler(timezone=timezone)
        self.trigger = CronTrigger.from_crontab(cron, timezone=timezone)
        self.misfire_grace_seconds = misfire_grace_seconds
        self.run_at_start = run_at_start
        self.retry_seconds = retry_seconds
        self._failures = 0
        self._lock = threading.Lock()

    def _job(self) -> None:
        # The cron job and the retry job both land here; the lock keeps them from overlapping.
        if not self._lock.acquire(blocking=False):
            log.info("a pass is already running; skipping this one")
            return
        try:
            if self.stop.is_set():
                return
            summary = self.run_pass(self.stop)
            self._failures = 0
            log.info("pass done: %s", summary.line())
        except Exception as exc:
            self._retry_later(self._job, "pass", exc)
        finally:
            self._lock.release()

    def _probe_job(self) -> None:
        """At start-up: say whether the database is usable now, rather than at 2 a.m."""
        assert self.probe is not None
        try:
            log.info("start-up check: %s", self.probe())
            self._failures = 0
        except Exception as exc:
            self._retry_later(self._probe_job, "start-up check", exc)

    def _retry_later(self, job: Callable[[], None], what: str, exc: Exception) -> None:
        self._failures += 1
        delay = min(self.retry_seconds * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        kind = "database unreachable" if is_transient(exc) else type(exc).__name__
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        log.error(
            "%s failed (%s: %s); the service keeps running and tries again in %ds",
            what,
            kind,
            lines[0][:300] if lines else "",
            delay,
        )
        if self.stop.is_set():
            return
        self.scheduler.add_job(
            job,
            DateTrigger(datetime.now(self.trigger.timezone) + timedelta(seconds=delay)),
            id=f"retry-{job.__name__}",
            replace_existing=True,
            misfire_grace_time=self.misfire_grace_seconds,
        )

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name if signum else "stop"
        log.info("%s received: finishing the current batch, releasing claims, then exiting", name)
        self.stop.set()
        # shutdown(wait=True) waits for the running pass, which now ends after its batch.
        threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    def run(self) -> None:
        job_options: dict[str, Any] = {
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": self.misfire_grace_seconds,
        }
        self.scheduler.add_job(self._job, self.trigger, id="nightly-pass", **job_options)
        if self.run_at_start:
            self.scheduler.add_job(self._job, id="first-pass", **job_options)
        elif self.probe is not None:
            self.scheduler.add_job(self._probe_job, id="start-up-check")
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            nxt = self.trigger.get_next_fire_time(None, datetime.now(self.trigger.timezone))
            log.info("scheduler started; next pass at %s", nxt.isoformat() if nxt else "never")
            self.scheduler.start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("scheduler stopped")
