"""The feature space training ships: principal directions of training features scaled to unit
variance, a few anchor records per breed, and an identity naming the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeler.model.features import FeatureSpace
from training.feature_space import build_feature_space


def _training_photos(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 20)
    features = rng.normal(0, 1, (60, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1, 0.01])
    features[:, 0] += 10.0 * labels
    probabilities = rng.dirichlet(np.ones(4), 60)
    return features, probabilities, labels


def test_the_space_keeps_the_main_directions_at_unit_variance(tmp_path: Path) -> None:
    features, probabilities, labels = _training_photos()
    space = build_feature_space(
        features, probabilities, labels, b"net", dims=3, anchors_per_class=4
    )
    assert space.projection.shape == (3, 6) and space.dims == 3 and space.source_dims == 6
    projected = space.project(features)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(projected.std(axis=0, ddof=1), 1.0, rtol=1e-6)
    # The class-separating direction (feature 0) is the first one kept.
    assert abs(np.corrcoef(projected[:, 0], features[:, 0])[0, 1]) > 0.99
    assert np.array_equal(np.bincount(space.anchor_labels), [4, 4, 4])
    np.testing.assert_allclose(np.exp(space.anchor_logp).sum(axis=1), 1.0, rtol=1e-6)
    space.save(tmp_path / "space.npz")
    loaded = FeatureSpace.load(tmp_path / "space.npz", classes=4)
    assert loaded.space == space.space
    np.testing.assert_allclose(loaded.project(features), projected, atol=1e-4)


def test_the_identity_names_the_network_and_the_draw_is_seeded() -> None:
    features, probabilities, labels = _training_photos()
    one = build_feature_space(features, probabilities, labels, b"net-a")
    other = build_feature_space(features, probabilities, labels, b"net-b")
    again = build_feature_space(features, probabilities, labels, b"net-a")
    assert one.space != other.space and one.space == again.space and len(one.space) == 16
    assert np.array_equal(one.anchor_labels, again.anchor_labels)
    # More dimensions than photos allow are cut to what the photos can give.
    assert one.dims == 6


def test_mismatched_inputs_are_refused() -> None:
    features, probabilities, labels = _training_photos()
    with pytest.raises(ValueError, match="same photos"):
        build_feature_space(features, probabilities[:10], labels, b"net")
    with pytest.raises(ValueError, match="two training photos"):
        build_feature_space(features[:1], probabilities[:1], labels[:1], b"net")
