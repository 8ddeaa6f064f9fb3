"""Failures inside the model fail only the photos they concern; the batch goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from labeler.config.settings import Settings
from labeler.model.classifier import Classifier
from labeler.service.app import Service
from labeler.store import migrate
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, photo, run
from tests.helpers import create_photos, png_bytes


class FlakyModel:
    """Wraps the real model; raises for any batch containing a nearly white photo."""

    def __init__(self, model: Any, error: type[BaseException]) -> None:
        self.model, self.error = model, error
        self.input_shape, self.output_shape = model.input_shape, model.output_shape

    def predict_on_batch(self, batch: np.ndarray) -> Any:
        if (batch.reshape(batch.shape[0], -1).mean(axis=1) > 240).any():
            raise self.error("simulated failure inside the model")
        return self.model.predict_on_batch(batch)


def test_model_exceptions_fail_only_their_photos(tmp_path: Path, tiny_artifact: Path) -> None:
    for error in (RuntimeError, MemoryError):
        url = f"sqlite:///{tmp_path / f'{error.__name__}.db'}"
        settings = Settings(
            database_url=url,
            source_table="animals",
            source_image_column="photo",
            model_dir=tiny_artifact,
            batch_size=8,
        )
        service = Service.build(settings)
        real = service.classifier
        service.classifier = Classifier(real.artifact, FlakyModel(real.model, error))
        white = {3, 11, 12}
        rows = [
            {
                "id": i,
                "photo": png_bytes((255, 255, 255) if i in white else (i * 10, 90, 200 - i * 5)),
            }
            for i in range(1, 21)
        ]
        create_photos(service.engine, "bytes", rows)
        migrate.upgrade(service.engine)
        summary = service.run_pass()
        with service.engine.connect() as conn:
            got = {int(r.photo_id): r for r in conn.execute(select(photo))}
            run_row = conn.execute(select(run)).one()
        assert {i for i, r in got.items() if r.status == FAILED} == white
        assert all(f"classifier error: {error.__name__}" in got[i].last_error for i in white)
        assert all(got[i].status in (LABELLED, NEEDS_REVIEW) for i in got if i not in white)
        assert summary.status == "finished" and run_row.failed == len(white)
        service.engine.dispose()
