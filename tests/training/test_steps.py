"""The preprocessing chain and augmentation, each step's defining property on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.model.preprocessing import (
    PreprocessingConfig,
    equalize_histogram,
    finish_batch,
    fit_whitening,
    flatten_for_whitening,
    preprocess_batch,
    resize,
    to_grayscale,
)
from training.augment import AugmentConfig, build_augmentation


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_resize_shape_dtype_and_modes(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for mode in ("stretch", "center_crop", "pad"):
        out = resize(img, (16, 20), mode)  # type: ignore[arg-type]
        assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    padded = resize(img, (20, 20), "pad")
    assert padded[0].max() == 0  # the short side is padded with black
    flat = np.full((30, 50, 3), 77, np.uint8)
    assert np.all(resize(flat, (9, 9)) == 77)  # resizing keeps the value range


def test_grayscale_is_one_luma_channel() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (255, 0, 0)
    img[0, 1] = (0, 255, 0)
    img[1, 0] = (255, 255, 255)
    out = to_grayscale(img)
    assert out.shape == (2, 2, 1) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[76, 150], [255, 0]]


def test_equalized_histogram_is_flat(rng: np.random.Generator) -> None:
    # A dark, low-contrast image: levels 40..79 only.
    img = rng.integers(40, 80, (64, 64, 1), dtype=np.uint8)
    out = equalize_histogram(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    # The defining property: the cumulative histogram is (close to) a straight line.
    cdf = np.cumsum(np.bincount(out.ravel(), minlength=256)) / out.size
    assert np.max(np.abs(cdf - np.linspace(0, 1, 256))) < 0.03
    # Equalization is monotone: it never swaps the order of two grey levels.
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_zca_and_pca_whitening_give_identity_covariance(rng: np.random.Generator) -> None:
    mix = rng.normal(size=(6, 6))
    images = (rng.normal(size=(400, 6)) @ mix * 20 + 120).clip(0, 255).reshape(400, 1, 2, 3)
    flat = flatten_for_whitening(images)
    for method in ("zca", "pca"):
        w = fit_whitening(flat, method, epsilon=0.0)  # type: ignore[arg-type]
        cfg = PreprocessingConfig(image_size=(1, 2), whitening=w)
        out = finish_batch(images, cfg)
        assert out.dtype == np.float32
        feats = out.reshape(len(out), -1)
        assert np.allclose(feats.mean(axis=0), 0, atol=1e-4)
        assert np.allclose(np.cov(feats, rowvar=False), np.eye(feats.shape[1]), atol=1e-3)
    assert cfg.output_shape() == (6,)  # PCA output is a vector
    zca = PreprocessingConfig(image_size=(1, 2), whitening=fit_whitening(flat, "zca", 0.0))
    assert zca.output_shape() == (1, 2, 3)  # ZCA stays in image space


def test_preprocess_batch_is_float32_on_0_255(rng: np.random.Generator) -> None:
    imgs = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
    out = preprocess_batch(imgs, PreprocessingConfig(image_size=(8, 8), equalize=True))
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


def test_augmentation_is_off_at_inference_and_on_in_training(rng: np.random.Generator) -> None:
    aug = build_augmentation(AugmentConfig(), seed=1)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomRotation", "RandomZoom", "RandomContrast", "RandomFlip"]
    batch = rng.uniform(0, 255, (4, 24, 24, 3)).astype(np.float32)
    served = np.asarray(aug(batch, training=False))
    assert np.array_equal(served, batch)
    trained = np.asarray(aug(batch, training=True))
    assert trained.shape == batch.shape and trained.dtype == np.float32
    assert not np.allclose(trained, batch)
    assert trained.min() >= -1e-3 and trained.max() <= 255 + 1e-3  # contrast clips to range


def test_each_augmentation_can_be_switched_off() -> None:
    cfg = AugmentConfig(rotation_degrees=0, zoom=0, contrast=0.1, horizontal_flip=False)
    assert [type(x).__name__ for x in build_augmentation(cfg).layers] == ["RandomContrast"]
    assert not AugmentConfig(0, 0, 0, False).active
