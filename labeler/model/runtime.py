"""Inference runtimes: what runs the artifact's network on a preprocessed batch.

Keras (``predict_on_batch``, with the ``keras`` extra) always works. ONNX Runtime (a base
dependency) runs the same network about twice as
fast on a CPU and without TensorFlow, so it is preferred when it is installed and its outputs
match Keras. The ONNX model is either shipped in the artifact (``metadata.json`` section
``onnx``) or converted once from ``model.keras`` and cached outside the artifact, keyed by the
artifact's version and the hash of its Keras file. Either way it comes with a check file: a few
fixed inputs and the probabilities Keras gave for them. Serving runs the ONNX model on those
inputs at every start and refuses it when any probability differs by more than the recorded
tolerance, so a start with a shipped or cached ONNX model needs no TensorFlow at all.

Any failure (not installed, conversion error, mismatch, corrupt file) falls back to Keras with
one log line saying why.

An artifact whose ``model_file`` is itself ``model.onnx`` (a backbone that only exists as ONNX,
composed with its head by training) has no Keras model to fall back to: it is served by ONNX
Runtime, checked against the probabilities training recorded, or refused with the reason.

TensorFlow, Keras and ONNX Runtime are imported inside the functions that use them: a serving
install has no TensorFlow, and importing either runtime takes seconds that ``labeler --help``
and ``labeler health`` should not pay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from labeler.core.textsafe import error_line
from labeler.model.artifact import (
    METADATA_FILE,
    ONNX_MODEL_FILE,
    Artifact,
    ArtifactError,
    load_artifact,
)
from labeler.model.features import FEATURES_OUTPUT
from labeler.model.preprocessing import PreprocessingConfig, finish_batch

log = logging.getLogger("labeler.model.runtime")

RuntimeChoice = Literal["auto", "keras", "onnx"]
KERAS = "keras"
ONNXRUNTIME = "onnxruntime"
ONNX_FILE = ONNX_MODEL_FILE
CHECK_FILE = "onnx_check.npz"
CACHE_META_FILE = "onnx.json"
# Probabilities, absolute. ONNX Runtime fp32 differs from Keras by ~1e-7 on the models here;
# 1e-5 leaves room for another CPU's kernels and is still far below any decision threshold.
DEFAULT_TOLERANCE = 1e-5
CHECK_IMAGES = 4
# An optional second output of a composed graph: numbers before any hard decision inside the
# graph (a gate that zeroes the breeds of a photo without a dog would zero them for the
# synthetic check images too, and a check of zeros checks nothing). Checked, never served.
REFERENCE_OUTPUT = "reference"


class Runtime(Protocol):
    """Runs the network: a preprocessed float32 batch in, (n, classes) probabilities out."""

    name: str
    description: str

    @property
    def input_shape(self) -> tuple[int | None, ...]: ...  # without the batch axis

    @property
    def output_size(self) -> int | None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities and, for a graph with a features output, the feature vectors."""
        ...


class RuntimeMismatchError(Exception):
    """The ONNX model does not reproduce the Keras outputs within the tolerance."""


class OnnxRuntimeMissingError(ImportError):
    """The onnxruntime package is not installed."""


class KerasRuntime:
    """Keras 3 ``predict_on_batch``: a compiled graph, faster and leaner than an eager call."""

    name = KERAS

    def __init__(self, model: Any, description: str = KERAS) -> None:
        self.model = model
        self.description = description

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(self.model.input_shape[1:])

    @property
    def output_size(self) -> int | None:
        return self.model.output_shape[-1]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch))

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.predict(batch), None


