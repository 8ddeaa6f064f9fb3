"""The study's preprocessing chain as pure functions on numpy arrays.

Training and labelling both call :func:`preprocess_batch` with the configuration stored in
the model artifact, so the two can never disagree. Every function takes and returns arrays;
none does I/O.

Chain, in order: resize -> grayscale -> histogram equalization -> whitening.
Output is float32. Without whitening the values stay on the 0..255 scale (models rescale
inside themselves, e.g. VGG's caffe mode); with whitening they are the whitened features of
``x / 255``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from labeler.model.metadata import describe_errors

ResizeMode = Literal["stretch", "center_crop", "pad"]
WhiteningMethod = Literal["zca", "pca"]

# ITU-R BT.601 luma weights, the ones Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Whitening:
    """A whitening transform fitted on a training set: ``(x - mean) @ matrix``."""

    method: WhiteningMethod
    mean: np.ndarray  # (d,)
    matrix: np.ndarray  # (d, k); k == d for ZCA
    epsilon: float

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.matrix.shape[1])


def _height_width(value: Any) -> Any:
    """JSON has lists, not tuples. The wrong shape is refused in JSON's words and as a whole,
    where pydantic would say "tuple" or name only a missing item (``image_size.1: Field
    required``)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PydanticCustomError("height_width", "must be a list of 2 integers, [height, width]")
    return tuple(value)


Side = Annotated[int, Field(ge=1)]  # pixels; labeler.model.artifact bounds what it serves
ImageSize = Annotated[tuple[Side, Side], BeforeValidator(_height_width)]  # (height, width)


