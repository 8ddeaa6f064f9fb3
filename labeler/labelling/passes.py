"""A labelling pass: wires source -> image loading -> preprocessing -> classifier -> decision ->
write-back, batch by batch, against a :class:`~labeler.store.seam.Store`. The per-batch stages are
the functions of :mod:`labeler.labelling.batches`; this module orders them and owns the run.

While the calling thread classifies and saves batch N, the next ``prefetch_batches`` batches
are claimed, read and prepared on threads of their own (futures), their photos fetched,
decoded and preprocessed on a decode pool of ``decode_threads``. Each batch's results
are written in one transaction, so a crash leaves every row untouched (its claim then expires)
or fully labelled.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from labeler.config.logging_setup import summary_fields
from labeler.config.settings import setting_default
from labeler.core.domain import PhotoStatus, Prediction, RunStatus, SaveCounts, SourceRow
from labeler.decide.decision import Thresholds
from labeler.decide.grouping import SCORES_K
from labeler.labelling.batches import (
    PreparedBatch,
    classify,
    outcome_of,
    prepare_batch,
    read_rows,
    with_content,
    with_group,
)
from labeler.model.preprocessing import PreprocessingConfig
from labeler.model.runtime import available_cores
from labeler.photos.fetching import LoaderConfig
from labeler.store.engine import short_error as _short
from labeler.store.engine import utc_now
from labeler.store.seam import Refused, SourceChanged, Store, TargetLocked
from labeler.store.writeback import WRITE_DENIED, GroupPolicy

__all__ = ["LabellingPass", "PassConfig", "PassSummary", "SourceChanged", "worker_name"]

log = logging.getLogger("labeler.pass")

LOCKED_ROWS = (
    "a photo's source row stayed locked by another session past "
    "LABELER_TARGET_LOCK_TIMEOUT_SECONDS: its result was not saved or written back, no attempt "
    "spent; it is labelled at the next pass"
)
MAX_DEFAULT_DECODERS = 8
# What an animal counts as in the pass's summary when its record stayed locked.
LOCKED = "locked (tried again next pass)"
Clock = Callable[[], datetime]


def decode_thread_count(setting: int) -> int:
    """LABELER_DECODE_THREADS as a pass uses it: unset (0), one per core, at most
    MAX_DEFAULT_DECODERS, since each thread holds a decoded full-size photo in memory."""
    return setting or min(available_cores(), MAX_DEFAULT_DECODERS)


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


class _Artifact(Protocol):
    @property
    def preprocessing(self) -> PreprocessingConfig: ...


class BatchClassifier(Protocol):
    """What the pass needs of a classifier (labeler.model.classifier.Classifier has it)."""

    @property
    def version(self) -> str: ...

    @property
    def runtime_name(self) -> str: ...

    @property
    def artifact(self) -> _Artifact: ...

    def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]: ...


@dataclass(frozen=True)
class PassConfig:
    # Defaults are the settings' (labeler.config.settings); app.pass_config maps a Settings in.
    batch_size: int = setting_default("batch_size")
    max_attempts: int = setting_default("max_attempts")
    claim_ttl: timedelta = timedelta(seconds=setting_default("claim_ttl_seconds"))
    max_rows: int | None = setting_default("max_rows_per_pass")
    db_retries: int = setting_default("db_connect_retries")
    db_backoff_seconds: float = setting_default("db_retry_backoff_seconds")
    thresholds: Thresholds = field(default_factory=Thresholds)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    # batches prepared ahead of the one being classified
    prefetch_batches: int = setting_default("prefetch_batches")
    decode_threads: int = setting_default("decode_threads")  # 0: one per core
    group_disagreement: float = setting_default("group_disagreement")


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
    # Time spent per stage, summed over threads: batches are prepared (claim, read, prepare;
    # prepare includes read) side by side and beside classify+save, so the sum can exceed
    # `seconds`.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    errors: list[str] = field(default_factory=list)
    runtime: str = ""  # the inference runtime: keras or onnxruntime
    gone: int = 0  # photos that vanished from the source or stopped matching its filter
    locked: int = 0  # photos whose source row stayed locked: labelled at the next pass
    animals: dict[str, int] = field(default_factory=dict)  # animals per status

    @property
    def processed(self) -> int:
        return self.labelled + self.needs_review + self.failed

    def add(self, counts: SaveCounts) -> None:
        self.labelled += counts.labelled
        self.needs_review += counts.needs_review
        self.failed += counts.failed
        self.lost += counts.lost
        self.gone += counts.gone
        self.locked += counts.locked

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"run {self.run_id} {self.status}: {self.processed} photos in {self.seconds:.1f}s "
            f"({rate:.1f}/s) - {self.labelled} labelled, {self.needs_review} need review, "
            f"{self.failed} failed, {self.discovered} new, {self.released} released, "
            f"{self.lost} lost claims; model {self.model_version}"
            + (f" on {self.runtime}" if self.runtime else "")
            + (f"; {self.gone} gone" if self.gone else "")
            + (f"; {self.locked} locked" if self.locked else "")
            + (
                "; animals: " + ", ".join(f"{n} {s}" for s, n in sorted(self.animals.items()))
                if self.animals
                else ""
            )
        )


class LabellingPass:
    """One pass over the pending photos. Build it, then call :meth:`run`."""

    def __init__(
        self,
        store: Store,
        classifier: BatchClassifier,
        config: PassConfig,
        *,
        clock: Clock = utc_now,
        stop: threading.Event | None = None,
        command: str = "run-once",
    ) -> None:
        self.store = store
        self.grouped = store.grouped
        self.classifier = classifier
        self.config = config
        self.clock = clock
        self.stop = stop or threading.Event()
        self.command = command
        self.worker = worker_name()[:40]
        self.progress = log.info
        self.stage_seconds: dict[str, float] = {}
        self._run_id = 0
        self._todo = 0
        self._claimed = 0
        # Set when the pass winds down early: the batch being prepared stops decoding.
        self._closing = False
        self._decoders: ThreadPoolExecutor | None = None  # prepares a batch's photos
        self._claiming = threading.Lock()
        self._timing = threading.Lock()
        self._animals: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        # SQLite locks the whole database: once a write timed out, the others would too.
        self._database_locked = False
        # Animals whose record stayed locked, or may not be written: not tried again after
        # each batch of this pass, but at the next pass.
        self._locked: set[str] = set()
        self._denied_reported = False

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> PassSummary:
        started = self.clock()
        t0 = time.monotonic()
        version = self.classifier.version
        runtime = self.classifier.runtime_name
        # The run row's worker says which inference runtime ran (labeler.model.runtime).
        run_id = self.store.start_run(
            command=self.command,
            worker=f"{self.worker} {runtime}",
            model_version=version,
            now=started,
        )
        self._run_id = run_id
        summary = PassSummary(
            run_id=run_id, status=RunStatus.RUNNING, model_version=version, runtime=runtime
        )
        try:
            self.store.check_source()
            summary.discovered = self.store.discover(run_id, self.clock())
            if self.grouped:
                self._sync_staff_decisions()
            self._todo = self.store.claimable_count(
                run_id=run_id, now=self.clock(), max_attempts=self.config.max_attempts
            )
            if self.config.max_rows is not None:
                self._todo = min(self._todo, self.config.max_rows)
            self.progress(f"{self._todo} photos to label ({summary.discovered} new)")
            self._label_all(summary)
            if self.grouped and not self.stop.is_set():
                self._settle_groups()
            summary.animals = dict(self._animals)
            summary.status = RunStatus.INTERRUPTED if self.stop.is_set() else RunStatus.FINISHED
        except Exception as exc:
            summary.status = RunStatus.FAILED
            self._errors[f"pass stopped: {type(exc).__name__}: {_short(exc)}"] += 1
            log.error("pass failed: %s", _short(exc), extra={"run_id": run_id})
            raise
        finally:
            summary.seconds = time.monotonic() - t0
            summary.stage_seconds = dict(self.stage_seconds)
            summary.errors = [
                f"{n}x {msg}" if n > 1 else msg for msg, n in self._errors.most_common(10)
            ]
            self._finish(summary)
        return summary

    def _finish(self, summary: PassSummary) -> None:
        try:
            row = self.store.finish_run(
                summary.run_id,
                status=summary.status,
                now=self.clock(),
                errors="\n".join(summary.errors) or None,
            )
            summary.released = int(row["released"])  # every release of the run, prepared too
        except Exception as exc:  # the pass result must still be reported
            log.error(
                "could not record the end of run %d: %s",
                summary.run_id,
                _short(exc),
                extra={"run_id": summary.run_id},
            )
        log.info("%s", summary.line(), extra=summary_fields(summary))

    # -- batches: prepared one ahead, classified and saved here ------------------------------

    def _label_all(self, summary: PassSummary) -> None:
        ahead: deque[Future[PreparedBatch | None]] = deque()
        # Each batch ahead is prepared on its own thread: one reads its rows from the database
        # while another's photos are being decoded on the decode pool.
        pool = ThreadPoolExecutor(
            max_workers=self.config.prefetch_batches, thread_name_prefix="labeler-prefetch"
        )
        threads = decode_thread_count(self.config.decode_threads)
        self._decoders = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labeler-decode")
            if threads > 1
            else None
        )
        t_start = time.monotonic()
        # Batches with photos whose source row stayed locked: their claims are held to the
        # end of the pass (so the pass does not try them again and wait again), then given back.
        held_back: list[str] = []
        try:
            ahead.append(pool.submit(self._next_batch))
            exhausted = False
            while ahead:
                t_wait = time.monotonic()
                # A preparation that failed raises here (it released its own claims). The
                # future leaves `ahead` only once its batch is in hand, to be released below.
                batch = ahead[0].result()
                ahead.popleft()
                self._time("wait", t_wait)
                if batch is None:
                    # Nothing (more) to claim; batches claimed beside this one still count.
                    exhausted = True
                    continue
                if self.stop.is_set():
                    summary.released += self._release(batch.token)
                    break
                while not exhausted and len(ahead) < self.config.prefetch_batches:
                    ahead.append(pool.submit(self._next_batch))
                try:
                    counts = self._classify_and_save(batch)
                except BaseException:
                    self._release(batch.token)  # may fail too; then the claims expire
                    raise
                summary.add(counts)
                if counts.locked:
                    held_back.append(batch.token)
                self._report_progress(summary, time.monotonic() - t_start)
        finally:
            self._closing = True
            for token in held_back:
                summary.released += self._release(token)
            # Whatever was prepared but not classified goes back to the pool.
            for future in ahead:
                if future.cancel():
                    continue  # never started: it claimed nothing
                try:
                    batch = future.result()
                except BaseException as exc:  # it released its own claims
                    log.debug("a batch prepared while winding down failed: %s", _short(exc))
                    continue
                if batch is not None:
                    summary.released += self._release(batch.token)
            pool.shutdown(wait=True)
            if self._decoders is not None:
                self._decoders.shutdown(wait=True)

    def _report_progress(self, summary: PassSummary, elapsed: float) -> None:
        rate = summary.processed / elapsed if elapsed > 0 else 0.0
        left = max(self._todo - summary.processed, 0)
        eta = f", about {left / rate:.0f}s left" if rate > 0 and left else ""
        self.progress(
            f"{summary.processed}/{self._todo} photos ({summary.labelled} labelled, "
            f"{summary.needs_review} need review, {summary.failed} failed; "
            f"{rate:.1f}/s{eta})"
        )

    def _release(self, token: str) -> int:
        try:
            return self.store.release(token, self._run_id)
        except Exception as exc:
            log.error("could not release claims (they expire by themselves): %s", _short(exc))
            return 0

    def _cancelled(self) -> bool:
        return self.stop.is_set() or self._closing

    # -- preparation (worker thread): claim, fetch, decode, preprocess ------------------------

    def _next_batch(self) -> PreparedBatch | None:
        """Claim and prepare the next batch; None when there is nothing (more) to do."""
        if self._cancelled():
            return None
        token = f"{self.worker}:{uuid.uuid4().hex[:16]}"
        with self._claiming:  # batches are prepared side by side: --max-rows holds for all
            limit = self.config.batch_size
            if self.config.max_rows is not None:
                limit = min(limit, self.config.max_rows - self._claimed)
                if limit <= 0:
                    return None
            t_claim = time.monotonic()
            ids = self.store.claim(
                token,
                run_id=self._run_id,
                now=self.clock(),
                ttl=self.config.claim_ttl,
                limit=limit,
                max_attempts=self.config.max_attempts,
            )
            self._time("claim", t_claim)  # database time: claim, read and save stages
            self._claimed += len(ids)
        if not ids:
            return None
        try:
            t_prepare = time.monotonic()
            rows, unreadable = read_rows(self._read, ids)
            prepared = prepare_batch(
                token,
                ids,
                rows,
                unreadable,
                loader=self.config.loader,
                preprocessing=self.classifier.artifact.preprocessing,
                cancel=self._cancelled,
                pool=self._decoders,
            )
            self._time("prepare", t_prepare)
        except BaseException:
            self._release(token)
            raise
        return prepared

    def _read(self, ids: list[str]) -> dict[str, SourceRow]:
        t_read = time.monotonic()
        rows = self.store.fetch_rows(ids)
        self._time("read", t_read)
        return rows

    # -- classify, decide, save (calling thread) ---------------------------------------------

    def _classify_and_save(self, batch: PreparedBatch) -> SaveCounts:
        outcomes = list(batch.failures)
        if batch.ids and batch.inputs is not None:
            t_classify = time.monotonic()
            results = classify(self.classifier, batch.inputs, SCORES_K if self.grouped else 3)
            self._time("classify", t_classify)
            thresholds, version = self.config.thresholds, self.classifier.version
            for photo_id, result in zip(batch.ids, results, strict=True):
                ref = batch.refs.get(photo_id)
                outcomes.append(outcome_of(photo_id, result, ref, thresholds, version))
        if self.grouped:
            outcomes = [with_group(o, batch.rows.get(o.photo_id)) for o in outcomes]
        outcomes = [with_content(o, batch) for o in outcomes]
        for outcome in outcomes:
            if outcome.status == PhotoStatus.FAILED and outcome.error:
                self._errors[outcome.error.split(":")[0][:120]] += 1
                log.info(
                    "photo %s failed: %s",
                    outcome.photo_id,
                    outcome.error,
                    extra={"run_id": self._run_id, "photo_id": outcome.photo_id},
                )
        t_save = time.monotonic()
        counts = self.store.save_outcomes(
            batch.token, self._run_id, self.classifier.version, outcomes, self.clock()
        )
        self._time("save", t_save)
        if counts.locked:
            self._errors[LOCKED_ROWS] += counts.locked
        if counts.groups and not self.stop.is_set():
            self._settle_groups()
        return counts

    def _time(self, stage: str, since: float) -> None:
        spent = time.monotonic() - since
        with self._timing:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + spent

    # -- one answer per animal ------------------------------------------------

    def _sync_staff_decisions(self) -> None:
        """Breeds staff set in their own UI, and reviewed breeds set on labeler's side."""
        found = self.store.sync_staff(self.clock())
        if found:
            self.progress(f"{found} animals got a breed from staff since the last pass")
        for row in self.store.reviewed_groups(100_000, self.config.max_attempts):
            if self._database_locked:
                break
            if str(row["group_id"]) in self._locked:
                continue
            status = self._group_step(
                "writing a reviewed breed",
                str(row["group_id"]),
                lambda r=row: self.store.apply_review(r, self.clock()),  # type: ignore[misc]
            )
            self._animals[f"review {status}"] += 1

    def _settle_groups(self) -> None:
        """Decide every animal none of whose photos is still waiting."""
        seen: set[str] = set()
        # A database-wide lock is tried again once per round (after each batch), not per animal.
        self._database_locked = False
        policy = GroupPolicy(
            self.config.thresholds, self.config.group_disagreement, self.config.max_attempts
        )
        while not self.stop.is_set():
            ids = self.store.ready_groups(
                run_id=self._run_id,
                max_attempts=self.config.max_attempts,
                now=self.clock(),
                limit=100,
            )
            ids = [g for g in ids if g not in seen and g not in self._locked]
            if not ids:
                return
            seen.update(ids)
            for group_id in ids:
                if self._database_locked:
                    return  # every other animal would wait as long: the next pass decides them
                status = self._group_step(
                    "deciding an animal",
                    group_id,
                    lambda g=group_id: self.store.settle_group(  # type: ignore[misc]
                        g,
                        policy,
                        model_version=self.classifier.version,
                        run_id=self._run_id,
                        now=self.clock(),
                    ),
                )
                self._animals[status] += 1

    def _group_step(self, what: str, group_id: str, step: Callable[[], str]) -> str:
        """One animal in its own transaction: a record the target refuses fails this animal
        with the reason; the pass goes on."""
        try:
            status = step()
        except TargetLocked as exc:
            # Not the animal's fault and nothing changed: no attempt, no failure; it is still
            # pending (or its review unwritten) and the next pass tries again.
            extra = {"run_id": self._run_id, "animal": group_id}
            log.warning("animal %s: %s failed: %s", group_id, what, exc, extra=extra)
            self._errors[f"animal: {what}: {exc}"[:200]] += 1
            self._database_locked = self._database_locked or exc.database_wide
            self._locked.add(group_id)
            return LOCKED
        except Refused as exc:
            reason = f"{what} failed: {exc}"
            extra = {"run_id": self._run_id, "animal": group_id}
            log.warning("animal %s: %s", group_id, reason, extra=extra)
            self._errors[f"animal: {reason}"[:120]] += 1
            self.store.fail_group(group_id, reason, run_id=self._run_id, now=self.clock())
            return PhotoStatus.FAILED
        if status == WRITE_DENIED:
            # Every animal would say the same: once per pass in the log and the run's errors;
            # each animal's last_error has the database's words.
            self._locked.add(group_id)
            if not self._denied_reported:
                self._denied_reported = True
                message = (
                    "the database user may not update the target (LABELER_TARGET_TABLE): "
                    "answers are kept and written at the next pass once UPDATE is granted "
                    "(see `labeler check` and the animals' last_error)"
                )
                log.error("%s", message, extra={"run_id": self._run_id})
                self._errors[message] += 1
        return status
