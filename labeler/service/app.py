"""Assembly: turns settings into the objects a pass needs.

Called from ``main()``, never at import."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from labeler.config.settings import ConfigError, Settings
from labeler.decide.decision import Thresholds, resolve_thresholds
from labeler.labelling.passes import LabellingPass, PassConfig, PassSummary
from labeler.model.artifact import Artifact
from labeler.model.classifier import Classifier
from labeler.photos.decoding import DecodeLimits
from labeler.photos.fetching import LoaderConfig
from labeler.shelter.source import Source, SourceError, reflect_source
from labeler.shelter.target import Target, reflect_target
from labeler.store import evidence, migrate, runs, source_rows
from labeler.store.engine import RetryPolicy, make_engine, session_factory, utc_now, with_retries
from labeler.store.seam import SqlStore
from labeler.store.source_rows import ImageLimit

log = logging.getLogger("labeler")


def loader_config(settings: Settings) -> LoaderConfig:
    return LoaderConfig(
        kind=settings.image_kind,
        photo_root=settings.photo_root,
        allowed_hosts=frozenset(settings.url_allowed_hosts),
        url_timeout=settings.url_timeout_seconds,
        max_bytes=settings.max_image_bytes,
        decode_limits=DecodeLimits(
            max_pixels=settings.max_image_pixels,
            max_jpeg_scans=settings.max_jpeg_scans,
            decode_seconds=settings.decode_seconds,
        ),
    )


def pass_config(settings: Settings, thresholds: Thresholds) -> PassConfig:
    return PassConfig(
        batch_size=settings.batch_size,
        max_attempts=settings.max_attempts,
        claim_ttl=timedelta(seconds=settings.claim_ttl_seconds),
        max_rows=settings.max_rows_per_pass,
        db_retries=settings.db_connect_retries,
        db_backoff_seconds=settings.db_retry_backoff_seconds,
        thresholds=thresholds,
        loader=loader_config(settings),
        prefetch_batches=settings.prefetch_batches,
        decode_threads=settings.decode_threads,
        group_disagreement=settings.group_disagreement,
    )


def load_classifier(settings: Settings, model_dir: Path | None = None) -> Classifier:
    """The model with the runtime that settings ask for (see labeler.model.runtime)."""
    return Classifier.load(
        model_dir or settings.model_dir,
        runtime=settings.runtime,
        cache_dir=settings.runtime_cache_dir,
        threads=settings.inference_threads,
    )


def thresholds_in_force(settings: Settings, session: Session, artifact: Artifact) -> Thresholds:
    """The decision thresholds now: settings, else calibrated for this model version (stored
    by `labeler calibrate --apply`), else the artifact's."""

    calibrated = evidence.calibrated_threshold(session, artifact.version)
    return resolve_thresholds(
        artifact,
        settings.review_threshold,
        settings.review_margin,
        calibrated=calibrated,
        audit_share=settings.audit_share,
    )