@dataclass(frozen=True)
class PreprocessingConfig:
    """The chain's settings, as stored in an artifact's ``metadata.json``.

    A serialised field's type, pydantic constraints included, is also its rule in the file
    (:meth:`from_dict`): a new option is declared here once, nothing else changes.
    """

    image_size: ImageSize = (224, 224)
    resize_mode: ResizeMode = "stretch"
    grayscale: bool = False
    equalize: bool = False
    whitening: Whitening | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The chain's settings as JSON values (every field but the fitted whitening arrays)."""
        return {name: _to_json(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(
        cls, raw: Mapping[str, Any], whitening: Whitening | None = None
    ) -> PreprocessingConfig:
        """Inverse of :meth:`to_dict`; a missing key takes the field's default.

        Unknown keys are refused rather than ignored: a chain this code does not know would
        otherwise be served silently as a different one. Raises ``ValueError`` naming each bad
        field (``preprocessing.image_size.0: ...``).
        """
        try:
            checked = _schema(cls).model_validate(raw)
        except ValidationError as exc:
            problems = describe_errors(exc, "preprocessing")
            if any(error["type"] == "extra_forbidden" for error in exc.errors()):
                problems += f"; known: {', '.join(cls.field_names())}"
            raise ValueError(problems) from None
        return cls(**dict(checked), whitening=whitening)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The serialised fields: all but ``whitening``, whose arrays are stored apart."""
        return tuple(f.name for f in fields(cls) if f.name != "whitening")

    def cache_fields(self) -> dict[str, Any]:
        """What the per-image part of the chain depends on (whitening is batch-level)."""
        return self.to_dict()

    def cache_key(self) -> str:
        """A short stable hash of :meth:`cache_fields`, for caches of preprocessed images."""
        text = json.dumps(self.cache_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def output_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed image: what the model's input must accept."""
        height, width = self.image_size
        if self.whitening is not None and self.whitening.method == "pca":
            return (self.whitening.output_dim,)
        return (height, width, self.channels)


def _to_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# Strict as the rest of metadata.json (labeler.model.metadata): 1 is not a bool, True and "64"
# are not numbers, and a number is finite.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _schema(cls: type[PreprocessingConfig]) -> type[BaseModel]:
    """The pydantic model of ``cls``'s serialised fields, built from their declarations (under
    a millisecond, once per artifact load: not worth a cache)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    declared: dict[str, Any] = {
        spec.name: (hints[spec.name], _default(spec))
        for spec in fields(cls)
        if spec.name in cls.field_names()
    }
    return create_model(f"{cls.__name__}Fields", __config__=_STRICT, **declared)


def _default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return Field(default_factory=spec.default_factory)
    return ...


def resize(image: np.ndarray, size: tuple[int, int], mode: ResizeMode = "stretch") -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``size`` (height, width).

    ``stretch`` ignores the aspect ratio (as the Stanford Dogs crops were made), ``center_crop``
    keeps it and cuts the long side, ``pad`` keeps it and pads with black.
    """
    _check_image(image)
    height, width = size
    pil = Image.fromarray(image)
    if mode == "center_crop":
        src_w, src_h = pil.size
        scale = max(width / src_w, height / src_h)
        new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        pil = pil.crop((left, top, left + width, top + height))
    elif mode == "pad":
        src_w, src_h = pil.size
        scale = min(width / src_w, height / src_h)
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        canvas = Image.new(pil.mode, (width, height))
        canvas.paste(
            pil.resize((new_w, new_h), Image.Resampling.BILINEAR),
            ((width - new_w) // 2, (height - new_h) // 2),
        )
        pil = canvas
    elif mode == "stretch":
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return np.asarray(pil, dtype=np.uint8)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxWx1 uint8 luma."""
    _check_image(image)
    luma = image.astype(np.float32) @ _LUMA
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., np.newaxis]


def equalize_histogram(image: np.ndarray) -> np.ndarray:
    """Histogram equalization of each channel of a uint8 image.

    Maps every grey level through the channel's cumulative histogram, so that the output's
    cumulative histogram is as close to a straight line as the discrete levels allow.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an HxWxC uint8 image, got {image.dtype} {image.shape}")
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        cdf = np.cumsum(hist)
        nonzero = cdf[hist > 0]
        cdf_min = nonzero[0] if nonzero.size else 0
        total = channel.size
        if total == cdf_min:  # a flat channel has nothing to spread
            out[..., c] = channel
            continue
        lut = np.rint((cdf - cdf_min) / (total - cdf_min) * 255.0)
        out[..., c] = np.clip(lut, 0, 255).astype(np.uint8)[channel]
    return out


def fit_whitening(
    features: np.ndarray,
    method: WhiteningMethod = "zca",
    epsilon: float = 1e-2,
    n_components: int | None = None,
) -> Whitening:
    """Fit ZCA or PCA whitening on an (n, d) matrix of flattened training images.

    ``epsilon`` regularises the small eigenvalues; with ``epsilon=0`` the transformed fitting
    set has exactly the identity covariance (on the components kept).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("whitening needs an (n, d) matrix with at least two rows")
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
    if method == "pca":
        k = n_components or int(np.sum(eigvals > 1e-10))
        matrix = eigvecs[:, :k] / np.sqrt(eigvals[:k] + epsilon)
    elif method == "zca":
        matrix = (eigvecs / np.sqrt(eigvals + epsilon)) @ eigvecs.T
    else:
        raise ValueError(f"unknown whitening method {method!r}")
    return Whitening(method, mean.astype(np.float32), matrix.astype(np.float32), float(epsilon))


def apply_whitening(flat: np.ndarray, whitening: Whitening) -> np.ndarray:
    """Whiten an (n, d) batch of flattened images."""
    if flat.shape[-1] != whitening.input_dim:
        raise ValueError(
            f"whitening was fitted on {whitening.input_dim} features, got {flat.shape[-1]}"
        )
    return ((flat - whitening.mean) @ whitening.matrix).astype(np.float32)


def flatten_for_whitening(images: np.ndarray) -> np.ndarray:
    """(n, h, w, c) uint8/float images -> (n, h*w*c) float32 on the 0..1 scale."""
    return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0


def preprocess_image(image: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Resize, grayscale, equalize one HxWx3 uint8 image (whitening is batch-level)."""
    out = resize(image, config.image_size, config.resize_mode)
    if config.grayscale:
        out = to_grayscale(out)
    if config.equalize:
        out = equalize_histogram(out)
    return out


def preprocess_batch(images: list[np.ndarray], config: PreprocessingConfig) -> np.ndarray:
    """The whole chain on a list of HxWx3 uint8 images; returns a float32 batch."""
    if not images:
        return np.zeros((0, *config.output_shape()), dtype=np.float32)
    stacked = np.stack([preprocess_image(img, config) for img in images])
    return finish_batch(stacked, config)


def finish_batch(stacked: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Apply the batch-level part of the chain (whitening) to already resized images."""
    if config.whitening is None:
        return stacked.astype(np.float32)
    white = apply_whitening(flatten_for_whitening(stacked), config.whitening)
    return white.reshape((stacked.shape[0], *config.output_shape()))


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image has no pixels")


def tta_views(batch: np.ndarray, views: tuple[str, ...]) -> list[np.ndarray]:
    """Test-time augmentation: each named view of a preprocessed (n, h, w, c) batch.

    ``flip`` mirrors left-right; a breed does not change in a mirror. Views only apply to
    image-shaped batches (a PCA-whitened vector has no left and right).
    """
    out = []
    for view in views:
        if view == "identity":
            out.append(batch)
        elif view == "flip":
            if batch.ndim != 4:
                raise ValueError("the flip view needs an (n, h, w, c) image batch")
            out.append(np.ascontiguousarray(batch[:, :, ::-1]))
        else:
            raise ValueError(f"unknown test-time view {view!r}")
    return out
