"""Static int8 quantization of an ONNX backbone, for ``python -m training onnx --quantize int8``.

ONNX Runtime's ``quantize_static`` (QDQ format, per-channel weights) with activation ranges
calibrated on a seeded, stratified sample of *training* photos (Stanford Dogs crops), fed
through the labeler's own preprocessing chain and the backbone's normalisation, exactly as
:class:`training.onnx_backbone.OnnxBackbone` feeds the float network. The full-frame
calibration photos are never used here: they measure the quantized model afterwards, and the
photo rule, the no-dog gate and the animal rule are refitted on the quantized model's outputs.

The quantized backbone is an ordinary ONNX file with the same ``features`` and ``logits``
outputs, so everything downstream (features, head, composition into the served graph, the
check file) runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.onnx_backbone import BackboneSpec

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
# Aliases accepted in ``QuantizeOptions.exclude`` besides node names.
FIRST_CONV = "first-conv"
CLASSIFIER = "classifier"


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything the quantized network depends on besides the float file and the photos."""

    images: int = 300
    method: str = "minmax"
    per_channel: bool = True
    activations: str = "uint8"  # U8S8: what x86 (VNNI) integer kernels take natively
    symmetric_activations: bool = False
    reduce_range: bool = True  # 7-bit weights: no u8s8 saturation on AVX2 without VNNI
    exclude: tuple[str, ...] = (CLASSIFIER,)  # node names, or FIRST_CONV / CLASSIFIER
    batch_size: int = 16
    stride_batches: int = 4
    seed: int = 0
    percentile: float = 99.999
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, not {self.method!r}")
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {ACTIVATION_TYPES}")
        if self.images < 1:
            raise ValueError("quantization needs at least one calibration image")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["exclude"] = list(self.exclude)
        return values

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


class ImageBatches:
    """``onnxruntime.quantization.CalibrationDataReader`` over uint8 NHWC images.

    Each batch is normalised as the served graph does it: NCHW, ``(x - mean) / scale``.
    """

    def __init__(
        self, images: np.ndarray, spec: BackboneSpec, input_name: str, batch_size: int
    ) -> None:
        self.images = images
        self.spec = spec
        self.input_name = input_name
        self.batch_size = max(1, batch_size)
        self._range = (0, len(self))
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def _all(self) -> Iterator[dict[str, np.ndarray]]:
        start, end = self._range
        for i in range(start * self.batch_size, end * self.batch_size, self.batch_size):
            chunk = self.images[i : i + self.batch_size].astype(np.float32)
            feed = (chunk.transpose(0, 3, 1, 2) - self.spec.mean) / self.spec.scale
            yield {self.input_name: np.ascontiguousarray(feed, dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._all()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Batches ``start_index`` to ``end_index`` only: ONNX Runtime calibrates stride by
        stride (``CalibStridedMinMax``), so it never holds every activation of every image."""
        self._range = (max(0, start_index), min(len(self), end_index))
        self._batches = None

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def _stride(batches: int, most: int) -> int:
    """The largest stride up to ``most`` that divides ``batches`` (ONNX Runtime needs that)."""
    return max(d for d in range(1, max(1, min(most, batches)) + 1) if batches % d == 0)


def calibration_sample(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` items, as evenly spread over the classes as ``count`` allows
    (round-robin over a seeded shuffle of each class), sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for pool in pools:
            if pool and len(picked) < count:
                picked.append(int(pool.pop()))
    return np.sort(np.asarray(picked, dtype=np.int64))


def resolve_exclusions(model: Any, exclude: Sequence[str]) -> list[str]:
    """Node names for ``exclude``: names as given, ``first-conv`` as the first Conv in graph
    order (the stem), ``classifier`` as the Gemm/MatMul nodes that produce a graph output."""
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    graph_outputs = {o.name for o in model.graph.output}
    producers = {out: n for n in nodes for out in n.output}
    resolved: list[str] = []
    for item in exclude:
        if item == FIRST_CONV:
            first = next((n for n in nodes if n.op_type == "Conv"), None)
            if first is None:
                raise ValueError("the backbone has no Conv node to keep in float")
            resolved.append(first.name)
        elif item == CLASSIFIER:
            found = []
            for out in graph_outputs:
                node = producers.get(out)
                # Walk back through reshapes/identities to the dense layer.
                while node is not None and node.op_type in ("Identity", "Reshape", "Flatten"):
                    node = producers.get(node.input[0])
                if node is not None and node.op_type in ("Gemm", "MatMul"):
                    found.append(node.name)
            if not found:
                raise ValueError("the backbone has no dense classifier at its outputs")
            resolved.extend(sorted(found))
        elif item in names:
            resolved.append(item)
        else:
            raise ValueError(f"no node {item!r} in the backbone")
    return sorted(set(resolved))


def quantize_backbone(
    float_path: str | Path,
    spec: BackboneSpec,
    images: np.ndarray,
    output: str | Path,
    options: QuantizeOptions,
) -> dict[str, Any]:
    """Write the int8 (QDQ) version of ``float_path`` to ``output``; return what was done.

    ``images`` are uint8 NHWC photos at the backbone's side, preprocessed by the labeler's
    chain: the activation ranges are calibrated on them.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=output.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and the graph optimisations quantization expects (BatchNorm folded,
        # constants folded); ONNX Runtime's docs ask for this step before quantize_static.
        # ONNX's own shape inference covers a CNN's operators; the symbolic one would need
        # sympy, which the project does not otherwise depend on.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        input_name = model.graph.input[0].name
        excluded = resolve_exclusions(model, options.exclude)
        reader = ImageBatches(images, spec, input_name, options.batch_size)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[options.method]
        extra: dict[str, Any] = {
            "ActivationSymmetric": options.symmetric_activations,
            "WeightSymmetric": True,
            "CalibMovingAverage": False,
            # A stride of a few batches: ranges (MinMax) or histograms (Entropy, Percentile)
            # are merged after each, so memory stays that of one stride, not of every image.
            "CalibStridedMinMax": _stride(len(reader), options.stride_batches),
            **options.extra,
        }
        if options.method == "percentile":
            extra["CalibPercentile"] = options.percentile
        quantize_static(
            str(prepared),
            str(scratch := Path(tmp) / "quantized.onnx"),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=method,
            extra_options=extra,
        )
        quantized = onnx.load(str(scratch))
        onnx.checker.check_model(quantized)
        outputs = [o.name for o in quantized.graph.output]
        for name in (spec.features_output, spec.logits_output):
            if name is not None and name not in outputs:
                raise ValueError(f"the quantized backbone lost its output {name!r}")
        scratch.replace(output)
    quantized_ops = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    info = {
        "format": "QDQ",
        "weights": "int8, per channel" if options.per_channel else "int8, per tensor",
        "activations": options.activations,
        "options": options.as_dict(),
        "excluded_nodes": excluded,
        "quantize_nodes": quantized_ops,
        "calibration_images": len(images),
        "seconds": time.perf_counter() - started,
    }
    log.info(
        "quantized %s: %d QuantizeLinear nodes, excluded %s, in %.0f s",
        Path(float_path).name,
        quantized_ops,
        excluded or "nothing",
        info["seconds"],
    )
    return info
