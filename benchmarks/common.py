"""Shared set-up for the benchmark scripts: a seeded shelter database and a model artifact."""

from __future__ import annotations

import os
import resource
import sys
from itertools import cycle, islice
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import (  # noqa: E402
    SHARED,
    build_tiny_artifact,
    create_photos,
    fresh_database,
    fullframe_photos,
)

MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"

__all__ = ["build_tiny_artifact", "fresh_database", "mobilenet_artifact", "peak_rss_mib", "seed"]


def seed(engine, rows: int, kind: str = "bytes") -> None:  # type: ignore[no-untyped-def]
    """``rows`` source rows holding the real full-frame sample photos, cycled."""
    photos = [p.read_bytes() for p in fullframe_photos()]
    create_photos(
        engine,
        kind,
        (
            {"id": i + 1, "species": "dog", "photo": data}
            for i, data in enumerate(islice(cycle(photos), rows))
        ),
    )


def mobilenet_artifact(directory: Path) -> Path:
    """A real ImageNet MobileNetV2 backbone with an untrained 120-way head: real cost, fake labels.

    Written under a temporary directory: it contains the shared weights and must never be committed.
    """
    import keras

    from labeler.artifact import save_artifact
    from labeler.model_layers import ImagenetPreprocess
    from labeler.preprocessing import PreprocessingConfig
    from tests.helpers import breed_names

    backbone = keras.applications.MobileNetV2(
        weights=str(MOBILENET_WEIGHTS), include_top=False, input_shape=(224, 224, 3), pooling="avg"
    )
    inputs = keras.Input((224, 224, 3))
    x = ImagenetPreprocess("tf")(inputs)
    outputs = keras.layers.Dense(120, activation="softmax")(backbone(x))
    save_artifact(
        directory,
        keras.Model(inputs, outputs),
        breed_names(),
        PreprocessingConfig(image_size=(224, 224)),
        name="bench-mobilenetv2",
        kind="test",
        quality_note="benchmark only: untrained head",
    )
    return directory


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
