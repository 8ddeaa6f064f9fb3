"""A labelling pass: wires source -> image loading -> preprocessing -> classifier -> decision ->
write-back, batch by batch.

A background thread claims, fetches, decodes and preprocesses the next batch while the
calling thread classifies and saves the current one. Each batch's results are written in one
transaction, so a crash leaves every row untouched (its claim then expires) or fully labelled.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labeler import repository as repo
from labeler.classifier import Classifier, Prediction
from labeler.decision import Thresholds, decide
from labeler.images import ImageError, LoaderConfig, load_image, reference_of
from labeler.preprocessing import finish_batch, preprocess_image
from labeler.schema import FAILED
from labeler.source import Source

log = logging.getLogger("labeler.pass")
T = TypeVar("T")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Naive UTC: the one convention every supported database stores faithfully."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


@dataclass(frozen=True)
class PassConfig:
    batch_size: int = 32
    max_attempts: int = 3
    claim_ttl: timedelta = timedelta(minutes=15)
    max_rows: int | None = None
    db_retries: int = 5
    db_backoff_seconds: float = 2.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass
class PreparedBatch:
    token: str
    ids: list[str] = field(default_factory=list)  # rows that reached the classifier
    inputs: np.ndarray | None = None
    refs: dict[str, str | None] = field(default_factory=dict)
    failures: list[repo.Outcome] = field(default_factory=list)


@dataclass
class PassSummary:
    run_id: int
    status: str
    discovered: int = 0
    labelled: int = 0
    needs_review: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    seconds: float = 0.0
    # Time spent per stage; prepare runs beside classify+save, so the sum can exceed `seconds`.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.labelled + self.needs_review + self.failed

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"run {self.run_id} {self.status}: {self.processed} photos in {self.seconds:.1f}s "
            f"({rate:.1f}/s) - {self.labelled} labelled, {self.needs_review} need review, "
            f"{self.failed} failed, {self.discovered} new, {self.released} released, "
            f"{self.lost} lost claims; model {self.model_version}"
        )


class PassAborted(Exception):
    """The pass stopped because the database stayed unreachable."""


_DONE = object()


def is_transient(exc: BaseException) -> bool:
    """Connection-level database errors that a retry may cure."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_retries(
    action: Callable[[], T], config: PassConfig, stop: threading.Event, what: str
) -> T:
    """Run a self-contained transaction, retrying transient database errors with backoff."""
    delay = config.db_backoff_seconds
    for attempt in range(config.db_retries + 1):
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc) or attempt == config.db_retries:
                raise
            log.warning(
                "database error while %s (attempt %d of %d), retrying in %.0fs: %s",
                what,
                attempt + 1,
                config.db_retries + 1,
                delay,
                _short(exc),
            )
            # A shutdown request cuts the wait short; the retry still happens once.
            stop.wait(delay)
            delay = min(delay * 2, 60.0)
    raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    # DBAPI messages can be long and multi-line; the first line carries the reason. SQLAlchemy
    # never puts the URL's password in them.
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class LabellingPass:
    """One pass over the pending photos. Build it, then call :meth:`run`."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        classifier: Classifier,
        config: PassConfig,
        *,
        clock: Clock = utc_now,
        stop: threading.Event | None = None,
        command: str = "run-once",
        worker: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self.source = source
        self.classifier = classifier
        self.config = config
        self.clock = clock
        self.stop = stop or threading.Event()
        self.command = command
        self.worker = (worker or worker_name())[:40]
        self.progress = progress or log.info
        self._abort = threading.Event()
        self._run_id = 0
        self._todo = 0
        self.stage_seconds: dict[str, float] = {}

    # -- transactions ---------------------------------------------------------------------

    def _tx(self, what: str, fn: Callable[[Session], T]) -> T:
        def action() -> T:
            with self.sessions.begin() as session:
                return fn(session)

        return with_retries(action, self.config, self.stop, what)

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> PassSummary:
        started = self.clock()
        t0 = time.monotonic()
        version = self.classifier.version
        run_id = self._tx(
            "starting the run",
            lambda s: repo.start_run(
                s, command=self.command, worker=self.worker, model_version=version, now=started
            ),
        )
        self._run_id = run_id
        summary = PassSummary(run_id=run_id, status="running", model_version=version)
        errors: Counter[str] = Counter()
        try:
            summary.discovered = self._tx("finding new photos", lambda s: self._discover(s, run_id))
            self._todo = self._tx(
                "counting pending photos",
                lambda s: repo.claimable_count(
                    s,
                    now=self.clock(),
                    max_attempts=self.config.max_attempts,
                    run_id=run_id,
                ),
            )
            if self.config.max_rows is not None:
                self._todo = min(self._todo, self.config.max_rows)
            self.progress(f"{self._todo} photos to label ({summary.discovered} new)")
            self._label_all(run_id, summary, errors)
            summary.status = "interrupted" if self.stop.is_set() else "finished"
        except Exception as exc:
            summary.status = "failed"
            errors[f"pass stopped: {type(exc).__name__}: {_short(exc)}"] += 1
            log.error("pass failed: %s", _short(exc))
            raise
        finally:
            summary.seconds = time.monotonic() - t0
            summary.stage_seconds = dict(self.stage_seconds)
            summary.errors = [f"{n}x {msg}" if n > 1 else msg for msg, n in errors.most_common(10)]
            self._finish(summary)
        return summary

    def _discover(self, session: Session, run_id: int) -> int:
        found = repo.discover(session, self.source, self.clock())
        repo.add_run_counts(session, run_id, discovered=found)
        return found

    def _finish(self, summary: PassSummary) -> None:
        try:
            row = self._tx(
                "recording the run",
                lambda s: repo.finish_run(
                    s,
                    summary.run_id,
                    status=summary.status,
                    now=self.clock(),
                    errors="\n".join(summary.errors) or None,
                ),
            )
            summary.released = int(row["released"])  # the producer releases claims too
        except Exception as exc:  # the pass result must still be reported
            log.error("could not record the end of run %d: %s", summary.run_id, _short(exc))
        log.info("%s", summary.line())

    def _label_all(self, run_id: int, summary: PassSummary, errors: Counter[str]) -> None:
        batches: queue.Queue[Any] = queue.Queue(maxsize=1)
        producer = threading.Thread(
            target=self._produce, args=(batches, run_id), name="labeler-prefetch", daemon=True
        )
        producer.start()
        t_start = time.monotonic()
        try:
            while True:
                t_wait = time.monotonic()
                item = batches.get()
                self._time("wait", t_wait)
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if self.stop.is_set():
                    summary.released += self._release(item.token, run_id)
                    continue
                try:
                    counts = self._classify_and_save(item, run_id, errors)
                except BaseException:
                    self._release(item.token, run_id)  # may fail too; then the claims expire
                    raise
                summary.labelled += counts.labelled
                summary.needs_review += counts.needs_review
                summary.failed += counts.failed
                summary.lost += counts.lost
                elapsed = time.monotonic() - t_start
                rate = summary.processed / elapsed if elapsed > 0 else 0.0
                left = max(self._todo - summary.processed, 0)
                eta = f", about {left / rate:.0f}s left" if rate > 0 and left else ""
                self.progress(
                    f"{summary.processed}/{self._todo} photos ({summary.labelled} labelled, "
                    f"{summary.needs_review} need review, {summary.failed} failed; "
                    f"{rate:.1f}/s{eta})"
                )
        finally:
            self._abort.set()
            # Whatever the producer prepared but nobody classified goes back to the pool.
            while producer.is_alive() or not batches.empty():
                try:
                    item = batches.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, PreparedBatch):
                    summary.released += self._release(item.token, run_id)
            producer.join()

    def _release(self, token: str, run_id: int) -> int:
        def action(session: Session) -> int:
            n = repo.release(session, token)
            repo.add_run_counts(session, run_id, released=n)
            return n

        try:
            return self._tx("releasing claims", action)
        except Exception as exc:
            log.error("could not release claims (they expire by themselves): %s", _short(exc))
            return 0

    # -- producer: claim, fetch, decode, preprocess ----------------------------------------

    def _produce(self, batches: queue.Queue[Any], run_id: int) -> None:
        claimed = 0
        try:
            while not (self.stop.is_set() or self._abort.is_set()):
                limit = self.config.batch_size
                if self.config.max_rows is not None:
                    limit = min(limit, self.config.max_rows - claimed)
                    if limit <= 0:
                        break
                token = f"{self.worker}:{uuid.uuid4().hex[:16]}"
                ids = self._tx("claiming photos", partial(self._claim, token, limit, run_id))
                if not ids:
                    break
                claimed += len(ids)
                try:
                    t_prepare = time.monotonic()
                    prepared = self._prepare(token, ids)
                    self._time("prepare", t_prepare)
                except BaseException:
                    self._release(token, self._run_id)
                    raise
                if not self._hand_over(batches, prepared):
                    self._release(token, self._run_id)
                    return
            self._hand_over(batches, _DONE)
        except BaseException as exc:
            self._hand_over(batches, exc)

    def _claim(self, token: str, limit: int, run_id: int, session: Session) -> list[str]:
        return repo.claim(
            session,
            token,
            now=self.clock(),
            ttl=self.config.claim_ttl,
            limit=limit,
            max_attempts=self.config.max_attempts,
            run_id=run_id,
        )

    def _hand_over(self, batches: queue.Queue[Any], item: Any) -> bool:
        while True:
            try:
                batches.put(item, timeout=0.2)
                return True
            except queue.Full:
                if self._abort.is_set():
                    return False

    def _prepare(self, token: str, ids: list[str]) -> PreparedBatch:
        values = self._tx("reading photos", lambda s: repo.fetch_images(s, self.source, ids))
        batch = PreparedBatch(token=token)
        config = self.classifier.artifact.preprocessing
        images: list[np.ndarray] = []
        for photo_id in ids:
            if photo_id not in values:
                batch.failures.append(
                    repo.Outcome(photo_id, FAILED, error="the source row no longer exists")
                )
                continue
            value = values[photo_id]
            ref: str | None = None
            try:
                image, kind = load_image(value, self.config.loader)
                ref = reference_of(value, kind)
                images.append(preprocess_image(image, config))
            except ImageError as exc:
                batch.failures.append(repo.Outcome(photo_id, FAILED, error=str(exc), photo_ref=ref))
                continue
            except MemoryError:
                batch.failures.append(
                    repo.Outcome(photo_id, FAILED, error="photo is too large to process in memory")
                )
                continue
            except Exception as exc:  # one photo must never stop the batch
                batch.failures.append(
                    repo.Outcome(
                        photo_id, FAILED, error=f"cannot process photo: {type(exc).__name__}: {exc}"
                    )
                )
                continue
            batch.ids.append(photo_id)
            batch.refs[photo_id] = ref
        if images:
            batch.inputs = finish_batch(np.stack(images), config)
        return batch

    # -- consumer: classify, decide, save --------------------------------------------------

    def _classify_and_save(
        self, batch: PreparedBatch, run_id: int, errors: Counter[str]
    ) -> repo.SaveCounts:
        outcomes = list(batch.failures)
        if batch.ids and batch.inputs is not None:
            t_classify = time.monotonic()
            predictions = self._predict(batch.inputs)
            self._time("classify", t_classify)
            for photo_id, result in zip(batch.ids, predictions, strict=True):
                ref = batch.refs.get(photo_id)
                if isinstance(result, str):
                    outcomes.append(repo.Outcome(photo_id, FAILED, error=result, photo_ref=ref))
                    continue
                decision = decide(result, self.config.thresholds)
                outcomes.append(
                    repo.Outcome(photo_id, decision.status, result, decision.reason, ref)
                )
        for outcome in outcomes:
            if outcome.status == FAILED and outcome.error:
                errors[outcome.error.split(":")[0][:120]] += 1
        t_save = time.monotonic()
        counts = self._tx(
            "saving results",
            lambda s: repo.save_outcomes(
                s,
                self.source,
                batch.token,
                run_id,
                self.classifier.version,
                outcomes,
                self.clock(),
            ),
        )
        self._time("save", t_save)
        return counts

    def _time(self, stage: str, since: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.monotonic() - since

    def _predict(self, inputs: np.ndarray) -> list[Prediction | str]:
        """Predict a batch; if the model fails on it, isolate the photos it fails on."""
        try:
            return list(self.classifier.predict(inputs))
        except Exception as exc:
            log.warning("classifier failed on a batch (%s); retrying photo by photo", _short(exc))
        results: list[Prediction | str] = []
        for i in range(inputs.shape[0]):
            try:
                results.append(self.classifier.predict(inputs[i : i + 1])[0])
            except Exception as exc:
                results.append(f"classifier error: {type(exc).__name__}: {_short(exc)}")
        return results
