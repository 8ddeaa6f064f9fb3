"""LABELER_MAX_JPEG_SCANS and LABELER_DECODE_SECONDS reach the decoder through the loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from labeler.config.settings import Settings
from labeler.photos.decoding import ImageError
from labeler.photos.fetching import load_image
from labeler.service.app import loader_config


def progressive_jpeg() -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", progressive=True, quality=90)
    return out.getvalue()


def settings(**values: object) -> Settings:
    return Settings.model_validate({"database_url": "sqlite://", "image_kind": "bytes", **values})


def test_the_scan_limit_is_a_setting() -> None:
    data = progressive_jpeg()  # libjpeg's progressive script: about 10 scans
    image, _ = load_image(data, loader_config(settings()))
    assert image.shape == (600, 800, 3)
    with pytest.raises(ImageError, match="more than 5 scans"):
        load_image(data, loader_config(settings(max_jpeg_scans=5)))


def test_the_decode_budget_is_a_setting() -> None:
    with pytest.raises(ImageError, match="longer than 1e-06 s to decode"):
        load_image(progressive_jpeg(), loader_config(settings(decode_seconds=1e-6)))


@pytest.mark.parametrize("name, value", [("max_jpeg_scans", 0), ("decode_seconds", 0)])
def test_nonsense_bounds_are_refused_at_start_up(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        settings(**{name: value})
