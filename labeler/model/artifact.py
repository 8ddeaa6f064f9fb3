"""The model artifact: the one format that training writes and the labeler loads.

A directory ``models/<name>/`` holding::

    metadata.json   format, version, kind, preprocessing, calibration, decision, metrics, ...
    labels.json     the class names in output order
    model.keras     a Keras 3 model: preprocessed batch in, class probabilities out
                    (or model.onnx alone, for a network that exists only as ONNX)
    whitening.npz   (only when the preprocessing whitens) the fitted mean and matrix

Everything the labeler needs to turn a photo into the model's input is in ``metadata.json``
(and ``whitening.npz``), so training and serving apply the same chain.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from labeler.model.features import (
    FeatureError,
    FeatureSpace,
    HeadCorrection,
    file_sha256,
)
from labeler.model.metadata import (
    FORMAT,
    FORMAT_VERSION,
    LABELS_FILE,
    MODEL_FILE,
    FileName,
    Kind,
    View,
    describe_errors,
    parse_metadata,
)
from labeler.model.preprocessing import PreprocessingConfig, Whitening, WhiteningMethod

METADATA_FILE = "metadata.json"
ONNX_MODEL_FILE = "model.onnx"
WHITENING_FILE = "whitening.npz"
KINDS: tuple[str, ...] = typing.get_args(Kind)
TTA_VIEWS: tuple[str, ...] = typing.get_args(View)


class ArtifactError(Exception):
    """The model artifact is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class DecisionDefaults:
    """Review thresholds recommended by training; settings may override them."""

    review_threshold: float | None = None
    review_margin: float | None = None
    # labeler.decide.grouping.combine: 1 (the geometric mean) for models trained before the
    # animal rule was fitted, which is what they were served with.
    animal_evidence: float = 1.0
    animal_evidence_by_photos: tuple[float, ...] | None = None  # 2, 3, 4 or more photos


@dataclass(frozen=True)
class ArrayFile:
    """An array file beside metadata.json and the sha256 it must have."""

    name: str
    sha256: str


