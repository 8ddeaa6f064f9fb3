"""Whole training runs on a tiny synthetic dataset, and the artifact round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labeler.model.artifact import load_artifact
from labeler.model.classifier import Classifier
from labeler.model.preprocessing import preprocess_batch
from tests.helpers import SHARED, require
from training import features
from training.data import read_rgb
from training.train import TrainConfig, run

MOBILENETV2 = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def _config(data: Path, tmp_path: Path, **kw: object) -> TrainConfig:
    base: dict = {
        "data_dir": str(data),
        "output": str(tmp_path / "artifact"),
        "run_dir": str(tmp_path / "run"),
        "name": "tiny",
        "image_size": (32, 32),
        "epochs": 1,
        "batch_size": 8,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "image_cache_dir": None,
        "feature_cache_dir": str(tmp_path / "cache"),
        "plots": False,
        "onnx": False,  # shipping model.onnx costs a conversion: one test covers it
    }
    base.update(kw)
    return TrainConfig(**base)


def _assert_round_trip(result, tmp_path: Path) -> Classifier:  # type: ignore[no-untyped-def]
    clf = Classifier.load(result.artifact_path)
    photos = [read_rgb(p) for p in result.dataset.paths[:6]]
    batch = preprocess_batch(photos, result.preprocessing)
    in_memory = np.asarray(result.model.predict_on_batch(batch))
    loaded = np.asarray(clf.model.predict_on_batch(batch))
    np.testing.assert_allclose(loaded, in_memory, rtol=1e-5, atol=1e-6)
    # The classifier (temperature applied) ranks exactly as the in-memory model does.
    preds = clf.classify_images(photos)
    assert [p.label for p in preds] == [result.class_names[i] for i in in_memory.argmax(axis=1)]
    return clf


@pytest.mark.slow
def test_baseline_run_writes_an_artifact_the_labeler_loads(tiny_data: Path, tmp_path: Path) -> None:
    cfg = _config(
        tiny_data, tmp_path, grayscale=True, equalize=True, augment=True, plots=True, onnx=True
    )
    result = run(cfg)
    clf = _assert_round_trip(result, tmp_path)
    # The artifact ships its ONNX model, checked against Keras: serving starts without
    # converting anything (and could run without TensorFlow).
    assert clf.runtime_name == "onnxruntime"
    assert "from the artifact" in clf.runtime.description
    art = load_artifact(result.artifact_path)
    assert art.kind == "baseline_cnn"
    assert art.labels == ("red_dog", "green_dog", "blue_dog")
    assert art.preprocessing.grayscale and art.preprocessing.equalize
    assert art.preprocessing.image_size == (32, 32)
    meta = art.metadata

    def no_nan(token: str) -> None:
        raise AssertionError(f"metadata.json holds {token}, which is not JSON")

    json.loads((result.artifact_path / "metadata.json").read_text(), parse_constant=no_nan)
    for key in ("top1", "top3", "ece", "per_breed_accuracy", "temperature", "review"):
        assert key in meta["metrics"]
    assert meta["decision"]["review_threshold"] == meta["metrics"]["review"]["threshold"]
    assert art.temperature == pytest.approx(meta["metrics"]["temperature"])
    assert len(meta["data"]["split_fingerprint"]) == 16
    assert meta["training"]["augment"] is True
    # Augmentation lives in the training graph only: the served model has no random layers.
    names = {type(x).__name__ for x in clf.model.layers}
    assert not any(n.startswith("Random") for n in names)
    run_dir = Path(cfg.run_dir)
    assert (run_dir / "split.csv").is_file()
    for plot in ("learning_curves.png", "confusion_matrix.png"):
        assert (run_dir / plot).stat().st_size > 1000
    assert not list(Path(cfg.output or "").glob("*.png"))  # no photos in the artifact


@pytest.mark.slow
def test_zca_whitening_is_fitted_and_stored(tiny_data: Path, tmp_path: Path) -> None:
    cfg = _config(
        tiny_data, tmp_path, image_size=(16, 16), grayscale=True, whitening="zca", augment=False
    )
    result = run(cfg)
    art = load_artifact(result.artifact_path)
    assert art.preprocessing.whitening is not None
    assert art.preprocessing.whitening.method == "zca"
    assert art.preprocessing.whitening.matrix.shape == (256, 256)
    _assert_round_trip(result, tmp_path)


@pytest.mark.slow
def test_transfer_caches_features_and_fine_tunes(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(
        tiny_data,
        tmp_path,
        model="transfer",
        backbone="mobilenetv2",
        weights=None,
        fine_tune_epochs=1,
        fine_tune_fraction=0.1,
    )
    result = run(cfg)
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 1
    art = load_artifact(result.artifact_path)
    assert art.kind == "transfer"
    assert art.metadata["backbone"] == {
        "name": "mobilenetv2",
        "weights": "random",
        "preprocess_mode": "tf",
    }
    assert "fine_tune" in art.metadata["metrics"]
    _assert_round_trip(result, tmp_path)

    # A second head reuses the cached features: the backbone must not run again.
    def boom(*_a: object, **_k: object) -> np.ndarray:
        raise AssertionError("backbone ran despite the feature cache")

    monkeypatch.setattr(features, "extract_features", boom)
    monkeypatch.setattr("training.train.extract_features", boom)
    again = run(
        _config(
            tiny_data,
            tmp_path,
            model="transfer",
            backbone="mobilenetv2",
            weights=None,
            head_hidden=8,
            output=None,
        )
    )
    assert again.metrics["n_test"] == result.metrics["n_test"]


@pytest.mark.slow
def test_real_mobilenetv2_weights_separate_real_breeds(tmp_path: Path) -> None:
    require(MOBILENETV2)
    cfg = _config(
        SHARED / "data" / "stanford-dogs-train",
        tmp_path,
        model="transfer",
        backbone="mobilenetv2",
        weights=str(MOBILENETV2),
        image_size=(224, 224),
        max_classes=3,
        per_class=12,
        epochs=30,
        batch_size=16,
        val_fraction=0.25,
        test_fraction=0.25,
        breeds_tsv=str(SHARED / "data" / "breeds.tsv"),
    )
    result = run(cfg)
    # Pretrained features make 3 breeds easy; random weights would sit near 1/3.
    assert result.metrics["validation"]["top1"] >= 0.6
    art = load_artifact(result.artifact_path)
    assert art.metadata["backbone"]["weights"].startswith("file:mobilenet_v2")
    assert art.labels == ("Chihuahua", "Japanese_spaniel", "Maltese_dog")
    _assert_round_trip(result, tmp_path)


def test_cli_train_and_sweep(tiny_data: Path, tmp_path: Path) -> None:
    from training.cli import main

    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                "--data",
                str(tiny_data),
                "--breeds-tsv",
                str(tiny_data.parent / "breeds.tsv"),
                "--classes",
                "3",
                "--per-class",
                "10",
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--groups",
                "head",
                "--out",
                str(out),
                "--image-cache",
                str(tmp_path / "ic"),
            ]
        )
        == 0
    )
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("group,variant,status,top1")
    assert len(rows) == 1 + 2
    assert all(",ok," in r for r in rows[1:])
    assert "| head | global pooling | ok |" in (out / "results.md").read_text()
    assert (out / "comparison.png").is_file() and (out / "confusion_matrix.png").is_file()

    art = tmp_path / "art"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_data),
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--no-augment",
                "--grayscale",
                "--output",
                str(art),
                "--run-dir",
                str(tmp_path / "r"),
                "--image-cache",
                "",
                "--no-plots",
            ]
        )
        == 0
    )
    meta = json.loads((art / "metadata.json").read_text())
    assert meta["preprocessing"]["grayscale"] is True
    assert meta["training"]["augment"] is False


@pytest.mark.slow
def test_views_tta_and_full_frame_calibration(tiny_data: Path, tmp_path: Path) -> None:
    """Head on several cached views, flip TTA, a decision rule fitted on other photos."""
    from tests.training.conftest import write_dataset

    frames = write_dataset(tmp_path / "frames" / "data", per_class=12, size=48, seed=5)
    cfg = _config(
        tiny_data,
        tmp_path,
        model="transfer",
        backbone="mobilenetv2",
        weights=None,
        epochs=3,
        resize_mode="center_crop",
        feature_views=("identity", "flip", "zoomout"),
        tta=("identity", "flip"),
        calibration_dir=str(frames),
        calibration_folds=3,
        calibration_margins=(0.0, 0.1),
        review_min_rows=3,
        reject_classes=("n00000003",),
        breeds_tsv=str(tiny_data.parent / "breeds.tsv"),
    )
    result = run(cfg)
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 3  # one per view
    art = load_artifact(result.artifact_path)
    assert art.tta == ("identity", "flip")
    assert art.reject_labels == frozenset({"blue"})
    assert art.preprocessing.resize_mode == "center_crop"
    meta = art.metadata
    rule = meta["calibration_details"]
    assert art.temperature == pytest.approx(rule["temperature"])
    assert art.decision.review_threshold == pytest.approx(rule["threshold"])
    assert art.decision.review_margin == pytest.approx(rule["margin"])
    full = meta["metrics"]["fullframe"]
    assert full["n"] == 36 and full["folds"] == 3
    assert full["shipped_rule_cross_validated"]["n"] == 36
    assert "shipped_rule" in meta["metrics"]["crops"]
    assert "full-frame" in art.quality_note
    # Provenance by name and checksum, never by a local path.
    text = (result.artifact_path / "metadata.json").read_text()
    assert str(tmp_path) not in text
    assert meta["data"]["name"] == "data" and len(meta["data"]["sha256"]) == 64
    assert meta["data"]["calibration"]["n_images"] == 36
    clf = _assert_round_trip(result, tmp_path)
    # Serving applies the TTA: the classifier averages the photo and its mirror image.
    photos = [read_rgb(p) for p in result.dataset.paths[:4]]
    batch = preprocess_batch(photos, result.preprocessing)
    raw = (
        np.asarray(result.model.predict_on_batch(batch))
        + np.asarray(result.model.predict_on_batch(batch[:, :, ::-1]))
    ) / 2
    from labeler.model.classifier import calibrate

    np.testing.assert_allclose(
        clf.predict_probabilities(batch), calibrate(raw, art.temperature), rtol=1e-4, atol=1e-5
    )
