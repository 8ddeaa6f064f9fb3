"""What a photo leaves behind for adapting, and the shelter head that adapting adds.

A model with a *feature space* (``feature_space.npz`` beside ``metadata.json``) keeps, for
every photo it classifies, a compact record: the network's raw log-probabilities (121
numbers) and its pooled feature vector projected onto the space's ``d`` principal directions
(fitted on training photos). float16, under a kilobyte. ``labeler adapt`` refits a
*correction* of the head on the records of photos staff decided, without reading a photo
again, and writes it as ``head_correction.npz``: a dense layer on the projected features
whose logits are added to the model's log-probabilities::

    p = softmax(log(calibrated p_model * class_weights) + projected @ weights + bias)

The feature space also carries *anchors*: records of training photos, so that a refit on one
shelter's decisions is fitted together with the breeds it has not decided yet.

A record names its space (a hash of the projection and the network), so a record from another
network is never mixed in. Numpy only: serving has no training dependencies.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_SPACE_FILE = "feature_space.npz"
HEAD_CORRECTION_FILE = "head_correction.npz"
# The graph output holding the pooled feature vector (never served as probabilities).
FEATURES_OUTPUT = "features"
_MAGIC = b"LF1"
_HEADER = struct.Struct(">3s8sHH")
_SPACE_BYTES = 8


class FeatureError(ValueError):
    """A feature-space or head-correction file that is missing, corrupt or inconsistent."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class FeatureSpace:
    """The projection of a network's features, and the training photos' records."""

    space: str  # 16 hex digits: names the network and the projection
    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (d, D), rows orthonormal, scaled to unit variance
    anchor_logp: np.ndarray  # (m, K) raw log-probabilities of training photos
    anchor_projected: np.ndarray  # (m, d)
    anchor_labels: np.ndarray  # (m,) label index

    @property
    def dims(self) -> int:
        return int(self.projection.shape[0])

    @property
    def source_dims(self) -> int:
        return int(self.projection.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) @ self.projection.T

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            space=np.array(self.space),
            mean=self.mean.astype(np.float32),
            projection=self.projection.astype(np.float32),
            anchor_logp=self.anchor_logp.astype(np.float16),
            anchor_projected=self.anchor_projected.astype(np.float16),
            anchor_labels=self.anchor_labels.astype(np.int16),
        )

    @classmethod
    def load(cls, path: Path, classes: int) -> FeatureSpace:
        try:
            with np.load(path, allow_pickle=False) as data:
                space = cls(
                    space=str(data["space"]),
                    mean=np.asarray(data["mean"], np.float64),
                    projection=np.asarray(data["projection"], np.float64),
                    anchor_logp=np.asarray(data["anchor_logp"], np.float64),
                    anchor_projected=np.asarray(data["anchor_projected"], np.float64),
                    anchor_labels=np.asarray(data["anchor_labels"], np.int64),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureError(f"{path.name} is not a readable feature space: {exc}") from exc
        if space.projection.ndim != 2 or space.anchor_labels.ndim != 1:
            raise FeatureError(f"{path.name}: its arrays do not fit together or the labels")
        d, big_d = space.projection.shape
        m = len(space.anchor_labels)
        shapes_ok = (
            space.mean.shape == (big_d,)
            and space.anchor_logp.shape == (m, classes)
            and space.anchor_projected.shape == (m, d)
            and len(space.space) == 2 * _SPACE_BYTES
        )
        if not shapes_ok:
            raise FeatureError(f"{path.name}: its arrays do not fit together or the labels")
        if m and (space.anchor_labels.min() < 0 or space.anchor_labels.max() >= classes):
            raise FeatureError(f"{path.name}: an anchor names a label the model does not have")
        finite = all(
            np.all(np.isfinite(a))
            for a in (space.mean, space.projection, space.anchor_logp, space.anchor_projected)
        )
        if not finite:
            raise FeatureError(f"{path.name} holds non-finite numbers")
        return space


def space_id(network: bytes, projection: np.ndarray, mean: np.ndarray) -> str:
    digest = hashlib.sha256(network)
    digest.update(np.ascontiguousarray(projection, np.float32).tobytes())
    digest.update(np.ascontiguousarray(mean, np.float32).tobytes())
    return digest.hexdigest()[: 2 * _SPACE_BYTES]


@dataclass(frozen=True)
class PhotoRecord:
    """A photo's stored record: the network's raw log-probabilities and projected features."""

    space: str
    logp: np.ndarray  # (K,)
    projected: np.ndarray  # (d,)


def encode_record(space: str, logp: np.ndarray, projected: np.ndarray) -> bytes:
    header = _HEADER.pack(_MAGIC, bytes.fromhex(space), len(logp), len(projected))
    body = np.concatenate([logp, projected]).astype(">f2").tobytes()
    return header + body


def decode_record(blob: bytes | None) -> PhotoRecord | None:
    """A stored record back; None for a missing, foreign or damaged one (never raises)."""
    if not blob or len(blob) < _HEADER.size:
        return None
    magic, space, classes, dims = _HEADER.unpack_from(blob)
    body = blob[_HEADER.size :]
    if magic != _MAGIC or len(body) != 2 * (classes + dims):
        return None
    values = np.frombuffer(body, dtype=">f2").astype(np.float64)
    if not np.all(np.isfinite(values)):
        return None
    return PhotoRecord(space.hex(), values[:classes], values[classes:])


@dataclass(frozen=True)
class HeadCorrection:
    """Logits added to the model's: ``projected @ weights + bias``, on the photo's features
    projected onto the feature space (what its record stores, so adapting can judge a
    correction on stored records exactly as serving applies it)."""

    weights: np.ndarray  # (d, K)
    bias: np.ndarray  # (K,)

    def logits(self, projected: np.ndarray) -> np.ndarray:
        return np.asarray(projected, np.float64) @ self.weights + self.bias

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path, weights=self.weights.astype(np.float32), bias=self.bias.astype(np.float32)
        )

    @classmethod
    def load(cls, path: Path, dims: int, classes: int) -> HeadCorrection:
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = np.asarray(data["weights"], np.float64)
                bias = np.asarray(data["bias"], np.float64)
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureError(f"{path.name} is not a readable head correction: {exc}") from exc
        if weights.shape != (dims, classes) or bias.shape != (classes,):
            raise FeatureError(
                f"{path.name}: a correction of shape {weights.shape} does not fit {dims} "
                f"projected features and {classes} labels"
            )
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
            raise FeatureError(f"{path.name} holds non-finite numbers")
        return cls(weights, bias)


def corrected(
    probabilities: np.ndarray, correction: HeadCorrection | None, projected: np.ndarray | None
) -> np.ndarray:
    """Probabilities with the shelter head's logits added (unchanged without a correction)."""
    if correction is None:
        return probabilities
    if projected is None:
        raise FeatureError("the model is adapted with a head correction but gave no features")
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) + correction.logits(projected)
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)
