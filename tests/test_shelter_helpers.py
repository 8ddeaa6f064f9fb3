"""Helpers for the shelter-fit tests: a classifier whose answers the test scripts per photo.

The real tiny artifact runs (loading, preprocessing, batching, top-k); only its probabilities
are replaced, chosen by which sample photo an input row is closest to. So a test can say "these
photos show a beagle, this one a samoyed" and check what reaches the shelter's record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from labeler.demo.shelter import label_of
from labeler.model.classifier import Classifier

try:
    from labeler.photos.decoding import decode_image
except ImportError:  # before the images module was split
    from labeler.photos.decoding import decode_image  # type: ignore[no-redef]
from labeler.model.preprocessing import preprocess_batch


def sure(label: str, p: float = 0.9) -> dict[str, float]:
    return {label: p}


class ScriptedModel:
    """Replaces ``classifier.predict_probabilities``: photo (media id) -> probabilities."""

    def __init__(self, classifier: Classifier, files: Iterable[Path]) -> None:
        self.classifier = classifier
        self.labels = list(classifier.artifact.labels)
        config = classifier.artifact.preprocessing
        self.ids = sorted(set(files))
        self.refs = np.stack(
            [
                preprocess_batch(
                    [decode_image(f.read_bytes(), target_size=config.image_size)], config
                )[0]
                for f in self.ids
            ]
        ).reshape(len(self.ids), -1)
        # By default each photo is confidently its breed folder's label.
        self.script: dict[Path, Mapping[str, float]] = {
            f: sure(label_of(f.parent.name)) for f in self.ids
        }
        self.before_first_call: Callable[[], None] | None = None
        self.seen: list[Path] = []
        classifier.predict_probabilities = self._predict  # type: ignore[method-assign]
        # Scripted probabilities have no features to keep: predict takes them as they are.
        classifier.feature_space = None

    def photo_of(self, row: np.ndarray) -> Path:
        distances = np.abs(self.refs - row.reshape(1, -1)).mean(axis=1)
        return self.ids[int(np.argmin(distances))]

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self.before_first_call is not None:
            hook, self.before_first_call = self.before_first_call, None
            hook()
        out = np.zeros((batch.shape[0], len(self.labels)))
        for i, row in enumerate(batch):
            photo = self.photo_of(row)
            self.seen.append(photo)
            wanted = self.script[photo]
            rest = (1.0 - sum(wanted.values())) / max(len(self.labels) - len(wanted), 1)
            out[i, :] = rest
            for label, p in wanted.items():
                out[i, self.labels.index(label)] = p
        return out
