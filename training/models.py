"""Network builders. Pure: no file or network I/O happens here (weights are loaded by
``training.backbones``), so tests build every architecture on tiny inputs offline.

Every serving model takes the labeler's preprocessed batch (0..255 float, or whitened
features) and returns softmax probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import keras
import numpy as np

from labeler.model.keras_layers import ImagenetPreprocess

Normalization = Literal["batchnorm", "dropout", "none"]
Head = Literal["flatten", "gap"]


def build_baseline_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    filters: Sequence[int] = (32, 64, 64, 64),
    activation: str = "relu",
    normalization: Normalization = "batchnorm",
    head: Head = "flatten",
    dropout: float = 0.3,
    rescale: bool = True,
    bn_momentum: float = 0.9,
    name: str = "baseline_cnn",
) -> keras.Model:
    """The study's CNN: conv blocks (conv, BN or dropout, max-pool), flatten, softmax.

    ``rescale`` maps 0..255 inputs to 0..1 inside the model; turn it off for whitened input,
    which is already centred. PCA-whitened input is a vector and gets a dense network instead.
    """
    inputs = keras.Input(input_shape, name="image")
    if len(input_shape) == 1:
        x = keras.layers.Dense(256, activation=activation)(inputs)
        x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
        return keras.Model(inputs, outputs, name=name)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs) if rescale else inputs
    for i, width in enumerate(filters):
        # Conv bias is redundant before batch norm.
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=normalization != "batchnorm", name=f"conv{i + 1}"
        )(x)
        if normalization == "batchnorm":
            # Keras' default momentum (0.99) needs thousands of steps before the inference
            # statistics are usable; short CPU runs and sweeps have a few hundred.
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"bn{i + 1}")(x)
        x = keras.layers.Activation(activation)(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        if normalization == "dropout":
            x = keras.layers.Dropout(dropout)(x)
    pool = keras.layers.GlobalAveragePooling2D() if head == "gap" else keras.layers.Flatten()
    x = pool(x)
    if dropout and normalization != "dropout":
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


# name -> (keras.applications constructor name, ImageNet preprocessing mode)
BACKBONES: dict[str, tuple[str, str]] = {
    "vgg16": ("VGG16", "caffe"),
    "vgg19": ("VGG19", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
    "mobilenet": ("MobileNet", "tf"),
    "mobilenetv2": ("MobileNetV2", "tf"),
    # EfficientNetV2 rescales inside itself (include_preprocessing=True).
    "efficientnetv2b0": ("EfficientNetV2B0", "none"),
}


def backbone_constructor(name: str) -> Any:
    try:
        return getattr(keras.applications, BACKBONES[name][0])
    except KeyError as exc:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}") from exc


def preprocess_mode(name: str) -> str:
    return BACKBONES[name][1]


def build_backbone(
    name: str, input_shape: tuple[int, int, int], *, include_top: bool = False
) -> keras.Model:
    """An uninitialised (random-weight) backbone; ``training.backbones`` loads the weights.

    Without the top it ends in global average pooling, so it maps images to feature vectors.
    """
    kwargs = backbone_kwargs(None, include_top)
    kwargs["input_shape"] = input_shape
    return backbone_constructor(name)(**kwargs)


def backbone_kwargs(weights: str | None, include_top: bool) -> dict[str, Any]:
    """Constructor arguments shared by random and pretrained backbones."""
    kwargs: dict[str, Any] = {"weights": weights, "include_top": include_top}
    if include_top:
        kwargs["classifier_activation"] = "softmax"
    else:
        kwargs["pooling"] = "avg"  # images -> feature vectors
    return kwargs


def build_head(
    feature_dim: int,
    num_classes: int,
    *,
    hidden: int = 0,
    dropout: float = 0.2,
    l2: float = 0.0,
    name: str = "head",
) -> keras.Model:
    """The trained classifier on top of frozen backbone features."""
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.Dropout(dropout)(inputs) if dropout else inputs
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x) if dropout else x
    reg = keras.regularizers.L2(l2) if l2 else None
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=reg, name="probs"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _to_rgb(x: Any, channels: int) -> Any:
    # ImageNet backbones need three channels; a grayscale chain repeats its one.
    if channels == 1:
        return keras.layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    return x


def build_feature_extractor(
    backbone: keras.Model, mode: str, input_shape: tuple[int, int, int]
) -> keras.Model:
    """Preprocessed image (0..255) -> pooled backbone features, ImageNet preprocessing inside."""
    inputs = keras.Input(input_shape, name="image")
    x = _to_rgb(inputs, input_shape[-1])
    x = ImagenetPreprocess(mode, name="imagenet_preprocess")(x)
    features = backbone(x, training=False)
    return keras.Model(inputs, features, name="feature_extractor")


def build_transfer_model(
    backbone: keras.Model, head: keras.Model, mode: str, input_shape: tuple[int, int, int]
) -> keras.Model:
    """The serving model: preprocessing + backbone + head, one graph.

    ``training=False`` on the backbone keeps batch-norm statistics frozen even while its top
    blocks are fine-tuned, as the study prescribes.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _to_rgb(inputs, input_shape[-1])
    x = ImagenetPreprocess(mode, name="imagenet_preprocess")(x)
    features = backbone(x, training=False)
    outputs = head(features)
    return keras.Model(inputs, outputs, name="transfer")


def set_fine_tuning(backbone: keras.Model, top_fraction: float) -> int:
    """Unfreeze the top ``top_fraction`` of the backbone's layers, batch norm excepted.

    Returns the number of trainable layers.
    """
    layers = backbone.layers
    start = round(len(layers) * (1.0 - top_fraction))
    backbone.trainable = True
    count = 0
    for i, layer in enumerate(layers):
        trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        count += int(trainable and bool(layer.weights))
    return count


def build_zero_shot_model(
    classifier: keras.Model,
    mode: str,
    input_shape: tuple[int, int, int],
    class_indices: Sequence[int],
) -> keras.Model:
    """An ImageNet classifier restricted to ``class_indices`` plus one "rest" output.

    Output ``j < len(class_indices)`` is the ImageNet probability of class ``class_indices[j]``;
    the last output is the summed probability of every other ImageNet class. The regrouping is
    a fixed 0/1 matrix in a plain Dense layer, so the saved model needs no custom layer.
    """
    n_in = int(classifier.output_shape[-1])
    n_out = len(class_indices) + 1
    matrix = np.zeros((n_in, n_out), dtype=np.float32)
    matrix[:, -1] = 1.0
    for j, idx in enumerate(class_indices):
        matrix[idx, -1] = 0.0
        matrix[idx, j] = 1.0
    inputs = keras.Input(input_shape, name="image")
    x = _to_rgb(inputs, input_shape[-1])
    x = ImagenetPreprocess(mode, name="imagenet_preprocess")(x)
    probs = classifier(x, training=False)
    regroup = keras.layers.Dense(n_out, use_bias=False, trainable=False, name="regroup")
    outputs = regroup(probs)
    model = keras.Model(inputs, outputs, name="zero_shot")
    regroup.set_weights([matrix])
    return model