class OnnxRuntime:
    """An ONNX Runtime CPU session with its thread count fixed and spinning off.

    Idle intra-op threads spin by default; here they would burn the core that the decoding
    thread needs between batches, so they sleep instead.
    """

    name = ONNXRUNTIME

    def __init__(self, model: str | Path | bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        self.threads = threads if threads > 0 else available_cores()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        by_name = {o.name: o for o in outputs}
        # A composed graph may add a REFERENCE_OUTPUT beside its probabilities, for the check,
        # and a FEATURES_OUTPUT, what a photo keeps for adapting.
        served = [o for o in outputs if o.name not in (REFERENCE_OUTPUT, FEATURES_OUTPUT)]
        if len(inputs) != 1 or len(served) != 1:
            raise ValueError(
                f"the ONNX model has {len(inputs)} inputs and {len(served)} outputs, not 1 and 1"
            )
        self._input, self._output = inputs[0], served[0]
        self._reference = by_name.get(REFERENCE_OUTPUT)
        self._features = by_name.get(FEATURES_OUTPUT)
        self.description = f"{ONNXRUNTIME} {ort.__version__}, {self.threads} thread(s)"

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(d if isinstance(d, int) else None for d in self._input.shape[1:])

    @property
    def output_size(self) -> int | None:
        last = self._output.shape[-1]
        return last if isinstance(last, int) else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input.name: np.ascontiguousarray(batch, dtype=np.float32)}
        return np.asarray(self.session.run([self._output.name], feed)[0])

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._features is None:
            return self.predict(batch), None
        feed = {self._input.name: np.ascontiguousarray(batch, dtype=np.float32)}
        probabilities, features = self.session.run([self._output.name, self._features.name], feed)
        return np.asarray(probabilities), np.asarray(features)

    def predict_reference(self, batch: np.ndarray) -> np.ndarray | None:
        """The graph's reference output, when it has one (see :data:`REFERENCE_OUTPUT`)."""
        if self._reference is None:
            return None
        feed = {self._input.name: np.ascontiguousarray(batch, dtype=np.float32)}
        return np.asarray(self.session.run([self._reference.name], feed)[0])


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity (taskset, cpuset), and a container's CPU
    quota (cgroup v2 ``cpu.max``, e.g. ``docker run --cpus 2`` on a 64-core host), whichever
    is smaller."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or no limit
        pass
    return cores


# --- the check: fixed inputs and the Keras probabilities for them -----------------------------


def check_images(config: PreprocessingConfig, count: int = CHECK_IMAGES) -> np.ndarray:
    """Fixed uint8 images at the chain's resized size: gradients, noise, blocks, near-flat.

    Not photos, but they drive every channel and both extremes of the 0..255 range, which is
    what a numerical comparison needs.
    """
    height, width = config.image_size
    channels = config.channels
    rng = np.random.default_rng(20261125)
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = np.stack(
        [
            xx * 255 // max(width - 1, 1),
            yy * 255 // max(height - 1, 1),
            (xx + yy) * 255 // max(width + height - 2, 1),
        ],
        axis=-1,
    )
    blocks = np.kron(
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1), np.int64)
    )[:height, :width]
    kinds = [
        gradient,
        rng.integers(0, 256, (height, width, 3)),
        blocks,
        np.clip(128 + rng.normal(0, 12, (height, width, 3)), 0, 255),
    ]
    images = [
        np.asarray(kinds[i % len(kinds)][..., :channels], dtype=np.uint8) for i in range(count)
    ]
    return np.stack(images)