@dataclass(frozen=True)
class Artifact:
    path: Path
    name: str
    version: str
    kind: str
    labels: tuple[str, ...]
    preprocessing: PreprocessingConfig
    temperature: float = 1.0
    reject_labels: frozenset[str] = frozenset()
    decision: DecisionDefaults = DecisionDefaults()
    quality_note: str = ""
    tta: tuple[str, ...] = ("identity",)
    # Per label, multiplied into the calibrated probabilities (labeler.decide.adapt): the
    # shelter's breed frequencies; None for the model as trained.
    class_weights: tuple[float, ...] | None = None
    # labeler.model.features: what a classified photo keeps for adapting, and the shelter
    # head adapting refitted; None for a model without them.
    feature_space: ArrayFile | None = None
    feature_space_id: str | None = None
    head_correction: ArrayFile | None = None
    # (label, what staff chose instead): labels sent to review at this shelter (labeler adapt).
    look_alikes: tuple[tuple[str, str], ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def never_auto_labels(self) -> frozenset[str]:
        """Labels whose photos always go to review: not breeds, or look-alikes here."""
        return self.reject_labels | {label for label, _ in self.look_alikes}

    @property
    def model_path(self) -> Path:
        return self.path / str(self.metadata.get("model_file", MODEL_FILE))

    def describe(self) -> str:
        """One line saying which model this is and what its labels are worth."""
        note = f" - {self.quality_note}" if self.quality_note else ""
        classes = len(self.labels)
        described = f"model {self.name} version {self.version} ({self.kind}, {classes} classes)"
        if self.look_alikes:
            names = ", ".join(label for label, _ in self.look_alikes)
            described += f"; always sent to review here, as look-alikes of other breeds: {names}"
        return described + note


def load_artifact(path: str | Path) -> Artifact:
    """Read and validate an artifact directory (without loading the network itself)."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"model artifact directory {root} does not exist")
    raw = _read_json(root / METADATA_FILE)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtifactError(f"{root / METADATA_FILE} is not a {FORMAT} metadata file")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{root}: artifact format version {raw.get('format_version')!r} is not supported "
            f"(this labeler reads version {FORMAT_VERSION})"
        )
    try:
        meta = parse_metadata(raw)
    except ValueError as exc:
        raise ArtifactError(f"{root / METADATA_FILE}: {exc}") from exc

    labels = _read_json(root / meta.labels_file)
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) and x for x in labels)
    ):
        raise ArtifactError(f"{root}: labels file must be a non-empty list of names")
    if len(set(labels)) != len(labels):
        raise ArtifactError(f"{root}: labels file has duplicate names")

    model_file = root / meta.model_file
    if not model_file.is_file():
        raise ArtifactError(f"{root}: model file {model_file.name} is missing")

    preprocessing = _parse_preprocessing(root, meta.preprocessing)
    reject = frozenset(meta.output.reject_labels)
    if not reject <= set(labels):
        raise ArtifactError(f"{root}: reject_labels {sorted(reject - set(labels))} are not labels")
    look_alikes = tuple(sorted(meta.output.look_alikes.items()))
    if not {label for label, _ in look_alikes} <= set(labels):
        unknown = sorted({label for label, _ in look_alikes} - set(labels))
        raise ArtifactError(f"{root}: output.look_alikes {unknown} are not labels")
    weights = meta.output.class_weights
    if weights is not None and len(weights) != len(labels):
        raise ArtifactError(
            f"{root}: output.class_weights has {len(weights)} weights for {len(labels)} labels"
        )
    if "flip" in meta.tta and len(preprocessing.output_shape()) != 3:
        raise ArtifactError(f"{root}: the flip view needs image input, not a feature vector")
    space = correction = None
    if meta.features is not None:
        space = ArrayFile(meta.features.file, meta.features.sha256)
    if meta.output.head_correction is not None:
        if space is None:
            raise ArtifactError(f"{root}: output.head_correction needs a features section")
        correction = ArrayFile(meta.output.head_correction.file, meta.output.head_correction.sha256)
    for entry in (space, correction):
        if entry is not None and not (root / entry.name).is_file():
            raise ArtifactError(f"{root}: {entry.name} is missing")
    return Artifact(
        path=root,
        name=meta.name,
        version=meta.version,
        kind=meta.kind,
        labels=tuple(labels),
        preprocessing=preprocessing,
        temperature=meta.calibration.temperature,
        reject_labels=reject,
        decision=DecisionDefaults(
            review_threshold=meta.decision.review_threshold,
            review_margin=meta.decision.review_margin,
            animal_evidence=meta.decision.animal_evidence,
            animal_evidence_by_photos=(
                None
                if meta.decision.animal_evidence_by_photos is None
                else tuple(meta.decision.animal_evidence_by_photos)
            ),
        ),
        quality_note=meta.quality_note,
        tta=tuple(meta.tta),
        class_weights=None if weights is None else tuple(weights),
        feature_space=space,
        feature_space_id=None if meta.features is None else meta.features.space,
        head_correction=correction,
        look_alikes=look_alikes,
        metadata=raw,
    )


def load_feature_space(artifact: Artifact) -> FeatureSpace | None:
    """The artifact's feature space, its sha256 and identity checked; None without one."""
    if artifact.feature_space is None:
        return None
    path = _checked_file(artifact, artifact.feature_space)
    try:
        space = FeatureSpace.load(path, len(artifact.labels))
    except FeatureError as exc:
        raise ArtifactError(f"{artifact.path}: {exc}") from exc
    if space.space != artifact.feature_space_id:
        raise ArtifactError(
            f"{artifact.path}: {path.name} is feature space {space.space}, but metadata.json "
            f"names {artifact.feature_space_id}"
        )
    return space


def load_head_correction(artifact: Artifact, space: FeatureSpace) -> HeadCorrection | None:
    """The shelter head ``labeler adapt`` wrote, checked; None for a model not refitted."""
    if artifact.head_correction is None:
        return None
    path = _checked_file(artifact, artifact.head_correction)
    try:
        return HeadCorrection.load(path, space.dims, len(artifact.labels))
    except FeatureError as exc:
        raise ArtifactError(f"{artifact.path}: {exc}") from exc


def _checked_file(artifact: Artifact, entry: ArrayFile) -> Path:
    path = artifact.path / entry.name
    if not path.is_file():
        raise ArtifactError(f"{artifact.path}: {entry.name} is missing")
    if file_sha256(path) != entry.sha256:
        raise ArtifactError(
            f"{artifact.path}: {entry.name} does not match the sha256 in metadata.json"
        )
    return path


def save_artifact(
    directory: str | Path,
    model: Any,
    labels: list[str] | tuple[str, ...],
    preprocessing: PreprocessingConfig,
    *,
    name: str,
    kind: str,
    version: str | None = None,
    temperature: float = 1.0,
    reject_labels: list[str] | None = None,
    decision: dict[str, Any] | None = None,
    quality_note: str = "",
    tta: list[str] | tuple[str, ...] = ("identity",),
    extra: dict[str, Any] | None = None,
) -> Artifact:
    """Write a Keras model (or a serialised ONNX graph, ``bytes``) and everything serving
    needs into ``directory``.

    ``version`` defaults to the name plus a hash of the saved weights, so two different
    trainings never share a version.
    """
    if kind not in KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model_file = ONNX_MODEL_FILE if isinstance(model, bytes) else MODEL_FILE
    if isinstance(model, bytes):
        (root / model_file).write_bytes(model)
    else:
        model.save(root / model_file)
    (root / LABELS_FILE).write_text(json.dumps(list(labels), indent=1) + "\n")
    prep: dict[str, Any] = {**preprocessing.to_dict(), "whitening": None}
    if preprocessing.whitening is not None:
        w = preprocessing.whitening
        np.savez(root / WHITENING_FILE, mean=w.mean, matrix=w.matrix)
        prep["whitening"] = {"method": w.method, "epsilon": w.epsilon, "file": WHITENING_FILE}
    if version is None:
        digest = hashlib.sha256((root / model_file).read_bytes()).hexdigest()[:10]
        version = f"{name}-{digest}"
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "kind": kind,
        "model_file": model_file,
        "labels_file": LABELS_FILE,
        "preprocessing": prep,
        "calibration": {"temperature": float(temperature)},
        "output": {"reject_labels": list(reject_labels or [])},
        "decision": decision or {},
        "quality_note": quality_note,
        "tta": list(tta),
        **(extra or {}),
    }
    (root / METADATA_FILE).write_text(
        json.dumps(meta, indent=2, default=_json_default, allow_nan=False) + "\n"
    )
    return load_artifact(root)