@dataclass
class Service:
    """Everything a pass needs, built once per process."""

    settings: Settings
    engine: Engine
    classifier: Classifier
    thresholds: Thresholds

    @classmethod
    def build(cls, settings: Settings) -> Service:
        check_photo_root(settings)  # before the model load: fail in a second, not a minute
        classifier = load_classifier(settings)
        thresholds = resolve_thresholds(
            classifier.artifact,
            settings.review_threshold,
            settings.review_margin,
            audit_share=settings.audit_share,
        )
        return cls(settings, make_engine(settings), classifier, thresholds)

    def thresholds_in_force(self, stop: threading.Event | None = None) -> Thresholds:
        """Read at every pass, so `labeler calibrate --apply` takes effect without a restart."""

        def action() -> Thresholds:
            with session_factory(self.engine)() as session:
                return thresholds_in_force(self.settings, session, self.classifier.artifact)

        settings = self.settings
        policy = RetryPolicy(settings.db_connect_retries, settings.db_retry_backoff_seconds)
        return with_retries(action, policy, stop or threading.Event(), "reading the thresholds")

    def probe(self) -> str:
        """Database reachable, schema at head, source readable: raise with the reason if not."""
        head = schema_at_head(self.engine)
        source = self.source()
        check_photo_root(self.settings)
        check_filter_matches(self.engine, source)
        return f"database reachable, schema at {head}, source {source.table.fullname} readable"

    def source(self) -> Source:
        with self.engine.connect() as conn:
            return reflect_source(conn, self.settings)

    def run_pass(
        self,
        *,
        command: str = "run-once",
        stop: threading.Event | None = None,
    ) -> PassSummary:
        # A photo root that vanished (an unmounted share) must stop the pass, not fail every
        # row until max attempts retires them all.
        check_photo_root(self.settings)
        self.abandon_dead_runs(stop or threading.Event())
        source = self.source()
        try:
            check_filter_matches(self.engine, source)
        except SourceError as exc:  # maybe no dogs in the shelter today: say so, label nothing
            log.warning("%s", exc)
        stop = stop or threading.Event()
        config = pass_config(self.settings, self.thresholds_in_force(stop))
        store = SqlStore(
            self.engine,
            source,
            self.target(),  # the animal's record, when configured
            retry=RetryPolicy(config.db_retries, config.db_backoff_seconds),
            stop=stop,
            # oversized photos are measured by the database and never read
            image_limit=ImageLimit(self.settings.max_image_bytes, self.settings.image_kind),
            writeback_lock_timeout=self.settings.target_lock_timeout_seconds,
        )
        labelling = LabellingPass(store, self.classifier, config, stop=stop, command=command)
        return labelling.run()

    def target(self) -> Target | None:
        """The write-back target and its breed map, or None when not set."""
        with self.engine.connect() as conn:
            return reflect_target(conn, self.settings)

    def abandon_dead_runs(self, stop: threading.Event) -> list[int]:
        """Close the runs of passes that were killed (SIGKILL, a power cut) as `abandoned`."""

        ttl = timedelta(seconds=self.settings.claim_ttl_seconds)

        def action() -> list[int]:
            with session_factory(self.engine).begin() as session:
                return runs.abandon_dead_runs(session, now=utc_now(), claim_ttl=ttl)

        settings = self.settings
        policy = RetryPolicy(settings.db_connect_retries, settings.db_retry_backoff_seconds)
        run_ids = with_retries(action, policy, stop, "closing abandoned runs")
        for run_id in run_ids:
            log.warning(
                "run %d was left `running` by a pass that was killed; marked abandoned",
                run_id,
                extra={"run_id": run_id},
            )
        return run_ids


# --- start-up checks and the container health check -------------------------------------------


def check_photo_root(settings: Settings) -> str:
    """Raise ConfigError unless LABELER_PHOTO_ROOT (when set) is a readable folder."""
    root = settings.photo_root
    if root is None:
        return "not set (photos are not read from files)"
    problem = None
    if not root.exists():
        problem = "does not exist"
    elif not root.is_dir():
        problem = "is not a folder"
    elif not os.access(root, os.R_OK | os.X_OK):
        problem = "is not readable by this user"
    else:
        try:
            with os.scandir(root) as entries:
                next(entries, None)
        except OSError as exc:
            problem = f"cannot be listed ({exc.strerror or exc})"
    if problem:
        raise ConfigError(f"LABELER_PHOTO_ROOT={str(root)!r} {problem}")
    return f"{root} readable"


def check_filter_matches(engine: Engine, source: Source) -> str:
    """SourceError when the source has rows but none passes the filter: a misspelt value
    ("Dog" for "dog") would otherwise label nothing, night after night, without a word."""

    if not (source.filter_column and source.filter_values):
        return "no filter"
    with session_factory(engine)() as session:
        has_rows, matching = source_rows.filter_matches(session, source)
    values = ",".join(source.filter_values)
    if has_rows and not matching:
        raise SourceError(
            f"LABELER_SOURCE_FILTER_VALUES={values!r} matches no row of "
            f"{source.table.fullname!r} (LABELER_SOURCE_FILTER_COLUMN={source.filter_column!r}); "
            "check the spelling and upper/lower case"
        )
    return f"{source.filter_column} in ({values})" + ("" if has_rows else ": the source is empty")


def schema_at_head(engine: Engine) -> str:
    """The schema revision, or RuntimeError when it is not the one the code expects."""

    current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    if current != head:
        raise RuntimeError(
            f"database schema is at {current or 'nothing'}, the code expects {head}: "
            "run `labeler db upgrade`"
        )
    return str(head)


def health(settings: Settings) -> str:
    """Database reachable and schema at head; cheap (no model, no source scan) so that a
    container health check can run it every few minutes."""
    engine = make_engine(settings)
    try:
        head = schema_at_head(engine)
    finally:
        engine.dispose()
    return f"healthy: database reachable, schema at {head}"
