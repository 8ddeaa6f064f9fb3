"""ONNX backbones: features from any ONNX image network, and one served graph with its head.

Training runs the backbone with ONNX Runtime (no TensorFlow) to get a feature vector per
photo, trains a softmax head on those vectors, then :func:`compose_serving_model` writes one
ONNX graph that serving runs as it runs any artifact: the labeler's preprocessed batch in
(N x H x W x 3 float32 on the 0..255 scale), class probabilities out. The graph holds the
backbone's own input normalisation, so nothing about the backbone leaks into serving code.

When the backbone also has an ImageNet ``logits`` output, the graph adds a last class
``not_a_dog``: the probability ImageNet puts outside its dog classes. The breed probabilities
are the head's, scaled by the probability that there is a dog at all, so the 121 outputs
still sum to one and a photo without a dog goes to review as "not a dog breed".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.model.features import FEATURES_OUTPUT
from labeler.model.runtime import REFERENCE_OUTPUT

log = logging.getLogger(__name__)

# ImageNet-1k classes 151-268 are domestic dog breeds; 269-275 are wolves, coyote, dingo, dhole
# and African hunting dog. The three wild dogs are Stanford Dogs classes, and a husky or a
# malamute often scores as a wolf, so all of 151-275 count as "a dog is in the photo".
IMAGENET_DOGS = range(151, 276)


@dataclass(frozen=True)
class BackboneSpec:
    """How to feed one ONNX backbone: its side, its normalisation, its output names."""

    name: str
    file: str
    size: int
    mean: float = 127.0
    scale: float = 128.0
    features_output: str = "features"
    logits_output: str | None = "logits"


# The two EfficientNet-Lite exports in the shared weights folder (see its README).
KNOWN_BACKBONES = {
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", "efficientnet-lite0.onnx", 224),
    "efficientnet-lite2": BackboneSpec("efficientnet-lite2", "efficientnet-lite2.onnx", 260),
}


class OnnxBackbone:
    """An ONNX Runtime session over a backbone, fed with the labeler's uint8 NHWC images."""

    def __init__(self, path: str | Path, spec: BackboneSpec, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.spec = spec
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if spec.features_output not in outputs:
            raise ValueError(f"{self.path.name} has no output {spec.features_output!r}")
        self.outputs = [spec.features_output]
        if spec.logits_output is not None and spec.logits_output in outputs:
            self.outputs.append(spec.logits_output)

    def run(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (n, d) and, when the backbone has them, ImageNet logits (n, 1000)."""
        features, logits = [], []
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size].astype(np.float32)
            feed = (chunk.transpose(0, 3, 1, 2) - self.spec.mean) / self.spec.scale
            result = self.session.run(self.outputs, {self.input_name: feed})
            features.append(result[0])
            if len(result) > 1:
                logits.append(result[1])
            done = min(i + batch_size, len(images))
            if (i // batch_size) % 40 == 0 or done == len(images):
                rate = done / max(time.perf_counter() - start, 1e-9)
                log.info("%s %d/%d (%.1f images/s)", self.spec.name, done, len(images), rate)
        if not features:
            return np.zeros((0, 0), np.float32), None
        return np.concatenate(features), (np.concatenate(logits) if logits else None)


def dog_probability(logits: np.ndarray) -> np.ndarray:
    """ImageNet's probability that a dog is in each photo: softmax mass on the dog classes."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[:, IMAGENET_DOGS].sum(axis=1) / exp.sum(axis=1)


@dataclass(frozen=True)
class Head:
    """What turns the backbone's outputs into breed probabilities.

    Either a trained dense layer on ``features`` (``kernel`` (d, classes), ``bias``), or the
    backbone's own ImageNet classifier restricted to the breeds' ImageNet classes
    (``imagenet_classes``, one index per breed, softmax over those only).
    """

    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None
    imagenet_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.kernel is None) == (self.imagenet_classes is None):
            raise ValueError("a head is either a dense layer or a set of ImageNet classes")

    @property
    def classes(self) -> int:
        if self.kernel is not None:
            return int(self.kernel.shape[1])
        return len(self.imagenet_classes or ())


def breed_probabilities(
    features: np.ndarray, logits: np.ndarray | None, head: Head, dog_gate: float | None
) -> np.ndarray:
    """What the composed graph computes, in numpy: for training's metrics and the check."""
    if head.kernel is not None:
        assert head.bias is not None
        breeds = _softmax(features @ head.kernel + head.bias)
    else:
        assert logits is not None
        breeds = _softmax(logits[:, list(head.imagenet_classes or ())])
    if dog_gate is None:
        return breeds
    assert logits is not None
    dog = (dog_probability(logits) >= dog_gate).astype(breeds.dtype)[:, None]
    return np.concatenate([breeds * dog, 1.0 - dog], axis=1)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def compose_serving_model(
    backbone_path: str | Path, spec: BackboneSpec, head: Head, dog_gate: float | None
) -> bytes:
    """One ONNX graph: NHWC 0..255 batch -> normalise -> backbone -> breed probabilities,
    with the backbone's pooled features as a second output (``features``).

    With ``dog_gate``, the output gains a last class ``not_a_dog``: 1 when ImageNet's
    probability of a dog (:func:`dog_probability`) is under the gate, when the breeds are all
    0; otherwise 0 and the breeds as they are. A gate, not a product: a dog photo keeps its
    breed confidence however much ImageNet hesitates between a dog and a wolf.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(backbone_path))
    graph = model.graph
    old_input = graph.input[0]
    outputs_present = {o.name for o in graph.output}
    needs_logits = head.imagenet_classes is not None or dog_gate is not None
    if needs_logits and spec.logits_output not in outputs_present:
        raise ValueError(f"{Path(backbone_path).name} has no ImageNet logits output")
    prefix = "labeler_"

    def const(name: str, value: np.ndarray | np.generic) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), prefix + name))
        return prefix + name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        graph.node.append(helper.make_node(op, inputs, [prefix + output], **attrs))
        return prefix + output

    if head.kernel is not None:
        assert head.bias is not None
        scores = node(
            "Gemm",
            [
                spec.features_output,
                const("kernel", head.kernel.astype(np.float32)),
                const("bias", head.bias.astype(np.float32)),
            ],
            "head_logits",
        )
    else:
        classes = np.asarray(head.imagenet_classes, dtype=np.int64)
        scores = node(
            "Gather",
            [str(spec.logits_output), const("breed_classes", classes)],
            "breed_logits",
            axis=1,
        )
    breeds = node("Softmax", [scores], "breeds", axis=1)
    result = breeds
    if dog_gate is not None:
        imagenet = node("Softmax", [str(spec.logits_output)], "imagenet", axis=1)
        dogs = np.asarray(list(IMAGENET_DOGS), dtype=np.int64)
        dog_probs = node("Gather", [imagenet, const("dog_classes", dogs)], "dog_probs", axis=1)
        p_dog = node(
            "ReduceSum", [dog_probs, const("axis1", np.array([1], np.int64))], "p_dog", keepdims=1
        )
        is_dog = node(
            "Cast",
            [node("GreaterOrEqual", [p_dog, const("gate", np.float32(dog_gate))], "is_dog_bool")],
            "is_dog",
            to=TensorProto.FLOAT,
        )
        gated = node("Mul", [breeds, is_dog], "gated")
        no_dog = node("Sub", [const("one", np.float32(1.0)), is_dog], "no_dog")
        result = node("Concat", [gated, no_dog], "with_no_dog", axis=1)
        graph.node.append(helper.make_node("Concat", [breeds, p_dog], [REFERENCE_OUTPUT], axis=1))
    graph.node.append(helper.make_node("Identity", [result], ["probabilities"]))
    # The normalisation runs first: inserted before the backbone's own nodes.
    normalise = [
        helper.make_node("Transpose", ["inputs"], [prefix + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Sub", [prefix + "nchw", const("mean", np.float32(spec.mean))], [prefix + "centred"]
        ),
        helper.make_node(
            "Div", [prefix + "centred", const("scale", np.float32(spec.scale))], [old_input.name]
        ),
    ]
    for item in reversed(normalise):
        graph.node.insert(0, item)
    graph.input.remove(old_input)
    graph.input.insert(
        0,
        helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["n", spec.size, spec.size, 3]),
    )
    width = head.classes + (1 if dog_gate is not None else 0)
    features = next(o for o in graph.output if o.name == spec.features_output)
    kept_features = onnx.ValueInfoProto()
    kept_features.CopyFrom(features)
    while len(graph.output):
        graph.output.pop()
    graph.output.append(
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", width])
    )
    if dog_gate is not None:
        graph.output.append(
            helper.make_tensor_value_info(
                REFERENCE_OUTPUT, TensorProto.FLOAT, ["n", head.classes + 1]
            )
        )
    # What a classified photo keeps for adapting (labeler.model.features).
    if spec.features_output != FEATURES_OUTPUT:
        graph.node.append(helper.make_node("Identity", [spec.features_output], [FEATURES_OUTPUT]))
        kept_features.name = FEATURES_OUTPUT
    graph.output.append(kept_features)
    onnx.checker.check_model(model)
    return model.SerializeToString()
