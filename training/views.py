"""Deterministic augmented views of already resized uint8 images, for the feature cache.

A frozen backbone's features are cached once per (view, photo), so a head can be trained on
several views of every training photo without running the backbone each epoch. The views
imitate what serving meets on full-frame shelter photos: mirrored dogs (``flip``), dogs that
fill less of the frame than the Stanford Dogs crops do (``zoomout``), and tighter framing
(``zoomin``). Each view is a pure function of the image and a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

VIEWS = ("identity", "flip", "zoomout", "zoomin")


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1].copy()


def zoom_out(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink the photo to 55-85 % of its side and surround it with its own mirror image.

    A Stanford Dogs crop is the dog's bounding box; in a full frame the dog covers less of
    the picture. Reflection keeps the border's colours and texture instead of a black frame.
    """
    h, w = image.shape[:2]
    scale = float(rng.uniform(0.55, 0.85))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    top = int(rng.integers(0, h - nh + 1))
    left = int(rng.integers(0, w - nw + 1))
    padded = np.pad(small, ((top, h - nh - top), (left, w - nw - left), (0, 0)), mode="symmetric")
    out = padded[:h, :w]
    return out[:, ::-1].copy() if rng.random() < 0.5 else out.copy()


def zoom_in(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 70-90 % of each side, resized back, randomly mirrored."""
    h, w = image.shape[:2]
    scale = float(rng.uniform(0.7, 0.9))
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[top : top + ch, left : left + cw])
    out = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))
    return out[:, ::-1].copy() if rng.random() < 0.5 else out.copy()


def identity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "identity": identity,
    "flip": flip,
    "zoomout": zoom_out,
    "zoomin": zoom_in,
}


def apply_view(images: np.ndarray, view: str, seed: int = 0) -> np.ndarray:
    """The ``view`` of every image in an (n, h, w, c) uint8 batch; same seed, same pixels."""
    try:
        fn = _FUNCTIONS[view]
    except KeyError as exc:
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}") from exc
    if view == "identity":
        return images
    rng = np.random.default_rng([seed, VIEWS.index(view)])
    return np.stack([fn(img, rng) for img in images]) if len(images) else images.copy()
