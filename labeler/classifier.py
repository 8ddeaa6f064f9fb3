"""The classifier stage: a loaded artifact that turns preprocessed batches into ranked breeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.artifact import Artifact, ArtifactError, load_artifact
from labeler.preprocessing import preprocess_batch


@dataclass(frozen=True)
class Prediction:
    """The top candidates for one photo, best first: ((label, probability), ...)."""

    candidates: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return self.candidates[0][0]

    @property
    def confidence(self) -> float:
        return self.candidates[0][1]

    @property
    def margin(self) -> float:
        """Gap between the best and second-best probability (1.0 with one class)."""
        second = self.candidates[1][1] if len(self.candidates) > 1 else 0.0
        return self.candidates[0][1] - second


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(log(p) / T), computed stably."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int = 3) -> list[Prediction]:
    """Rank each row of an (n, classes) probability matrix into its k best labels."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        Prediction(tuple((labels[int(j)], float(row[j])) for j in idx))
        for row, idx in zip(probabilities, order, strict=True)
    ]


class Classifier:
    """A Keras model loaded from an artifact, checked against the artifact's metadata."""

    def __init__(self, artifact: Artifact, model: Any) -> None:
        self.artifact = artifact
        self.model = model
        expected_in = artifact.preprocessing.output_shape()
        got_in = tuple(model.input_shape[1:])
        if any(g is not None and g != e for g, e in zip(got_in, expected_in, strict=False)) or (
            len(got_in) != len(expected_in)
        ):
            raise ArtifactError(
                f"{artifact.path}: the model takes inputs of shape {got_in} but the artifact's "
                f"preprocessing produces {expected_in}"
            )
        got_out = model.output_shape[-1]
        if got_out != len(artifact.labels):
            raise ArtifactError(
                f"{artifact.path}: the model has {got_out} outputs but the labels file lists "
                f"{len(artifact.labels)} classes"
            )

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        artifact = load_artifact(path)
        import keras  # imported here: loading TensorFlow is slow and not needed by every command

        import labeler.model_layers  # noqa: F401  registers the layers saved models refer to

        try:
            model = keras.models.load_model(artifact.model_path, compile=False)
        except Exception as exc:  # Keras raises many kinds for a corrupt or foreign file
            raise ArtifactError(
                f"{artifact.model_path} cannot be loaded as a Keras model: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        return cls(artifact, model)

    @property
    def version(self) -> str:
        return self.artifact.version

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] == 0:
            return np.zeros((0, len(self.artifact.labels)), dtype=np.float32)
        # predict_on_batch runs a compiled graph: faster and far leaner than an eager call.
        raw = np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)
        if raw.ndim != 2 or not np.all(np.isfinite(raw)):
            raise ValueError("the model returned non-finite or malformed probabilities")
        return calibrate(raw, self.artifact.temperature)

    def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]:
        """Top-k predictions for an already preprocessed batch."""
        return top_k(self.predict_probabilities(batch), self.artifact.labels, k)

    def classify_images(self, images: list[np.ndarray], k: int = 3) -> list[Prediction]:
        """Preprocess HxWx3 uint8 images with the artifact's chain and classify them."""
        return self.predict(preprocess_batch(images, self.artifact.preprocessing), k)
