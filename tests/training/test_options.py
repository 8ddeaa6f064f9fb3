"""The training CLI's data and preprocessing options are generated from TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from training.cli import build_parser
from training.options import add_config_options, cli, config_values, parse_size
from training.train import DATA_OPTIONS, PREPROCESSING_OPTIONS, TrainConfig

# Defaults the command line sets on purpose instead of taking the field's.
CLI_ONLY = {"data_dir", "breeds_tsv", "run_dir"}


def _field_defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def test_train_options_default_to_the_train_config_fields() -> None:
    args = build_parser().parse_args(["train"])
    defaults = _field_defaults()
    for name in (*DATA_OPTIONS, *PREPROCESSING_OPTIONS):
        if name not in CLI_ONLY:
            assert getattr(args, name) == defaults[name], name
    assert args.run_dir is None  # the run directory is named after the model when not given


def test_existing_flag_names_still_parse() -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--data", "d", "--classes", "3", "--per-class", "4", "--image-size", "16x12",
            "--resize-mode", "pad", "--grayscale", "--no-equalize", "--whitening", "zca",
            "--whitening-epsilon", "0.5", "--pca-components", "7", "--image-cache", "",
            "--feature-cache", "fc", "--workers", "3", "--seed", "9", "--val-fraction", "0.2",
        ]
    )  # fmt: skip
    values = config_values(args, DATA_OPTIONS + PREPROCESSING_OPTIONS)
    assert values["data_dir"] == "d" and values["max_classes"] == 3 and values["per_class"] == 4
    assert values["image_size"] == (16, 12) and values["resize_mode"] == "pad"
    assert values["grayscale"] is True and values["equalize"] is False
    assert values["whitening"] == "zca" and values["whitening_epsilon"] == 0.5
    assert values["pca_components"] == 7 and values["image_cache_dir"] is None
    assert values["feature_cache_dir"] == "fc" and values["workers"] == 3 and values["seed"] == 9
    TrainConfig(**values)  # every generated destination is a TrainConfig field


def test_sweep_overrides_only_its_subset_defaults() -> None:
    args = build_parser().parse_args(["sweep"])
    assert (args.max_classes, args.per_class, args.image_size) == (10, 60, (48, 48))
    assert args.val_fraction == _field_defaults()["val_fraction"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--resize-mode", "zoom"])


@dataclass
class _Config:
    size: tuple[int, int] = field(default=(8, 8), metadata=cli("h x w", parse=parse_size))
    mode: Literal["a", "b"] = field(default="a", metadata=cli())
    limit: int | None = field(default=None, metadata=cli(flag="max"))
    flip: bool = field(default=True, metadata=cli())
    plain: float = 1.0


def test_generator_reads_type_default_and_flag_from_the_field() -> None:
    parser = argparse.ArgumentParser()
    add_config_options(parser, _Config, ("size", "mode", "limit", "flip"))
    assert config_values(parser.parse_args([]), ("size", "mode", "limit", "flip")) == {
        "size": (8, 8), "mode": "a", "limit": None, "flip": True,
    }  # fmt: skip
    args = parser.parse_args(["--size", "4x2", "--mode", "b", "--max", "5", "--no-flip"])
    assert (args.size, args.mode, args.limit, args.flip) == ((4, 2), "b", 5, False)
    with pytest.raises(ValueError, match="plain has no cli"):
        add_config_options(argparse.ArgumentParser(), _Config, ("plain",))
    with pytest.raises(ValueError, match="without options"):
        add_config_options(argparse.ArgumentParser(), _Config, ("mode",), {"size": (1, 1)})
