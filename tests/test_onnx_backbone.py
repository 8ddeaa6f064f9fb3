"""ONNX backbones composed with their head into one served graph, on a tiny made-up network.

The "backbone" averages each channel (``features``, 3 numbers) and maps them to 1000
ImageNet-like ``logits``: red votes for ImageNet class 151 (a dog breed), green for class 500
(not a dog), so the expected answers are known without a real network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from labeler.model.artifact import ArtifactError, load_artifact, save_artifact
from labeler.model.classifier import Classifier
from labeler.model.preprocessing import PreprocessingConfig
from labeler.model.runtime import CHECK_FILE, ONNX_FILE, OnnxRuntime, check_images
from training.onnx_backbone import (
    BackboneSpec,
    Head,
    OnnxBackbone,
    breed_probabilities,
    compose_serving_model,
    dog_probability,
)

SIZE = 8
SPEC = BackboneSpec("tiny", "tiny.onnx", SIZE)
BREED_CLASSES = (151, 152, 273)  # two dog breeds and the dingo
LABELS = ["first_breed", "second_breed", "dingo", "not_a_dog"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = np.zeros((3, 1000), np.float32)
    weights[0, 151] = 12.0
    weights[2, 152] = 6.0
    weights[1, 500] = 12.0
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("MatMul", ["features", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000]),
        ],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path_factory.mktemp("backbone") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def colour(rgb: tuple[int, int, int], n: int = 1) -> np.ndarray:
    return np.tile(np.asarray(rgb, np.uint8), (n, SIZE, SIZE, 1))


def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    return np.concatenate([colour((255, 0, 0)), colour((0, 255, 0)), colour((0, 0, 255)), noise])


def served(graph: bytes, batch: np.ndarray) -> np.ndarray:
    return OnnxRuntime(graph, threads=1).predict(batch.astype(np.float32))


def test_the_imagenet_head_with_a_dog_gate_matches_its_numpy_reference(backbone: Path) -> None:
    head = Head(imagenet_classes=BREED_CLASSES)
    graph = compose_serving_model(backbone, SPEC, head, dog_gate=0.3)
    features, logits = OnnxBackbone(backbone, SPEC, threads=1).run(images())
    assert logits is not None
    expected = breed_probabilities(features, logits, head, 0.3)
    got = served(graph, images())
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    red, green = got[0], got[1]
    assert red.argmax() == 0 and red[3] == 0.0  # a dog: no "not a dog" mass at all
    assert green.argmax() == 3 and green[3] == 1.0  # no dog: all of it
    assert dog_probability(logits[1:2])[0] < 0.3 < dog_probability(logits[0:1])[0]


def test_a_trained_head_without_a_gate(backbone: Path) -> None:
    kernel = np.array([[3.0, -3.0], [0.0, 0.0], [-3.0, 3.0]], np.float32)
    head = Head(kernel=kernel, bias=np.array([0.0, 0.5], np.float32))
    graph = compose_serving_model(backbone, SPEC, head, dog_gate=None)
    features, logits = OnnxBackbone(backbone, SPEC, threads=1).run(images())
    np.testing.assert_allclose(
        served(graph, images()), breed_probabilities(features, logits, head, None), atol=1e-5
    )


def test_a_head_is_one_kind_or_the_other() -> None:
    with pytest.raises(ValueError, match="either"):
        Head()
    with pytest.raises(ValueError, match="either"):
        Head(kernel=np.zeros((3, 2)), bias=np.zeros(2), imagenet_classes=(151,))


def onnx_only_artifact(directory: Path, backbone: Path, expected_shift: float = 0.0) -> Path:
    graph = compose_serving_model(backbone, SPEC, Head(imagenet_classes=BREED_CLASSES), 0.3)
    prep = PreprocessingConfig(image_size=(SIZE, SIZE), resize_mode="center_crop")
    directory.mkdir(parents=True, exist_ok=True)
    check = check_images(prep)
    runtime = OnnxRuntime(graph, threads=1)
    expected = runtime.predict(check.astype(np.float32))
    reference = runtime.predict_reference(check.astype(np.float32))
    assert reference is not None
    np.savez_compressed(
        directory / CHECK_FILE,
        images=check,
        expected=expected,
        reference=reference + expected_shift,
    )
    save_artifact(
        directory,
        graph,
        LABELS,
        prep,
        name="tiny-onnx",
        kind="zero_shot",
        reject_labels=["dingo", "not_a_dog"],
        decision={"review_threshold": 0.6, "animal_evidence": 0.4},
        extra={"onnx": {"file": ONNX_FILE, "check_file": CHECK_FILE, "tolerance": 1e-5}},
    )
    return directory


def test_an_onnx_only_artifact_is_served_without_keras(tmp_path: Path, backbone: Path) -> None:
    directory = onnx_only_artifact(tmp_path / "model", backbone)
    artifact = load_artifact(directory)
    assert artifact.model_path.name == ONNX_FILE
    assert not (directory / "model.keras").exists()
    assert artifact.decision.animal_evidence == pytest.approx(0.4)
    classifier = Classifier.load(directory, runtime="auto", threads=1)
    assert classifier.runtime_name == "onnxruntime"
    assert "training's" in classifier.runtime.description
    red, green = classifier.classify_images([colour((255, 0, 0))[0], colour((0, 255, 0))[0]])
    assert red.label == "first_breed"
    assert green.label == "not_a_dog"


def test_an_onnx_only_artifact_that_fails_its_check_is_refused(
    tmp_path: Path, backbone: Path
) -> None:
    directory = onnx_only_artifact(tmp_path / "model", backbone, expected_shift=0.01)
    # The synthetic check images show no dog: their gated outputs are exact zeros and ones,
    # so it is the reference output (before the gate) that catches the difference.
    with pytest.raises(ArtifactError, match="reference output differs"):
        Classifier.load(directory, threads=1)


def test_keras_cannot_serve_an_onnx_only_artifact(tmp_path: Path, backbone: Path) -> None:
    directory = onnx_only_artifact(tmp_path / "model", backbone)
    with pytest.raises(ArtifactError, match="only as ONNX"):
        Classifier.load(directory, runtime="keras", threads=1)


def test_an_onnx_only_artifact_needs_its_check_file(tmp_path: Path, backbone: Path) -> None:
    directory = onnx_only_artifact(tmp_path / "model", backbone)
    meta = json.loads((directory / "metadata.json").read_text())
    del meta["onnx"]
    (directory / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="section 'onnx'"):
        Classifier.load(directory, threads=1)