@dataclass(frozen=True)
class OnnxCompanion:
    """An ONNX model beside a Keras one, with the check that it gives the same answers."""

    model_path: Path
    check_path: Path
    tolerance: float
    origin: str  # "artifact" or "cache"

    def verify(self, runtime: Runtime, config: PreprocessingConfig) -> float:
        """Largest probability difference to Keras on the check inputs; raise past tolerance."""
        with np.load(self.check_path) as data:
            images, expected = data["images"], data["expected"]
            reference = data["reference"] if "reference" in data.files else None
        batch = finish_batch(images, config)
        if reference is not None:
            got_reference = (
                runtime.predict_reference(batch) if isinstance(runtime, OnnxRuntime) else None
            )
            if got_reference is None or got_reference.shape != reference.shape:
                raise RuntimeMismatchError(
                    "the ONNX model lacks the reference output it was checked with"
                )
            if float(np.max(np.abs(got_reference.astype(np.float64) - reference))) > self.tolerance:
                raise RuntimeMismatchError(
                    "the ONNX model's reference output differs from the one recorded with it "
                    f"by more than the tolerance {self.tolerance:g}"
                )
        got = runtime.predict(batch)
        if got.shape != expected.shape:
            raise RuntimeMismatchError(
                f"the ONNX model returns shape {got.shape}, Keras returned {expected.shape}"
            )
        if not np.all(np.isfinite(got)):
            raise RuntimeMismatchError("the ONNX model returns non-finite probabilities")
        difference = float(np.max(np.abs(got.astype(np.float64) - expected)))
        if difference > self.tolerance:
            raise RuntimeMismatchError(
                f"ONNX outputs differ from Keras by {difference:.2g}, more than the tolerance "
                f"{self.tolerance:g} recorded with the model"
            )
        return difference


def export_onnx(
    model: Any,
    directory: Path,
    config: PreprocessingConfig,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Write ``model.onnx`` and its check file into ``directory``; return their metadata.

    The returned dict is what an artifact's ``metadata.json`` carries under ``onnx`` (training
    may call this so that the artifact ships its ONNX model). Raises when the converted model
    does not reproduce Keras within ``tolerance``.
    """
    import keras
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / ONNX_FILE
    shape = (None, *(int(d) for d in model.input_shape[1:]))
    # Keras's exporter wraps tf2onnx with the patches it needs for NumPy 2; the explicit
    # signature lets it export a model loaded from disk that was never called.
    signature = [tf.TensorSpec(shape, tf.float32, name="inputs")]
    converter_log = logging.getLogger("tf2onnx")
    level = converter_log.level
    converter_log.setLevel(logging.WARNING)  # it narrates every optimisation step at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras's own NumPy 2 shim for it
            keras.Model.export(
                model, str(onnx_path), format="onnx", verbose=False, input_signature=signature
            )
    finally:
        converter_log.setLevel(level)
    images = check_images(config)
    expected = np.asarray(model.predict_on_batch(finish_batch(images, config)), dtype=np.float32)
    np.savez_compressed(directory / CHECK_FILE, images=images, expected=expected)
    companion = OnnxCompanion(onnx_path, directory / CHECK_FILE, tolerance, "export")
    difference = companion.verify(OnnxRuntime(onnx_path, threads=1), config)
    return {
        "file": ONNX_FILE,
        "check_file": CHECK_FILE,
        "tolerance": tolerance,
        "max_difference": difference,
    }


def ship_onnx(directory: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Export an artifact's Keras model to ``model.onnx`` inside the artifact, with its check
    file, and name them in ``metadata.json`` (section ``onnx``): serving then needs neither a
    conversion at its first start nor TensorFlow. Needs TensorFlow, tf2onnx and onnxruntime.

    Raises (and leaves the artifact as it was) when the export does not reproduce Keras."""
    artifact = load_artifact(directory)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=artifact.path) as tmp:
        section = export_onnx(
            load_keras_model(artifact), Path(tmp), artifact.preprocessing, tolerance
        )
        for name in (ONNX_FILE, CHECK_FILE):
            os.replace(Path(tmp) / name, artifact.path / name)
    meta_path = artifact.path / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["onnx"] = section
    scratch = meta_path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    os.replace(scratch, meta_path)
    log.info(
        "%s: shipped %s (outputs match Keras within %.1g)",
        artifact.path,
        ONNX_FILE,
        section["max_difference"],
    )
    return section


# --- choosing the runtime ---------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labeler" / "onnx"


