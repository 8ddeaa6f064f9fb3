from __future__ import annotations

from pathlib import Path

import pytest

from training.sweep import GROUPS, parse_backbone_weights, variants, write_table


def test_sweep_covers_the_studys_comparisons() -> None:
    todo = variants(GROUPS, {"mobilenetv2": "w.h5", "vgg16": None}, (96, 96))
    by_group: dict[str, list[str]] = {}
    for v in todo:
        by_group.setdefault(v.group, []).append(v.label)
    assert set(by_group) == set(GROUPS)
    assert by_group["optimizer"] == [
        "adam",
        "sgd",
        "rmsprop",
        "nadam",
        "adadelta",
        "adagrad",
        "adamax",
        "ftrl",
    ]
    assert "rgb+equalize" in by_group["preprocessing"]
    assert by_group["augmentation"] == ["no augmentation", "augmentation"]
    assert by_group["regularization"] == ["batchnorm", "dropout", "neither"]
    assert by_group["head"] == ["flatten", "global pooling"]
    assert len(by_group["filters"]) == 3 and len(by_group["loss"]) == 3
    assert len(by_group["activation"]) >= 4
    backbone = [v for v in todo if v.group == "backbone"]
    assert backbone[0].overrides["weights"] == "w.h5"
    assert backbone[1].overrides["weights"] is None
    assert all(v.overrides["model"] == "transfer" for v in backbone)


def test_backbone_weights_parsing() -> None:
    assert parse_backbone_weights(["mobilenetv2=/x.h5", "vgg16=none"]) == {
        "mobilenetv2": "/x.h5",
        "vgg16": None,
    }
    assert set(parse_backbone_weights([])) >= {"vgg16", "efficientnetv2b0"}
    with pytest.raises(ValueError):
        parse_backbone_weights(["alexnet=x"])


def test_results_table_csv_and_markdown(tmp_path: Path) -> None:
    rows = [
        {"group": "head", "variant": "flatten", "status": "ok", "top1": 0.5},
        {"group": "backbone", "variant": "vgg16", "status": "failed: no weights"},
    ]
    write_table(rows, tmp_path)
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[1].startswith("head,flatten,ok,0.5")
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| group | variant | status | top1")
    assert md[3].startswith("| backbone | vgg16 | failed: no weights |")
