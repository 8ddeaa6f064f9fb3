"""The classifier stage: a loaded artifact that turns preprocessed batches into ranked breeds."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from labeler.core.domain import Prediction
from labeler.model.artifact import (
    Artifact,
    ArtifactError,
    load_artifact,
    load_feature_space,
    load_head_correction,
)
from labeler.model.features import corrected, encode_record
from labeler.model.preprocessing import preprocess_batch, tta_views
from labeler.model.runtime import (
    KERAS,
    KerasRuntime,
    Runtime,
    RuntimeChoice,
    load_keras_model,
    open_runtime,
)


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(log(p) / T), computed stably."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def apply_class_weights(probabilities: np.ndarray, weights: tuple[float, ...] | None) -> np.ndarray:
    """Bayes' rule with a new prior: each class's probability times its weight, renormalised."""
    if weights is None:
        return probabilities
    weighted = probabilities * np.asarray(weights, dtype=np.float64)
    return weighted / weighted.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int = 3) -> list[Prediction]:
    """Rank each row of an (n, classes) probability matrix into its k best labels."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        Prediction(tuple((labels[int(j)], float(row[j])) for j in idx))
        for row, idx in zip(probabilities, order, strict=True)
    ]


class Classifier:
    """An artifact's network behind a runtime, checked against the artifact's metadata.

    ``model`` is the Keras model. When another runtime serves (ONNX Runtime), the Keras model
    is not kept in memory and is loaded only if someone asks for it.
    """

    def __init__(
        self, artifact: Artifact, model: Any = None, runtime: Runtime | None = None
    ) -> None:
        if runtime is None:
            if model is None:
                raise ValueError("a Classifier needs a Keras model or a runtime")
            runtime = KerasRuntime(model)
        self.artifact = artifact
        self.runtime = runtime
        self._model = model
        self.feature_space = space = load_feature_space(artifact)
        self.head_correction = None if space is None else load_head_correction(artifact, space)
        expected_in = artifact.preprocessing.output_shape()
        got_in = runtime.input_shape
        if any(g is not None and g != e for g, e in zip(got_in, expected_in, strict=False)) or (
            len(got_in) != len(expected_in)
        ):
            raise ArtifactError(
                f"{artifact.path}: the model takes inputs of shape {got_in} but the artifact's "
                f"preprocessing produces {expected_in}"
            )
        got_out = runtime.output_size
        if got_out != len(artifact.labels):
            raise ArtifactError(
                f"{artifact.path}: the model has {got_out} outputs but the labels file lists "
                f"{len(artifact.labels)} classes"
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        runtime: RuntimeChoice = "auto",
        cache_dir: Path | None = None,
        threads: int = 0,
    ) -> Classifier:
        """Load an artifact and the fastest runtime that reproduces its Keras outputs.

        ``runtime``: ``auto`` (ONNX Runtime when installed and matching, else Keras), ``keras``
        or ``onnx`` (like auto, but a fallback is logged as a warning). ``threads``: intra-op
        threads of the runtime, 0 for its default (all cores).
        """
        artifact = load_artifact(path)
        loaded = open_runtime(
            artifact,
            partial(load_keras_model, artifact, threads),
            choice=runtime,
            cache_dir=cache_dir,
            threads=threads,
        )
        keras_model = loaded.keras_model if loaded.runtime.name == KERAS else None
        return cls(artifact, keras_model, runtime=loaded.runtime)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_keras_model(self.artifact)
        return self._model

    @property
    def runtime_name(self) -> str:
        """Which runtime runs the network: ``keras`` or ``onnxruntime``."""
        return self.runtime.name

    @property
    def version(self) -> str:
        return self.artifact.version

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self._scored(batch)[0]

    def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]:
        """Top-k predictions for an already preprocessed batch, each with the record the
        photo keeps for adapting when the model has a feature space."""
        if self.feature_space is None:
            return top_k(self.predict_probabilities(batch), self.artifact.labels, k)
        probabilities, records = self._scored(batch)
        ranked = top_k(probabilities, self.artifact.labels, k)
        if records is None:
            return ranked
        return [replace(p, record=r) for p, r in zip(ranked, records, strict=True)]

    def _scored(self, batch: np.ndarray) -> tuple[np.ndarray, list[bytes] | None]:
        labels = len(self.artifact.labels)
        if batch.shape[0] == 0:
            return np.zeros((0, labels), dtype=np.float32), []
        # Test-time augmentation (artifact.tta): every view in one call, outputs averaged.
        views = self.artifact.tta
        stacked = batch if views == ("identity",) else np.concatenate(tta_views(batch, views))
        raw, features = self.runtime.predict_with_features(stacked)
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[0] != stacked.shape[0] or not np.all(np.isfinite(raw)):
            raise ValueError("the model returned non-finite or malformed probabilities")
        if features is not None:
            features = np.asarray(features, dtype=np.float64)
            if features.shape[0] != stacked.shape[0] or not np.all(np.isfinite(features)):
                raise ValueError("the model returned non-finite or malformed features")
        if len(views) > 1:
            raw = raw.reshape(len(views), batch.shape[0], -1).mean(axis=0)
            if features is not None:
                features = features.reshape(len(views), batch.shape[0], -1).mean(axis=0)
        space = self.feature_space
        projected = None if space is None or features is None else space.project(features)
        weighted = apply_class_weights(
            calibrate(raw, self.artifact.temperature), self.artifact.class_weights
        )
        probabilities = corrected(weighted, self.head_correction, projected)
        if space is None or projected is None:
            return probabilities, None
        logp = np.log(np.clip(raw, 1e-12, 1.0))
        return probabilities, [
            encode_record(space.space, lp, g) for lp, g in zip(logp, projected, strict=True)
        ]

    def classify_images(self, images: list[np.ndarray], k: int = 3) -> list[Prediction]:
        """Preprocess HxWx3 uint8 images with the artifact's chain and classify them."""
        return self.predict(preprocess_batch(images, self.artifact.preprocessing), k)
