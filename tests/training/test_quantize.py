"""Static int8 quantization of an ONNX backbone, and ``python -m training onnx --quantize int8``
end to end, on a tiny made-up network (no real weights).

The "backbone" is a 1x1 convolution, ReLU, a channel average (``features``, 3 numbers) and a
dense layer to 1000 ImageNet-like ``logits``: red votes for ImageNet class 151 (Chihuahua),
green for 152 (Japanese spaniel), blue for 500 (not a dog), so the expected answers are known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from labeler.core.paths import INT8_CPU_FLAGS, cpu_flags
from labeler.model.artifact import ArtifactError, load_artifact
from labeler.model.classifier import Classifier
from training import onnx_backbone
from training.cli import build_parser
from training.onnx_backbone import BackboneSpec, OnnxBackbone
from training.quantize import (
    CLASSIFIER,
    FIRST_CONV,
    QuantizeOptions,
    calibration_sample,
    quantize_backbone,
    resolve_exclusions,
)

SIZE = 16
SPEC = BackboneSpec("tiny-lite", "tiny-lite.onnx", SIZE)
BREEDS = (
    ("n02085620", "Chihuahua"),
    ("n02085782", "Japanese_spaniel"),
    ("n02115641", "dingo"),
    ("n02115913", "dhole"),
    ("n02116738", "African_hunting_dog"),
)


def tiny_backbone(path: Path) -> Path:
    mixing = np.array([[1.0, 0.1, 0.0], [0.1, 1.0, 0.1], [0.0, 0.1, 1.0]], np.float32)
    weights = np.zeros((3, 1000), np.float32)
    weights[0, 151] = 14.0
    weights[1, 152] = 14.0
    weights[2, 500] = 14.0
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], name="stem"),
            helper.make_node("Relu", ["conv"], ["relu"], name="stem_relu"),
            helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
            helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], name="fc"),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000]),
        ],
        [
            numpy_helper.from_array(mixing.reshape(3, 3, 1, 1), "conv_w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "conv_b"),
            numpy_helper.from_array(weights, "fc_w"),
            numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def photos(channel: int, n: int, seed: int) -> np.ndarray:
    """Photos dominated by one channel, some only barely (so the rule has something to fit)."""
    rng = np.random.default_rng([seed, channel])
    images = rng.integers(90, 200, (n, SIZE + 4, SIZE + 6, 3)).astype(np.int64)
    images[..., channel] += rng.integers(-30, 120, (n, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_photos(root: Path, per_class: int, seed: int) -> Path:
    for channel, (synset, breed) in enumerate(BREEDS[:2]):
        folder = root / f"{synset}-{breed}"
        folder.mkdir(parents=True)
        for i, image in enumerate(photos(channel, per_class, seed)):
            Image.fromarray(image).save(folder / f"{synset}_{i}.png")
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone(tmp_path_factory.mktemp("weights") / SPEC.file)


def test_calibration_sample_spreads_over_classes() -> None:
    labels = np.repeat(np.arange(4), [10, 10, 10, 2])
    chosen = calibration_sample(labels, 9, seed=1)
    assert len(chosen) == len(set(chosen)) == 9
    assert sorted(np.bincount(labels[chosen], minlength=4)) == [2, 2, 2, 3]
    assert np.array_equal(chosen, calibration_sample(labels, 9, seed=1))
    assert len(calibration_sample(labels, 100)) == len(labels)


def test_exclusion_aliases_name_the_stem_and_the_classifier(backbone: Path) -> None:
    model = onnx.load(str(backbone))
    assert resolve_exclusions(model, (FIRST_CONV, CLASSIFIER)) == ["fc", "stem"]
    assert resolve_exclusions(model, ("pool",)) == ["pool"]
    with pytest.raises(ValueError, match="no node"):
        resolve_exclusions(model, ("missing",))
    with pytest.raises(ValueError, match="calibration method"):
        QuantizeOptions(method="magic")


def test_a_quantized_backbone_keeps_its_outputs_and_its_answers(
    tmp_path: Path, backbone: Path
) -> None:
    images = np.concatenate([photos(c, 8, seed=5)[:, :SIZE, :SIZE] for c in range(3)])
    out = tmp_path / "int8.onnx"
    info = quantize_backbone(backbone, SPEC, images, out, QuantizeOptions(images=len(images)))
    assert info["excluded_nodes"] == ["fc"] and info["quantize_nodes"] > 0
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert [o.name for o in model.graph.output] == ["features", "logits"]
    float_features, float_logits = OnnxBackbone(backbone, SPEC, threads=1).run(images)
    features, logits = OnnxBackbone(out, SPEC, threads=1).run(images)
    assert logits is not None and float_logits is not None
    # 7-bit weights (the default): without VNNI, too, ONNX Runtime's u8s8 kernels add the
    # products in 16 bits without saturating, so the features stay as close as with VNNI.
    np.testing.assert_allclose(features, float_features, atol=0.02)
    assert np.array_equal(logits.argmax(axis=1), float_logits.argmax(axis=1))


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_training_onnx_quantize_builds_an_artifact_that_serves(
    tmp_path: Path, backbone: Path, monkeypatch: pytest.MonkeyPatch, quantize: str
) -> None:
    from training.onnx_train import run_onnx

    monkeypatch.setitem(onnx_backbone.KNOWN_BACKBONES, SPEC.name, SPEC)
    monkeypatch.setattr("training.onnx_train.KNOWN_BACKBONES", onnx_backbone.KNOWN_BACKBONES)
    tsv = tmp_path / "breeds.tsv"
    tsv.write_text(
        "index\tsynset\tbreed\n" + "".join(f"{i}\t{s}\t{b}\n" for i, (s, b) in enumerate(BREEDS))
    )
    train = write_photos(tmp_path / "train", per_class=12, seed=1)
    calibration = write_photos(tmp_path / "calibration", per_class=60, seed=2)
    output = tmp_path / "models" / "tiny-int8"
    argv = [
        "onnx",
        "--backbone",
        SPEC.name,
        "--weights-dir",
        str(backbone.parent),
        "--data",
        str(train),
        "--breeds-tsv",
        str(tsv),
        "--calibration-data",
        str(calibration),
        "--calibration-target",
        "0.9",
        "--animal-target",
        "0.9",
        "--feature-cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(output),
        "--workers",
        "1",
        "--quantize",
        quantize,
        "--quantize-images",
        "16",
    ]
    args = build_parser().parse_args(argv)
    assert args.command == "onnx"
    run_onnx(args)

    meta = json.loads((output / "metadata.json").read_text())
    backbone_section = meta["backbone"]
    assert backbone_section["weights_file"] == SPEC.file  # the float source, by name and hash
    if quantize == "int8":
        section = backbone_section["quantization"]
        assert section["format"] == "QDQ" and section["excluded_nodes"] == ["fc"]
        assert section["quantized_sha256"] != backbone_section["weights_sha256"]
        assert meta["data"]["quantization"]["name"] == "train"
        assert meta["data"]["quantization"]["photos"] == 16
        assert meta["training"]["quantize"] == "int8"
        served = onnx.load(str(output / "model.onnx"))
        assert any(n.op_type == "QuantizeLinear" for n in served.graph.node)
    else:
        assert "quantization" not in backbone_section
        assert "quantize" not in meta["training"]
    artifact = load_artifact(output)
    assert artifact.labels[-1] == "not_a_dog"
    for threads in (1, 2):  # the check file must hold whatever the thread count
        classifier = Classifier.load(output, runtime="auto", threads=threads)
        assert classifier.runtime_name == "onnxruntime"
        red, green, blue = classifier.classify_images(
            [
                np.full((SIZE, SIZE, 3), (230, 90, 90), np.uint8),
                np.full((SIZE, SIZE, 3), (90, 230, 90), np.uint8),
                np.full((SIZE, SIZE, 3), (90, 90, 230), np.uint8),
            ]
        )
        assert red.label == "Chihuahua"
        assert green.label == "Japanese_spaniel"
        assert blue.label == "not_a_dog"


def test_the_quantization_never_sees_the_calibration_photos(tmp_path: Path) -> None:
    from training.onnx_train import _quantized_backbone

    args = build_parser().parse_args(
        [
            "onnx",
            "--output",
            str(tmp_path / "out"),
            "--quantize",
            "int8",
            "--data",
            str(tmp_path / "same"),
            "--calibration-data",
            str(tmp_path / "same"),
        ]
    )
    with pytest.raises(ValueError, match="calibration set"):
        _quantized_backbone(tmp_path / "w.onnx", "0" * 64, SPEC, args, None)


def test_the_committed_int8_artifact_loads_and_passes_its_check() -> None:
    """``models/efficientnet-lite2-int8-dogs`` as ``--quantize int8`` made it: an int8 graph,
    rules fitted on its own outputs, served within its check file's tolerance."""
    directory = Path(__file__).resolve().parents[2] / "models" / "efficientnet-lite2-int8-dogs"
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["training"]["quantize"] == "int8"
    assert meta["data"]["quantization"]["name"] == "stanford-dogs-train"
    assert meta["decision"]["fitted_on"] == "fullframe-calibration"
    # 7-bit weights: the sums are exact with and without VNNI, so one artifact serves both.
    assert meta["training"]["quantize_reduce_range"] is True
    try:
        classifier = Classifier.load(directory, runtime="auto", threads=2)
    except ArtifactError as exc:
        # Where int8 arithmetic is not exact (never on a CPU it is the default on) the check
        # notices, and the model is refused with the reason instead of serving other numbers
        # than it was fitted on.
        assert not cpu_flags() & INT8_CPU_FLAGS, exc
        assert "differs from the one recorded" in str(exc)
        return
    assert classifier.runtime_name == "onnxruntime"
    assert "from the artifact" in classifier.runtime.description
