"""Training-time augmentation as Keras preprocessing layers.

The layers sit in the training graph only: ``training.train`` wraps the serving model as
``augmentation -> serving model`` for fitting and saves the serving model alone. Keras' random
layers are also the identity when called with ``training=False``, so even a model that kept
them would not augment at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras


@dataclass(frozen=True)
class AugmentConfig:
    rotation_degrees: float = 20.0
    zoom: float = 0.15
    contrast: float = 0.10
    horizontal_flip: bool = True

    @property
    def active(self) -> bool:
        return bool(self.rotation_degrees or self.zoom or self.contrast or self.horizontal_flip)


def build_augmentation(
    config: AugmentConfig = AugmentConfig(),
    value_range: tuple[float, float] = (0.0, 255.0),
    seed: int | None = None,
) -> keras.Sequential:
    """The study's augmentation: rotation +/-20 deg, zoom +/-15 %, contrast +/-10 %, h-flip."""
    layers: list[keras.layers.Layer] = []
    if config.rotation_degrees:
        # RandomRotation takes a fraction of a full turn.
        layers.append(
            keras.layers.RandomRotation(
                config.rotation_degrees / 360.0, fill_mode="reflect", seed=seed
            )
        )
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.contrast:
        layers.append(
            keras.layers.RandomContrast(config.contrast, value_range=value_range, seed=seed)
        )
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    return keras.Sequential(layers, name="augmentation")
