"""PreprocessingConfig owns its serialisation: the artifact and the caches only call it."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np
import pytest

from labeler.model.preprocessing import PreprocessingConfig, fit_whitening


def test_round_trip_through_json_is_identity() -> None:
    config = PreprocessingConfig(
        image_size=(48, 64), resize_mode="pad", grayscale=True, equalize=True
    )
    raw = json.loads(json.dumps(config.to_dict()))
    assert PreprocessingConfig.from_dict(raw) == config
    assert set(raw) == {f.name for f in fields(PreprocessingConfig)} - {"whitening"}


def test_missing_keys_take_the_field_defaults() -> None:
    assert PreprocessingConfig.from_dict({}) == PreprocessingConfig()
    assert PreprocessingConfig.from_dict({"equalize": True}).image_size == (224, 224)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sharpen": True}, r"unknown preprocessing field\(s\) \['sharpen'\]"),
        ({"image_size": [64]}, "image_size must be a list of 2"),
        ({"image_size": [64, "64"]}, "image_size must be int"),
        ({"image_size": [True, 64]}, "image_size must be int"),
        ({"resize_mode": "zoom"}, "unknown resize_mode 'zoom'"),
        ({"grayscale": 1}, "grayscale must be bool"),
    ],
)
def test_bad_values_are_refused_by_name(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessingConfig.from_dict(raw)


@dataclass(frozen=True)
class _WithNewOption(PreprocessingConfig):
    """A stand-in for the next preprocessing option: declared once, nothing else edited."""

    sharpen: float = 0.0


def test_a_new_field_serialises_and_keys_caches_without_other_changes() -> None:
    config = _WithNewOption(image_size=(32, 32), sharpen=0.5)
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["sharpen"] == 0.5
    assert _WithNewOption.from_dict(raw) == config
    assert _WithNewOption.from_dict({**raw, "sharpen": 1}).sharpen == 1.0
    # The option changes what a cached image looks like, so it changes the cache key.
    assert config.cache_key() != _WithNewOption(image_size=(32, 32)).cache_key()
    assert "sharpen" in config.cache_fields()


def test_cache_key_ignores_the_fitted_whitening() -> None:
    white = fit_whitening(np.random.default_rng(0).uniform(size=(5, 3)), "zca")
    plain = PreprocessingConfig(image_size=(1, 1))
    assert plain.cache_key() == PreprocessingConfig(image_size=(1, 1), whitening=white).cache_key()
    assert plain.cache_key() != PreprocessingConfig(image_size=(1, 2)).cache_key()
