"""Every architecture builds offline on tiny inputs and trains for one step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.models import (
    BACKBONES,
    build_backbone,
    build_baseline_cnn,
    build_feature_extractor,
    build_head,
    build_transfer_model,
    build_zero_shot_model,
    preprocess_mode,
    set_fine_tuning,
)


def _one_step(model: keras.Model, x: np.ndarray, classes: int) -> float:
    # Eager, unjitted: tracing/XLA-compiling a big graph costs far more than one tiny step.
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,
        jit_compile=False,
    )
    y = np.arange(len(x)) % classes
    loss = model.train_on_batch(x, y)
    return float(np.asarray(loss).ravel()[0])


def test_baseline_cnn_is_the_studys_architecture() -> None:
    model = build_baseline_cnn((32, 32, 1), 5)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64, 64]
    assert sum(isinstance(x, keras.layers.BatchNormalization) for x in model.layers) == 4
    assert sum(isinstance(x, keras.layers.MaxPooling2D) for x in model.layers) == 4
    assert any(isinstance(x, keras.layers.Flatten) for x in model.layers)
    assert model.output_shape == (None, 5)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    probs = np.asarray(model(x))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.isfinite(_one_step(model, x, 5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalization": "dropout", "head": "gap"},
        {"normalization": "none", "activation": "elu", "filters": (8, 8)},
    ],
)
def test_baseline_variants(kwargs: dict) -> None:
    model = build_baseline_cnn((16, 16, 3), 3, **kwargs)
    bn = sum(isinstance(x, keras.layers.BatchNormalization) for x in model.layers)
    assert bn == 0
    if kwargs.get("head") == "gap":
        assert any(isinstance(x, keras.layers.GlobalAveragePooling2D) for x in model.layers)
    x = np.zeros((2, 16, 16, 3), "float32")
    assert np.isfinite(_one_step(model, x, 3))


def test_pca_input_gets_a_dense_network() -> None:
    model = build_baseline_cnn((20,), 3, rescale=False)
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_transfer_model_trains_a_step(name: str) -> None:
    shape = (32, 32, 3)
    backbone = build_backbone(name, shape)
    head = build_head(int(backbone.output_shape[-1]), 3)
    model = build_transfer_model(backbone, head, preprocess_mode(name), shape)
    backbone.trainable = False
    x = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype("float32")
    before = [w.copy() for w in backbone.get_weights()]
    assert np.isfinite(_one_step(model, x, 3))
    # The frozen backbone did not move; only the head trained.
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone.get_weights(), strict=True))


def test_fine_tuning_unfreezes_top_layers_but_never_batch_norm() -> None:
    backbone = build_backbone("mobilenetv2", (32, 32, 3))
    n = set_fine_tuning(backbone, 0.3)
    assert n > 0
    bns = [x for x in backbone.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert bns and not any(x.trainable for x in bns)
    convs = [x for x in backbone.layers if isinstance(x, keras.layers.Conv2D)]
    assert not convs[0].trainable and convs[-1].trainable
    head = build_head(int(backbone.output_shape[-1]), 2)
    model = build_transfer_model(backbone, head, "tf", (32, 32, 3))
    moving = [w.numpy().copy() for x in bns for w in x.non_trainable_weights]
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    _one_step(model, x, 2)
    after = [w.numpy() for x in bns for w in x.non_trainable_weights]
    # BN statistics stay frozen (training=False inside the model) during fine-tuning.
    assert all(np.array_equal(a, b) for a, b in zip(moving, after, strict=True))


def test_grayscale_input_feeds_a_three_channel_backbone() -> None:
    backbone = build_backbone("mobilenet", (32, 32, 3))
    extractor = build_feature_extractor(backbone, "tf", (32, 32, 1))
    feats = extractor.predict_on_batch(np.zeros((2, 32, 32, 1), "float32"))
    assert feats.shape == (2, backbone.output_shape[-1])


def test_zero_shot_regroups_imagenet_probabilities() -> None:
    classifier = build_backbone("mobilenetv2", (32, 32, 3), include_top=True)
    indices = [151, 152, 273]
    model = build_zero_shot_model(classifier, "tf", (32, 32, 3), indices)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    out = np.asarray(model.predict_on_batch(x))
    raw = np.asarray(classifier.predict_on_batch(x / 127.5 - 1.0))
    assert out.shape == (3, 4)
    assert np.allclose(out[:, :3], raw[:, indices], atol=1e-6)
    assert np.allclose(out[:, 3], 1 - raw[:, indices].sum(axis=1), atol=1e-5)
    assert np.allclose(out.sum(axis=1), 1, atol=1e-5)
