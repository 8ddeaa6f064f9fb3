"""Assembly: turns settings into the objects a pass needs.

Called from ``main()``, never at import."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from labeler.classifier import Classifier
from labeler.db import make_engine
from labeler.decision import Thresholds, resolve_thresholds
from labeler.images import LoaderConfig
from labeler.labelling import Clock, LabellingPass, PassConfig, PassSummary, utc_now
from labeler.settings import Settings
from labeler.source import Source, reflect_source

log = logging.getLogger("labeler")


def loader_config(settings: Settings) -> LoaderConfig:
    return LoaderConfig(
        kind=settings.image_kind,
        photo_root=settings.photo_root,
        allowed_hosts=frozenset(settings.url_allowed_hosts),
        url_timeout=settings.url_timeout_seconds,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
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
    )


@dataclass
class Service:
    """Everything a pass needs, built once per process."""

    settings: Settings
    engine: Engine
    classifier: Classifier
    thresholds: Thresholds

    @classmethod
    def build(cls, settings: Settings, engine: Engine | None = None) -> Service:
        classifier = Classifier.load(settings.model_dir)
        thresholds = resolve_thresholds(
            classifier.artifact, settings.review_threshold, settings.review_margin
        )
        return cls(settings, engine or make_engine(settings), classifier, thresholds)

    def probe(self) -> str:
        """Database reachable, schema at head, source readable: raise with the reason if not."""
        from labeler import migrate

        current, head = migrate.current_revision(self.engine), migrate.head_revision(self.engine)
        if current != head:
            raise RuntimeError(
                f"database schema is at {current or 'nothing'}, the code expects {head}: "
                "run `labeler db upgrade`"
            )
        source = self.source()
        return f"database reachable, schema at {head}, source {source.table.fullname} readable"

    def source(self) -> Source:
        with self.engine.connect() as conn:
            return reflect_source(conn, self.settings)

    def run_pass(
        self,
        *,
        command: str = "run-once",
        stop: threading.Event | None = None,
        clock: Clock = utc_now,
    ) -> PassSummary:
        labelling = LabellingPass(
            self.engine,
            self.source(),
            self.classifier,
            pass_config(self.settings, self.thresholds),
            clock=clock,
            stop=stop,
            command=command,
        )
        return labelling.run()
