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
        (
            {"sharpen": True},
            "preprocessing.sharpen: unknown field (got True); "
            "known: image_size, resize_mode, grayscale, equalize",
        ),
        (
            {"whitening": None},  # stored beside the chain, never read as part of it
            "preprocessing.whitening: unknown field; "
            "known: image_size, resize_mode, grayscale, equalize",
        ),
        ({"image_size": [64]}, "preprocessing.image_size: must be a list of 2 integers, "),
        ({"image_size": [64, 64, 3]}, "preprocessing.image_size: must be a list of 2 integers"),
        ({"image_size": "64x64"}, "preprocessing.image_size: must be a list of 2 integers"),
        (
            {"image_size": [64, "64"]},
            "preprocessing.image_size.1: Input should be a valid integer (got '64')",
        ),
        (
            {"image_size": [True, 64]},
            "preprocessing.image_size.0: Input should be a valid integer (got True)",
        ),
        (
            {"image_size": [64, 64.0]},
            "preprocessing.image_size.1: Input should be a valid integer (got 64.0)",
        ),
        (
            {"image_size": [0, 64]},
            "preprocessing.image_size.0: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"resize_mode": "zoom"},
            "preprocessing.resize_mode: Input should be 'stretch', 'center_crop' or 'pad' "
            "(got 'zoom')",
        ),
        ({"grayscale": 1}, "preprocessing.grayscale: Input should be a valid boolean (got 1)"),
        (
            {"equalize": "true"},
            "preprocessing.equalize: Input should be a valid boolean (got 'true')",
        ),
    ],
)
def test_bad_values_are_refused_by_name(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        PreprocessingConfig.from_dict(raw)
    assert str(info.value).startswith(message), str(info.value)


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ValueError) as info:
        PreprocessingConfig.from_dict({"image_size": [8, -1], "grayscale": "no"})
    assert str(info.value) == (
        "preprocessing.image_size.1: Input should be greater than or equal to 1 (got -1); "
        "preprocessing.grayscale: Input should be a valid boolean (got 'no')"
    )


def test_a_json_list_or_a_tuple_reads_as_the_height_width_tuple() -> None:
    assert PreprocessingConfig.from_dict({"image_size": [48, 64]}).image_size == (48, 64)
    assert PreprocessingConfig.from_dict({"image_size": (48, 64)}).image_size == (48, 64)


def test_whitening_is_attached_not_read_from_the_mapping() -> None:
    white = fit_whitening(np.random.default_rng(0).uniform(size=(5, 12)), "zca")
    config = PreprocessingConfig.from_dict({"image_size": [2, 2]}, whitening=white)
    assert config.whitening is white


@dataclass(frozen=True)
class _WithNewOption(PreprocessingConfig):
    """A stand-in for the next preprocessing option: declared once, nothing else edited."""

    sharpen: float = 0.0


def test_a_new_field_serialises_and_keys_caches_without_other_changes() -> None:
    config = _WithNewOption(image_size=(32, 32), sharpen=0.5)
    raw = json.loads(json.dumps(config.to_dict()))
    assert raw["sharpen"] == 0.5
    assert _WithNewOption.from_dict(raw) == config
    sharpened = _WithNewOption.from_dict({**raw, "sharpen": 1}).sharpen
    assert sharpened == 1.0 and isinstance(sharpened, float)
    # Its declared type is its rule in metadata.json, strict like every other field's.
    for bad in ("1", True, float("nan")):
        with pytest.raises(ValueError, match=r"^preprocessing\.sharpen: "):
            _WithNewOption.from_dict({**raw, "sharpen": bad})
    # The option changes what a cached image looks like, so it changes the cache key.
    assert config.cache_key() != _WithNewOption(image_size=(32, 32)).cache_key()
    assert "sharpen" in config.cache_fields()


def test_cache_key_ignores_the_fitted_whitening() -> None:
    white = fit_whitening(np.random.default_rng(0).uniform(size=(5, 3)), "zca")
    plain = PreprocessingConfig(image_size=(1, 1))
    assert plain.cache_key() == PreprocessingConfig(image_size=(1, 1), whitening=white).cache_key()
    assert plain.cache_key() != PreprocessingConfig(image_size=(1, 2)).cache_key()
