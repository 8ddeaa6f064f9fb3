from __future__ import annotations

import numpy as np
import pytest

from training.views import VIEWS, apply_view


def test_views_are_deterministic_and_keep_shape() -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 20, 24, 3), dtype=np.uint8)
    for view in VIEWS:
        out = apply_view(images, view, seed=4)
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, apply_view(images, view, seed=4))
    np.testing.assert_array_equal(apply_view(images, "flip"), images[:, :, ::-1])
    assert not np.array_equal(apply_view(images, "zoomout", 0), apply_view(images, "zoomout", 1))
    with pytest.raises(ValueError, match="unknown view"):
        apply_view(images, "rotate")


def test_zoom_out_shrinks_the_subject() -> None:
    # A white square filling the frame becomes a smaller square inside its mirror images:
    # the centre stays white, and the mean brightness is kept by the reflection.
    image = np.zeros((1, 40, 40, 3), dtype=np.uint8)
    image[0, 10:30, 10:30] = 255
    out = apply_view(image, "zoomout", seed=0)[0]
    assert (out > 128).any(axis=2).sum() > 0
    assert out.shape == (40, 40, 3)


def test_fine_tuning_batches_draw_views_per_photo_reproducibly() -> None:
    from labeler.model.preprocessing import PreprocessingConfig
    from training.train import ImageBatches

    images = np.random.default_rng(0).integers(0, 255, (10, 12, 12, 3), dtype=np.uint8)
    prep = PreprocessingConfig(image_size=(12, 12))
    rows = np.arange(10)
    plain = ImageBatches(images, rows, rows, prep, 10)
    a = ImageBatches(images, rows, rows, prep, 10, views=("identity", "flip"))
    b = ImageBatches(images, rows, rows, prep, 10, views=("identity", "flip"))
    xa, ya = a[0]
    np.testing.assert_array_equal(xa, b[0][0])  # same epoch and batch: same pixels
    np.testing.assert_array_equal(ya, rows)
    flipped = [not np.array_equal(xa[i], plain[0][0][i]) for i in range(10)]
    assert 0 < sum(flipped) < 10  # some photos mirrored, some not
    for i in range(10):
        assert np.array_equal(xa[i], images[i]) or np.array_equal(xa[i], images[i][:, ::-1])
    a.on_epoch_end()
    assert not np.array_equal(a[0][0], xa)  # a new epoch draws again