def cache_key(artifact: Artifact) -> str:
    """Version plus the Keras file's hash: a retrained model never reuses a stale conversion."""
    digest = hashlib.sha256(artifact.model_path.read_bytes()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", artifact.version)[:100]
    return f"{safe}-{digest}"


def shipped_companion(artifact: Artifact) -> OnnxCompanion | None:
    section = artifact.metadata.get("onnx")
    if not isinstance(section, dict):
        return None
    model_path = artifact.path / str(section.get("file", ONNX_FILE))
    check_path = artifact.path / str(section.get("check_file", CHECK_FILE))
    if not (model_path.is_file() and check_path.is_file()):
        log.warning("%s: metadata names an ONNX model but its files are missing", artifact.path)
        return None
    return OnnxCompanion(model_path, check_path, _tolerance(section), "artifact")


def cached_companion(entry: Path) -> OnnxCompanion | None:
    meta_path = entry / CACHE_META_FILE
    if not meta_path.is_file():
        return None
    section = json.loads(meta_path.read_text())
    return OnnxCompanion(
        entry / str(section["file"]),
        entry / str(section["check_file"]),
        _tolerance(section),
        "cache",
    )


def _tolerance(section: dict[str, Any]) -> float:
    value = section.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"ONNX tolerance must be a number in [0, 1), got {value!r}")
    return float(value)


def convert_into_cache(model: Any, artifact: Artifact, entry: Path) -> OnnxCompanion:
    """Convert once into ``entry``; written beside it and renamed, so readers never see half."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        section = export_onnx(model, scratch, artifact.preprocessing)
        (scratch / CACHE_META_FILE).write_text(
            json.dumps({**section, "artifact_version": artifact.version}, indent=2) + "\n"
        )
        try:
            scratch.rename(entry)
        except OSError:
            if not (entry / CACHE_META_FILE).is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    companion = cached_companion(entry)
    assert companion is not None
    return companion


@dataclass
class Loaded:
    runtime: Runtime
    keras_model: Any | None  # loaded only when Keras serves or had to convert


def open_runtime(
    artifact: Artifact,
    load_keras: Callable[[], Any],
    *,
    choice: RuntimeChoice = "auto",
    cache_dir: Path | None = None,
    threads: int = 0,
) -> Loaded:
    """The fastest runtime that gives Keras's answers, falling back to Keras on any failure."""
    if is_onnx_only(artifact):
        return Loaded(_open_onnx_only(artifact, choice, threads), None)
    if choice == KERAS:
        chosen = load_keras()
        return Loaded(KerasRuntime(chosen, "keras (LABELER_RUNTIME=keras)"), chosen)
    model: Any | None = None

    def keras_model() -> Any:
        nonlocal model
        if model is None:
            model = load_keras()
        return model

    try:
        runtime = _open_onnx(artifact, keras_model, cache_dir or default_cache_dir(), threads)
        return Loaded(runtime, model)
    except ArtifactError:  # the Keras model itself cannot be loaded: nothing to fall back to
        raise
    except Exception as exc:  # anything else: Keras still serves correct answers
        reason = _reason(exc)
        # Without onnxruntime installed, auto means Keras: nothing went wrong.
        quiet = choice == "auto" and isinstance(exc, OnnxRuntimeMissingError)
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "serving %s with Keras, not ONNX Runtime: %s",
            artifact.version,
            reason,
        )
        return Loaded(
            KerasRuntime(keras_model(), f"keras (ONNX Runtime not used: {reason})"), model
        )


def is_onnx_only(artifact: Artifact) -> bool:
    """The artifact's network is an ONNX file, with no Keras model beside it."""
    return artifact.model_path.suffix == ".onnx"