def _object_or_null(value: Any) -> Any:
    """Refused in JSON's words, where pydantic would name this module's class."""
    if value is not None and not isinstance(value, dict):
        raise PydanticCustomError("object_or_null", "must be an object or null")
    return value


# Pixels a side that this labeler serves (the chain itself takes any positive size).
ServedSide = Annotated[int, Field(ge=8, le=4096)]


class WhiteningEntry(BaseModel):
    """``preprocessing.whitening``: how the arrays in ``file`` (beside metadata.json) were
    fitted. Unknown keys are refused, as in the chain: a misspelt ``file`` would otherwise
    load the default file silently."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    method: WhiteningMethod
    epsilon: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    # A file name beside metadata.json, never a path: an artifact reads nothing outside itself.
    file: FileName = WHITENING_FILE


class _Served(BaseModel):
    """What serving needs of the preprocessing section beyond the chain's own rules
    (``PreprocessingConfig.from_dict``), which it is validated after."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    image_size: tuple[ServedSide, ServedSide]
    # JSON null, or no key, is no whitening.
    whitening: Annotated[WhiteningEntry | None, BeforeValidator(_object_or_null)] = None


def _parse_preprocessing(root: Path, raw: Any) -> PreprocessingConfig:
    if not isinstance(raw, dict):
        raise ArtifactError(f"{root}: preprocessing must be an object")
    chain = {key: value for key, value in raw.items() if key != "whitening"}
    try:
        config = PreprocessingConfig.from_dict(chain)
    except ValueError as exc:
        raise ArtifactError(f"{root}: {exc}") from exc
    try:
        served = _Served.model_validate(
            {"image_size": config.image_size, "whitening": raw.get("whitening")}
        )
    except ValidationError as exc:
        raise ArtifactError(f"{root}: {describe_errors(exc, 'preprocessing')}") from None
    spec = served.whitening
    if spec is None:
        return config
    path = root / spec.file
    if not path.is_file():
        raise ArtifactError(f"{root}: whitening file {path.name} is missing")
    with np.load(path) as data:
        mean, matrix = data["mean"], data["matrix"]
    height, width = config.image_size
    features = height * width * config.channels
    if mean.shape != (features,) or matrix.shape[0] != mean.shape[0]:
        raise ArtifactError(
            f"{root}: whitening was fitted on {matrix.shape[0]} features but the image "
            f"chain produces {features}"
        )
    return replace(config, whitening=Whitening(spec.method, mean, matrix, spec.epsilon))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in metadata.json")
