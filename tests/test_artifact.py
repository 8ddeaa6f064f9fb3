"""The model artifact: a missing or inconsistent one is a clear start-up error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from labeler.model.artifact import ArtifactError, load_artifact, save_artifact
from labeler.model.classifier import Classifier, calibrate
from labeler.photos.decoding import decode_image
from labeler.service.cli import main
from tests.helpers import FULLFRAME


@pytest.fixture
def artifact_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_artifact, tmp_path / "model"))


def edit_metadata(path: Path, **changes: object) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


def test_round_trip(tiny_artifact: Path) -> None:
    classifier = Classifier.load(tiny_artifact)
    art = classifier.artifact
    assert art.kind == "test" and len(art.labels) == 120 and art.decision.review_threshold == 0.2
    assert art.version.startswith("tiny-test-")
    batch = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    probs = classifier.predict_probabilities(batch)
    assert probs.shape == (4, 120) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs, np.asarray(classifier.model(batch)), atol=1e-6)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p: shutil.rmtree(p), "does not exist"),
        (lambda p: (p / "metadata.json").unlink(), "metadata.json is missing"),
        (lambda p: (p / "metadata.json").write_text("{not json"), "cannot be read"),
        (lambda p: edit_metadata(p, format_version=99), "format version 99"),
        (lambda p: edit_metadata(p, kind="magic"), "kind: Input should be 'baseline_cnn'"),
        (lambda p: (p / "model.keras").unlink(), "model.keras is missing"),
        (lambda p: (p / "labels.json").write_text('["a", "a"]'), "duplicate"),
        (lambda p: (p / "labels.json").write_text("[]"), "non-empty list"),
        (lambda p: edit_metadata(p, calibration={"temperature": 0}), "temperature"),
        # Absurd values: each would auto-label everything at 1.0 or yield NaN.
        (
            lambda p: edit_metadata(p, calibration={"temperature": 1e-300}),
            "temperature: .* greater than or equal to 0.05",
        ),
        (
            lambda p: edit_metadata(p, calibration={"temperature": 1e300}),
            "temperature: .* less than or equal to 20",
        ),
        (lambda p: edit_metadata(p, calibration={"temperature": float("nan")}), "finite"),
        (lambda p: edit_metadata(p, calibration={"temperature": float("inf")}), "finite"),
        (
            lambda p: edit_metadata(p, calibration={"temperature": "1.0"}),
            "temperature: .*valid number",
        ),
        (
            lambda p: edit_metadata(p, calibration={"temperature": True}),
            "temperature: .*valid number",
        ),
        (lambda p: edit_metadata(p, calibration=[1.0]), "calibration: .*valid dictionary"),
        (lambda p: edit_metadata(p, decision={"review_threshold": float("nan")}), "finite"),
        (
            lambda p: edit_metadata(p, decision={"review_threshold": -0.1}),
            "review_threshold: .*greater than or equal to 0",
        ),
        (lambda p: edit_metadata(p, decision={"review_margin": float("-inf")}), "finite"),
        (
            lambda p: edit_metadata(p, decision={"review_margin": "high"}),
            "review_margin: .*valid number",
        ),
        (lambda p: edit_metadata(p, decision="strict"), "decision: .*valid dictionary"),
        (
            lambda p: edit_metadata(p, output={"reject_labels": "dingo"}),
            "reject_labels: .*valid list",
        ),
        (
            lambda p: edit_metadata(p, tta=["identity", "rotate"]),
            "tta.1: Input should be 'identity' or 'flip'",
        ),
        (lambda p: edit_metadata(p, tta=[]), "tta: List should have at least 1 item"),
        (lambda p: edit_metadata(p, tta="flip"), "tta: .*valid list"),
        (lambda p: edit_metadata(p, tta=["flip", "flip"]), "tta: .*distinct"),
        (lambda p: edit_metadata(p, decision={"animal_evidence": 1.5}), "animal_evidence"),
        (
            lambda p: edit_metadata(p, decision={"animal_evidence_by_photos": [0.5, 0.8]}),
            "animal_evidence_by_photos: List should have at least 3 items",
        ),
        (
            lambda p: edit_metadata(p, decision={"animal_evidence_by_photos": [0.5, 0.8, -1]}),
            "animal_evidence_by_photos.2: Input should be greater than or equal to 0",
        ),
        (lambda p: edit_metadata(p, output={"class_weights": [1.0]}), "class_weights has 1"),
        (lambda p: edit_metadata(p, output={"class_weights": [0.0] * 120}), "class_weights.0"),
        (
            lambda p: edit_metadata(p, decision={"review_threshold": 3}),
            "review_threshold: .*less than or equal to 1",
        ),
        (lambda p: edit_metadata(p, output={"reject_labels": ["cat"]}), "not labels"),
        (
            lambda p: edit_metadata(p, preprocessing={"image_size": [2, 2]}),
            r"preprocessing\.image_size\.0: Input should be greater than or equal to 8 \(got 2\)",
        ),
        (
            lambda p: edit_metadata(p, preprocessing={"sharpen": True}),
            r"model: preprocessing\.sharpen: unknown field \(got True\); known: image_size, ",
        ),
        (
            lambda p: edit_metadata(p, preprocessing={"resize_mode": "zoom"}),
            r"preprocessing\.resize_mode: Input should be 'stretch', 'center_crop' or 'pad'",
        ),
        (
            lambda p: edit_metadata(p, preprocessing={"grayscale": "yes"}),
            r"preprocessing\.grayscale: Input should be a valid boolean \(got 'yes'\)",
        ),
        (
            lambda p: edit_metadata(p, preprocessing={"whitening": {"method": "zca"}}),
            "whitening file",
        ),
    ],
)
def test_broken_artifacts_are_refused(artifact_copy: Path, breakage, message: str) -> None:  # type: ignore[no-untyped-def]
    breakage(artifact_copy)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact_copy)


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_sane_temperatures_load(artifact_copy: Path, temperature: float) -> None:
    edit_metadata(artifact_copy, calibration={"temperature": temperature}, tta=["identity", "flip"])
    art = load_artifact(artifact_copy)
    assert art.temperature == temperature and art.tta == ("identity", "flip")


def test_test_time_flip_averages_the_views(tmp_path: Path) -> None:
    import keras

    from labeler.model.preprocessing import PreprocessingConfig

    # Flatten + Dense sees where pixels are, so a mirrored photo gets other probabilities.
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(5, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([np.random.default_rng(0).normal(0, 0.002, (192, 5)), np.zeros(5)])
    common = {"name": "flip", "kind": "test", "temperature": 1.5}
    prep = PreprocessingConfig(image_size=(8, 8))
    labels = [f"b{i}" for i in range(5)]
    save_artifact(tmp_path / "plain", model, labels, prep, **common)  # type: ignore[arg-type]
    save_artifact(tmp_path / "tta", model, labels, prep, tta=["identity", "flip"], **common)  # type: ignore[arg-type]
    plain, tta = Classifier.load(tmp_path / "plain"), Classifier.load(tmp_path / "tta")
    assert tta.artifact.tta == ("identity", "flip")
    batch = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    raw = np.asarray(model(batch)), np.asarray(model(batch[:, :, ::-1]))
    assert not np.allclose(raw[0], raw[1])
    expected = calibrate((raw[0] + raw[1]) / 2, 1.5)
    np.testing.assert_allclose(tta.predict_probabilities(batch), expected, atol=1e-6)
    np.testing.assert_allclose(plain.predict_probabilities(batch), calibrate(raw[0], 1.5), 1e-5)


def test_model_and_metadata_must_agree(artifact_copy: Path) -> None:
    (artifact_copy / "labels.json").write_text(json.dumps([f"b{i}" for i in range(119)]))
    with pytest.raises(ArtifactError, match="120 outputs but the labels file lists 119"):
        Classifier.load(artifact_copy)
    edit_metadata(artifact_copy, preprocessing={"image_size": [32, 32]})
    (artifact_copy / "labels.json").write_text(json.dumps([f"b{i}" for i in range(120)]))
    with pytest.raises(ArtifactError, match="takes inputs of shape"):
        Classifier.load(artifact_copy)


def test_corrupt_model_file_is_refused(artifact_copy: Path) -> None:
    data = (artifact_copy / "model.keras").read_bytes()
    (artifact_copy / "model.keras").write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="cannot be loaded as a Keras model"):
        Classifier.load(artifact_copy)


def test_cli_refuses_to_start_with_a_broken_model(
    artifact_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    (artifact_copy / "model.keras").write_bytes(b"garbage")
    monkeypatch.setenv("LABELER_MODEL_DIR", str(artifact_copy))
    monkeypatch.setenv("LABELER_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["run-once"]) == 2
    assert "cannot be loaded as a Keras model" in capsys.readouterr().err


def test_classify_command(
    tiny_artifact: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photo = sorted(FULLFRAME.glob("*/*.JPEG"))[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 nope")
    code = main(["classify", "--model", str(tiny_artifact), str(photo), str(broken)])
    out = capsys.readouterr().out
    assert code == 1  # one photo could not be read
    line = next(x for x in out.splitlines() if x.startswith(str(photo)))
    expected = Classifier.load(tiny_artifact).classify_images([decode_image(photo.read_bytes())])[0]
    assert expected.label in line and line.count("%") == 3
    assert f"{broken}: error:" in out


# The preprocessing rules of a served artifact, on a hand-written artifact of a few bytes: the
# network is not loaded, so an empty model file will do.
def tiny_preprocessing_artifact(root: Path, preprocessing: dict[str, object]) -> Path:
    root.mkdir()
    (root / "model.keras").write_bytes(b"")
    (root / "labels.json").write_text('["a", "b"]')
    meta = {"format": "labeler-artifact", "format_version": 1, "name": "t", "version": "t-1"}
    meta |= {"kind": "test", "preprocessing": preprocessing}
    (root / "metadata.json").write_text(json.dumps(meta))
    # 8x8 grayscale: a 64-feature whitening.
    np.savez(root / "whitening.npz", mean=np.zeros(64), matrix=np.eye(64))
    np.savez(root / "other.npz", mean=np.zeros(64), matrix=np.eye(64))
    return root


GRAY_8 = {"image_size": [8, 8], "grayscale": True}
ZCA = {"method": "zca", "epsilon": 0.01, "file": "whitening.npz"}


@pytest.mark.parametrize(
    ("preprocessing", "message"),
    [
        (
            {"image_size": [7, 8]},
            "preprocessing.image_size.0: Input should be greater than or equal to 8 (got 7)",
        ),
        (
            {"image_size": [8, 4097]},
            "preprocessing.image_size.1: Input should be less than or equal to 4096 (got 4097)",
        ),
        (
            {**GRAY_8, "whitening": "zca"},
            "preprocessing.whitening: must be an object or null (got 'zca')",
        ),
        ({**GRAY_8, "whitening": {}}, "preprocessing.whitening.method: Field required"),
        (
            {**GRAY_8, "whitening": {**ZCA, "method": "ica"}},
            "preprocessing.whitening.method: Input should be 'zca' or 'pca' (got 'ica')",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "epsilon": "0.01"}},
            "preprocessing.whitening.epsilon: Input should be a valid number (got '0.01')",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "epsilon": -0.01}},
            "preprocessing.whitening.epsilon: Input should be greater than or equal to 0 "
            "(got -0.01)",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "epsilon": float("nan")}},
            "preprocessing.whitening.epsilon: Input should be a finite number (got nan)",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "file": 3}},
            "preprocessing.whitening.file: Input should be a valid string (got 3)",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "file": "../../elsewhere/w.npz"}},
            "preprocessing.whitening.file: String should match pattern "
            "'^[A-Za-z0-9][A-Za-z0-9._-]*$' (got '../../elsewhere/w.npz')",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "file": "/etc/w.npz"}},
            "preprocessing.whitening.file: String should match pattern "
            "'^[A-Za-z0-9][A-Za-z0-9._-]*$' (got '/etc/w.npz')",
        ),
        (
            {**GRAY_8, "whitening": {**ZCA, "fiel": "other.npz"}},
            "preprocessing.whitening.fiel: unknown field (got 'other.npz')",
        ),
        (
            {"image_size": [4, 8], "whitening": {"method": "ica"}},
            "preprocessing.image_size.0: Input should be greater than or equal to 8 (got 4); "
            "preprocessing.whitening.method: Input should be 'zca' or 'pca' (got 'ica')",
        ),
    ],
)
def test_served_preprocessing_rules(
    tmp_path: Path, preprocessing: dict[str, object], message: str
) -> None:
    root = tiny_preprocessing_artifact(tmp_path / "model", preprocessing)
    with pytest.raises(ArtifactError) as info:
        load_artifact(root)
    assert str(info.value) == f"{root}: {message}"


@pytest.mark.parametrize("side", [8, 4096])
def test_served_image_sizes_include_the_bounds(tmp_path: Path, side: int) -> None:
    root = tiny_preprocessing_artifact(tmp_path / "model", {"image_size": [side, side]})
    assert load_artifact(root).preprocessing.image_size == (side, side)


@pytest.mark.parametrize(
    ("whitening", "expected"),
    [
        (None, None),
        ({"method": "pca"}, ("pca", 0.0)),  # epsilon and file have defaults
        ({"method": "zca", "epsilon": 1, "file": "other.npz"}, ("zca", 1.0)),
    ],
)
def test_whitening_entries_that_load(
    tmp_path: Path, whitening: object, expected: tuple[str, float] | None
) -> None:
    root = tiny_preprocessing_artifact(tmp_path / "model", {**GRAY_8, "whitening": whitening})
    loaded = load_artifact(root).preprocessing.whitening
    assert (None if loaded is None else (loaded.method, loaded.epsilon)) == expected
