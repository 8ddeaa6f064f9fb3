"""Inference runtimes: ONNX Runtime gives the Keras answers; anything wrong falls back to Keras."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from labeler.config.settings import Settings
from labeler.model.artifact import ArtifactError, load_artifact
from labeler.model.classifier import Classifier
from labeler.model.preprocessing import PreprocessingConfig
from labeler.model.runtime import (
    CACHE_META_FILE,
    CHECK_FILE,
    DEFAULT_TOLERANCE,
    ONNX_FILE,
    cache_key,
    check_images,
    export_onnx,
    load_keras_model,
    open_runtime,
)
from labeler.photos.decoding import decode_image
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.schema import run
from tests.helpers import REPO, create_photos, fullframe_photos, png_bytes

pytest.importorskip("onnxruntime", reason="the onnx extra is part of dev")


@pytest.fixture
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_artifact, tmp_path / "model"))


def no_keras() -> None:
    raise AssertionError("Keras must not be loaded when an ONNX model and its check exist")


def keras_probabilities(path: Path, batch: np.ndarray) -> np.ndarray:
    model = load_keras_model(load_artifact(path))
    return np.asarray(model.predict_on_batch(batch), dtype=np.float64)


def test_onnx_gives_the_keras_probabilities(tiny_artifact: Path, tmp_path: Path) -> None:
    clf = Classifier.load(tiny_artifact, runtime="onnx", cache_dir=tmp_path / "cache")
    assert clf.runtime_name == "onnxruntime"
    assert "outputs match Keras" in clf.runtime.description
    rng = np.random.default_rng(3)
    batch = rng.uniform(0, 255, (7, 16, 16, 3)).astype(np.float32)
    expected = keras_probabilities(tiny_artifact, batch)
    assert np.max(np.abs(clf.predict_probabilities(batch) - expected)) < DEFAULT_TOLERANCE
    # Real photos through the whole chain: the same ranked labels as Keras.
    images = [decode_image(p.read_bytes()) for p in fullframe_photos()[:6]]
    keras_clf = Classifier.load(tiny_artifact, runtime="keras")
    assert keras_clf.runtime_name == "keras"
    got, want = clf.classify_images(images), keras_clf.classify_images(images)
    assert [p.label for p in got] == [p.label for p in want]
    assert np.allclose(
        [p.confidence for p in got], [p.confidence for p in want], atol=DEFAULT_TOLERANCE
    )


def test_conversion_is_cached_and_then_needs_no_keras(tiny_artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    artifact = load_artifact(tiny_artifact)
    first = open_runtime(
        artifact, lambda: load_keras_model(artifact), choice="auto", cache_dir=cache
    )
    assert first.runtime.name == "onnxruntime" and first.keras_model is not None
    entry = cache / cache_key(artifact)
    assert {ONNX_FILE, CHECK_FILE, CACHE_META_FILE} <= {p.name for p in entry.iterdir()}
    meta = json.loads((entry / CACHE_META_FILE).read_text())
    assert meta["tolerance"] == DEFAULT_TOLERANCE and meta["max_difference"] < DEFAULT_TOLERANCE
    again = open_runtime(artifact, no_keras, choice="auto", cache_dir=cache)
    assert again.runtime.name == "onnxruntime" and again.keras_model is None
    assert "from the cache" in again.runtime.description


def test_cache_key_follows_the_model_file(artifact_copy: Path) -> None:
    before = cache_key(load_artifact(artifact_copy))
    with (artifact_copy / "model.keras").open("ab") as f:
        f.write(b"\0")
    assert cache_key(load_artifact(artifact_copy)) != before


def test_an_onnx_model_shipped_in_the_artifact(artifact_copy: Path, tmp_path: Path) -> None:
    artifact = load_artifact(artifact_copy)
    section = export_onnx(load_keras_model(artifact), artifact_copy, artifact.preprocessing)
    meta = json.loads((artifact_copy / "metadata.json").read_text())
    meta["onnx"] = section
    (artifact_copy / "metadata.json").write_text(json.dumps(meta))
    loaded = open_runtime(load_artifact(artifact_copy), no_keras, cache_dir=tmp_path / "cache")
    assert loaded.runtime.name == "onnxruntime"
    assert "from the artifact" in loaded.runtime.description
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_serving_from_onnx_never_imports_tensorflow(tiny_artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Classifier.load(tiny_artifact, cache_dir=cache)  # converts once (this process has TF)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from labeler.model.classifier import Classifier\n"
        f"c = Classifier.load(Path({str(tiny_artifact)!r}), cache_dir=Path({str(cache)!r}))\n"
        "p = c.predict(np.full((2, 16, 16, 3), 100, np.float32))\n"
        "assert len(p) == 2, p\n"
        "print(c.runtime_name, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnxruntime", "False", "False"]


def test_falls_back_to_keras_without_onnxruntime(
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with caplog.at_level(logging.INFO, logger="labeler.model.runtime"):
        auto = Classifier.load(tiny_artifact, cache_dir=tmp_path)
        forced = Classifier.load(tiny_artifact, runtime="onnx", cache_dir=tmp_path)
    assert auto.runtime_name == forced.runtime_name == "keras"
    assert "onnxruntime is not installed" in auto.runtime.description
    levels = [r.levelno for r in caplog.records if "not ONNX Runtime" in r.getMessage()]
    assert levels == [logging.INFO, logging.WARNING]  # asked-for onnx: a warning
    batch = np.full((1, 16, 16, 3), 50, np.float32)
    assert np.allclose(auto.predict_probabilities(batch), keras_probabilities(tiny_artifact, batch))


def test_falls_back_to_keras_when_onnx_disagrees(
    tiny_artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    Classifier.load(tiny_artifact, cache_dir=cache)
    check = cache / cache_key(load_artifact(tiny_artifact)) / CHECK_FILE
    with np.load(check) as data:
        images, expected = data["images"], data["expected"]
    np.savez_compressed(check, images=images, expected=expected + 1e-3)
    with caplog.at_level(logging.WARNING, logger="labeler.model.runtime"):
        clf = Classifier.load(tiny_artifact, cache_dir=cache)
    assert clf.runtime_name == "keras"
    assert "differ from Keras by 0.001" in clf.runtime.description
    assert any("differ from Keras" in r.getMessage() for r in caplog.records)


def test_falls_back_to_keras_on_a_corrupt_onnx_file(tiny_artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Classifier.load(tiny_artifact, cache_dir=cache)
    (cache / cache_key(load_artifact(tiny_artifact)) / ONNX_FILE).write_bytes(b"not a model")
    clf = Classifier.load(tiny_artifact, cache_dir=cache)
    assert clf.runtime_name == "keras" and "ONNX Runtime not used" in clf.runtime.description


def test_unwritable_cache_converts_in_memory(tiny_artifact: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created below a file")
    clf = Classifier.load(tiny_artifact, cache_dir=blocker / "cache")
    assert clf.runtime_name == "onnxruntime" and "from the conversion" in clf.runtime.description


def test_keras_only_when_asked(tiny_artifact: Path, tmp_path: Path) -> None:
    clf = Classifier.load(tiny_artifact, runtime="keras", cache_dir=tmp_path)
    assert clf.runtime_name == "keras" and clf.runtime.description.startswith("keras")
    assert not any(tmp_path.iterdir())


def test_check_images_cover_the_chain() -> None:
    gray = check_images(PreprocessingConfig(image_size=(10, 12), grayscale=True))
    color = check_images(PreprocessingConfig(image_size=(9, 9)))
    assert gray.shape == (4, 10, 12, 1) and color.shape == (4, 9, 9, 3)
    assert gray.dtype == color.dtype == np.uint8
    assert color.min() == 0 and color.max() == 255
    assert np.array_equal(color, check_images(PreprocessingConfig(image_size=(9, 9))))


@pytest.mark.parametrize("choice", ["onnx", "keras"])
def test_the_run_row_and_summary_name_the_runtime(
    choice: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'runs.db'}",
            "source_table": "animals",
            "source_image_column": "photo",
            "model_dir": tiny_artifact,
            "runtime": choice,
            "runtime_cache_dir": tmp_path / "cache",
            "batch_size": 4,
        }
    )
    service = Service.build(settings)
    create_photos(
        service.engine, "bytes", [{"id": i, "photo": png_bytes((i * 20, 80, 90))} for i in range(6)]
    )
    migrate.upgrade(service.engine)
    summary = service.run_pass()
    with service.engine.connect() as conn:
        row = conn.execute(select(run)).one()
    service.engine.dispose()
    name = "onnxruntime" if choice == "onnx" else "keras"
    assert summary.processed == 6 and summary.runtime == name
    assert summary.line().endswith(f" on {name}")
    assert row.worker.endswith(f" {name}")


def test_check_says_which_runtime_serves(
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LABELER_DATABASE_URL", f"sqlite:///{tmp_path / 'check.db'}")
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tiny_artifact))
    monkeypatch.setenv("LABELER_RUNTIME_CACHE_DIR", str(tmp_path / "cache"))
    main(["check"])  # other steps fail on this empty database; this test reads one line
    line = next(x for x in capsys.readouterr().out.splitlines() if "inference runtime" in x)
    assert line.startswith("ok    inference runtime: onnxruntime ")
    monkeypatch.setenv("LABELER_RUNTIME", "keras")
    main(["check"])
    line = next(x for x in capsys.readouterr().out.splitlines() if "inference runtime" in x)
    assert line == "ok    inference runtime: keras (LABELER_RUNTIME=keras)"


def test_thread_and_prefetch_settings_reach_the_runtime_and_the_pass(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    from labeler.decide.decision import Thresholds
    from labeler.service.app import load_classifier, pass_config

    settings = Settings.model_validate(
        {
            "model_dir": tiny_artifact,
            "runtime_cache_dir": tmp_path,
            "inference_threads": 1,
            "prefetch_batches": 3,
        }
    )
    clf = load_classifier(settings)
    options = clf.runtime.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert pass_config(settings, Thresholds()).prefetch_batches == 3


def test_without_keras_and_without_onnx_model_the_error_says_what_to_do(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # a serving install without TensorFlow
    with pytest.raises(ArtifactError, match="TensorFlow/Keras is not installed"):
        Classifier.load(tiny_artifact, cache_dir=tmp_path / "empty-cache")