def _open_onnx_only(artifact: Artifact, choice: RuntimeChoice, threads: int) -> Runtime:
    if choice == KERAS:
        raise ArtifactError(
            f"{artifact.path}: this model exists only as ONNX ({artifact.model_path.name}); "
            "LABELER_RUNTIME=keras cannot serve it: use auto or onnx"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ArtifactError(
            f"{artifact.path}: the model is an ONNX model and onnxruntime is not installed "
            "(it is a dependency of labeler: reinstall it)"
        ) from exc
    companion = shipped_companion(artifact)
    if companion is None or companion.model_path != artifact.model_path:
        raise ArtifactError(
            f"{artifact.path}: metadata.json section 'onnx' must name {artifact.model_path.name} "
            "and its check file"
        )
    try:
        return _checked(OnnxRuntime(companion.model_path, threads), companion, artifact)
    except (RuntimeMismatchError, ValueError, OSError) as exc:
        raise ArtifactError(f"{artifact.path}: {_reason(exc)}") from exc
    except Exception as exc:  # onnxruntime raises its own types for a corrupt graph
        raise ArtifactError(
            f"{artifact.path}: the ONNX model cannot be loaded: {_reason(exc)}"
        ) from exc


def _open_onnx(
    artifact: Artifact, keras_model: Callable[[], Any], cache_dir: Path, threads: int
) -> Runtime:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxRuntimeMissingError(
            "onnxruntime is not installed (it is a dependency of labeler: reinstall it)"
        ) from exc
    companion = shipped_companion(artifact)
    if companion is None:
        entry = cache_dir / cache_key(artifact)
        companion = cached_companion(entry)
        if companion is None:
            log.info("converting %s to ONNX once, into %s", artifact.version, entry)
            try:
                companion = convert_into_cache(keras_model(), artifact, entry)
            except OSError as exc:
                log.warning(
                    "cannot cache the ONNX model in %s (%s): converting at every start; set "
                    "LABELER_RUNTIME_CACHE_DIR to a writable folder",
                    cache_dir,
                    _reason(exc),
                )
                return _converted_in_memory(artifact, keras_model(), threads)
    return _checked(OnnxRuntime(companion.model_path, threads), companion, artifact)


def _converted_in_memory(artifact: Artifact, model: Any, threads: int = 0) -> Runtime:
    with tempfile.TemporaryDirectory(prefix="labeler-onnx-") as tmp:
        section = export_onnx(model, Path(tmp), artifact.preprocessing)
        companion = OnnxCompanion(
            Path(tmp) / ONNX_FILE, Path(tmp) / CHECK_FILE, section["tolerance"], "conversion"
        )
        runtime = OnnxRuntime(companion.model_path.read_bytes(), threads)
        return _checked(runtime, companion, artifact)


def _checked(runtime: OnnxRuntime, companion: OnnxCompanion, artifact: Artifact) -> Runtime:
    difference = companion.verify(runtime, artifact.preprocessing)
    reference = "training's" if is_onnx_only(artifact) else "Keras"
    runtime.description = (
        f"{runtime.description} (ONNX model from the {companion.origin}; outputs match "
        f"{reference} within {difference:.1g}, tolerance {companion.tolerance:g})"
    )
    log.info("serving %s with %s", artifact.version, runtime.description)
    return runtime


def _reason(exc: BaseException) -> str:
    message = error_line(exc, 200)
    name = type(exc).__name__
    return name if message == name else f"{name}: {message}"


# --- the Keras model itself ---------------------------------------------------------------


def load_keras_model(artifact: Artifact, threads: int = 0) -> Any:
    """The artifact's Keras model. Imports TensorFlow, which only this path needs."""
    if artifact.model_path.suffix == ".onnx":
        raise ArtifactError(
            f"{artifact.path}: this model exists only as ONNX ({artifact.model_path.name}), "
            "it has no Keras model"
        )
    try:
        import keras
    except ImportError as exc:  # a serving install without TensorFlow
        raise ArtifactError(
            f"{artifact.path}: TensorFlow/Keras is not installed, and the model has no ONNX "
            "version usable here (shipped in the artifact or in LABELER_RUNTIME_CACHE_DIR): "
            "pip install 'labeler[keras]', or ship model.onnx in the artifact where TensorFlow "
            "is installed (python -m training export-onnx DIR)"
        ) from exc
    if threads > 0:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already ran something in this process: keep its pools
            pass

    import labeler.model.keras_layers  # noqa: F401  registers the layers saved models refer to

    try:
        return keras.models.load_model(artifact.model_path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a corrupt or foreign file
        raise ArtifactError(
            f"{artifact.model_path} cannot be loaded as a Keras model: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
