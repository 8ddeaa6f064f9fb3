"""The shape of an artifact's ``metadata.json``, declared once and checked by pydantic.

Only the sections serving reads are declared; every other key (metrics, provenance, training
options) is kept as it is. Strict: a number must be a JSON number (not ``"1.0"``, not
``true``), finite, and inside the range that makes it a calibration rather than a corrupt or
hostile file (a temperature of 1e-300 would turn every confidence into 1.0).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

FORMAT = "labeler-artifact"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
Kind = Literal["baseline_cnn", "transfer", "zero_shot", "untrained", "test"]
# Test-time augmentation views the classifier knows how to build
# (labeler.model.preprocessing.tta_views).
View = Literal["identity", "flip"]
TEMPERATURE_RANGE = (0.05, 20.0)

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Temperature = Annotated[
    float, Field(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1], allow_inf_nan=False)
]
Weight = Annotated[float, Field(ge=1e-6, le=1e6, allow_inf_nan=False)]


def _distinct_views(views: list[View]) -> list[View]:
    if len(set(views)) != len(views):
        raise ValueError("views must be distinct")
    return views


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class Calibration(_Section):
    temperature: Temperature = 1.0


# A file name beside metadata.json, never a path: an artifact reads nothing outside itself.
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class StoredFile(BaseModel):
    """An array file of the artifact and its sha256, checked before it is read."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    file: FileName
    sha256: Sha256


class Output(_Section):
    reject_labels: list[str] = []
    # One per label, multiplied into the calibrated probabilities (labeler.decide.adapt).
    class_weights: list[Weight] | None = None
    # labeler.model.features.HeadCorrection: the shelter head that ``labeler adapt`` refits.
    head_correction: StoredFile | None = None
    # Labels that stand, at this shelter, for a breed the model does not know (``labeler
    # adapt``): label -> what staff chose instead. Their photos always go to review.
    look_alikes: dict[str, str] = {}


class Features(_Section):
    """labeler.model.features.FeatureSpace: what a classified photo keeps for adapting."""

    file: FileName
    sha256: Sha256
    space: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class Decision(_Section):
    review_threshold: Fraction | None = None
    review_margin: Fraction | None = None
    # labeler.decide.grouping.combine: 1 (the geometric mean) for models trained before the
    # animal rule was fitted, which is what they were served with.
    animal_evidence: Fraction = 1.0
    # One evidence per animal size: 2, 3, and 4 or more photos. Where set, it wins.
    animal_evidence_by_photos: (
        Annotated[list[Fraction], Field(min_length=3, max_length=3)] | None
    ) = None


class Metadata(_Section):
    format: Literal["labeler-artifact"]
    format_version: int
    name: str
    version: str
    kind: Kind
    model_file: str = MODEL_FILE
    labels_file: str = LABELS_FILE
    # Declared and checked by labeler.model.preprocessing.PreprocessingConfig.from_dict: its
    # fields are the schema, so an option is declared once.
    preprocessing: dict[str, Any]
    # JSON null means "not given", as for a missing key.
    calibration: Calibration = Field(default_factory=Calibration)
    output: Output = Field(default_factory=Output)
    decision: Decision = Field(default_factory=Decision)
    features: Features | None = None
    quality_note: str = ""
    tta: Annotated[list[View], Field(min_length=1), AfterValidator(_distinct_views)] = ["identity"]


def parse_metadata(raw: dict[str, Any]) -> Metadata:
    """``Metadata`` from the parsed JSON; raises ``ValueError`` naming each bad field."""
    cleaned = {k: v for k, v in raw.items() if not (v is None and k in _NULLABLE_SECTIONS)}
    try:
        return Metadata.model_validate(cleaned)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError, section: str = "") -> str:
    """Every problem pydantic found, each named by its path in metadata.json
    (``output.class_weights.0: ...``); ``section`` is the path of what was validated."""
    problems = []
    for error in exc.errors():
        path = ".".join(str(part) for part in ((section,) if section else ()) + error["loc"])
        got = f" (got {error['input']!r})" if _short(error.get("input")) else ""
        problems.append(f"{path or 'metadata'}: {_MESSAGES.get(error['type'], error['msg'])}{got}")
    return "; ".join(problems)


_NULLABLE_SECTIONS = frozenset({"calibration", "output", "decision", "features"})
# Pydantic's wording where it reads badly in an artifact's error ("Extra inputs are not
# permitted" for a key this code does not know).
_MESSAGES = {"extra_forbidden": "unknown field"}


def _short(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40
