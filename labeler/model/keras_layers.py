"""Keras layers that saved models carry, so a model's own input preprocessing travels with it.

Importing this module registers the layers; the artifact loader imports it before loading.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# ImageNet channel statistics used by keras.applications' "caffe" and "torch" modes.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="labeler")
class ImagenetPreprocess(keras.layers.Layer):
    """The input preprocessing of a keras.applications backbone, as a saved layer.

    Takes RGB images on the 0..255 scale. Modes follow ``keras.applications.imagenet_utils``:
    ``caffe`` (VGG16/VGG19/ResNet50: RGB->BGR, minus ImageNet mean), ``tf`` (MobileNet,
    MobileNetV2: scale to -1..1), ``torch`` (scale to 0..1, standardise), ``none`` (EfficientNet
    and others that preprocess inside the backbone).
    """

    def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(f"unknown ImageNet preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = keras.ops.cast(inputs, "float32")
        if self.mode == "caffe":
            x = keras.ops.flip(x, axis=-1)
            return x - keras.ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR, dtype="float32"))
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(np.array(_TORCH_MEAN, dtype="float32"))
            std = keras.ops.convert_to_tensor(np.array(_TORCH_STD, dtype="float32"))
            return (x / 255.0 - mean) / std
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
