"""Shared set-up for the benchmark scripts: a seeded shelter database and a model artifact."""

from __future__ import annotations

import os
import resource
import sys
from itertools import cycle, islice
from pathlib import Path

from sqlalchemy import Engine

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

__all__ = [
    "build_tiny_artifact",
    "fresh_database",
    "mobilenet_artifact",
    "peak_rss_mib",
    "phone_jpegs",
    "sample_photos",
    "seed",
]
PHONE_SIZE = (4032, 3024)  # 12 megapixels, what a phone camera stores


def seed(engine: Engine, rows: int, kind: str = "bytes", photos: list[bytes] | None = None) -> None:
    """``rows`` source rows holding ``photos`` (default: the full-frame sample), cycled."""
    photos = photos or sample_photos()
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

    from labeler.model.artifact import save_artifact
    from labeler.model.keras_layers import ImagenetPreprocess
    from labeler.model.preprocessing import PreprocessingConfig
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
    """Peak resident memory of this process image.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started by a big
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_photos() -> list[bytes]:
    """The full-frame sample as stored JPEG bytes (about 426x320, 25 KB each)."""
    return [p.read_bytes() for p in fullframe_photos()]


def phone_jpegs(count: int, size: tuple[int, int] = PHONE_SIZE, quality: int = 90) -> list[bytes]:
    """``count`` 12-megapixel JPEGs made from the sample photos, like a phone's uploads.

    Each sample photo is upscaled to ``size`` (landscape or portrait, as the photo is) and
    given mild sensor-like noise: a smooth upscale compresses to a fraction of a phone file,
    and decoding time follows the amount of entropy-coded data.
    """
    import io

    from PIL import Image, ImageChops

    out = []
    for path in fullframe_photos()[:count]:
        with Image.open(path) as photo:
            rgb = photo.convert("RGB")
        wide, high = size if rgb.width >= rgb.height else size[::-1]
        big = rgb.resize((wide, high), Image.Resampling.BICUBIC)
        # Pillow's Gaussian noise is centred on 128: adding it with offset -128 adds +-noise.
        noise = Image.effect_noise((wide, high), 4.0).convert("RGB")
        buf = io.BytesIO()
        ImageChops.add(big, noise, 1.0, -128).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
