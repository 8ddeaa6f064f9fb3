"""`labeler schedule`: run a pass on a cron schedule until SIGTERM, SIGHUP or SIGINT.

Never two passes at once (one job instance, coalesced misfires), a generous grace time for a
machine that was asleep at the scheduled hour, and a failed pass (database down) retried a
little later instead of waiting for the next night.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from labeler.config.logging_setup import summary_fields
from labeler.labelling.passes import PassSummary
from labeler.service.shutdown import StopOnSignals
from labeler.store.engine import RetryPolicy, is_transient, short_error

log = logging.getLogger("labeler.service.scheduler")

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
        self.signals = StopOnSignals(on_stop=self._shutdown)
        self.stop = self.signals.stop
        self.scheduler = BlockingScheduler(timezone=timezone)
        self.trigger = CronTrigger.from_crontab(cron, timezone=timezone)
        self.misfire_grace_seconds = misfire_grace_seconds
        self.run_at_start = run_at_start
        # Unbounded retries: the service outlives any outage; only the wait is capped.
        self.retry_policy = RetryPolicy(
            retries=0, backoff_seconds=retry_seconds, max_delay_seconds=MAX_RETRY_DELAY
        )
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
            log.info("pass done: %s", summary.line(), extra=summary_fields(summary))
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
        delay = self.retry_policy.delay(self._failures)
        kind = "database unreachable" if is_transient(exc) else type(exc).__name__
        log.error(
            "%s failed (%s: %s); the service keeps running and tries again in %ds",
            what,
            kind,
            short_error(exc),
            delay,
            extra={"failures": self._failures, "retry_in_seconds": delay},
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

    def _shutdown(self) -> None:
        threading.Thread(target=self._stop_scheduler, daemon=True).start()

    def _stop_scheduler(self) -> None:
        # A signal may arrive while the scheduler is still starting: wait until it runs.
        # shutdown(wait=True) then waits for the running pass, which ends after its batch.
        for _ in range(600):
            try:
                self.scheduler.shutdown(wait=True)
                return
            except SchedulerNotRunningError:
                time.sleep(0.05)

    def request_stop(self, signum: int) -> None:
        """What a stop signal does; callable directly (tests, an embedding program)."""
        self.signals.handle(signum)

    def run(self) -> int:
        """Run until a stop signal; return the process exit code (130 after SIGINT, else 0)."""
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
        with self.signals:
            nxt = self.trigger.get_next_fire_time(None, datetime.now(self.trigger.timezone))
            log.info("scheduler started; next pass at %s", nxt.isoformat() if nxt else "never")
            if not self.stop.is_set():
                self.scheduler.start()
        log.info("scheduler stopped")
        return self.signals.exit_code()
