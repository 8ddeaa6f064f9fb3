"""Loading backbone weights: the one place transfer learning touches the disk or network.

``weights`` is ``"imagenet"`` (Keras downloads and caches it where a network exists), a path
to a local ``.weights.h5`` file, or ``None`` (random, for tests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras

from training.models import backbone_constructor, backbone_kwargs, build_backbone


def weights_id(weights: str | None) -> str:
    """A stable identity for a weights source, for cache keys and artifact metadata."""
    if weights is None or weights == "none":
        return "random"
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"file:{path.name}:sha256:{digest[:16]}"


def load_backbone(
    name: str,
    weights: str | None,
    input_shape: tuple[int, int, int],
    *,
    include_top: bool = False,
) -> keras.Model:
    if weights is None or weights == "none":
        return build_backbone(name, input_shape, include_top=include_top)
    kwargs = backbone_kwargs(weights, include_top)
    if weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights file {weights} does not exist")
    # Keras refuses a non-default input shape with the top on; the classifier is 224x224.
    if not include_top or tuple(input_shape[:2]) != (224, 224):
        kwargs["input_shape"] = input_shape
    return backbone_constructor(name)(**kwargs)
