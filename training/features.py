"""Frozen-backbone features, computed once and cached on disk.

The cache key covers everything the features depend on: backbone, weights identity, the
preprocessing chain and the exact list of files. Heads, optimizers and splits can then be
varied without running the backbone again (the split only selects rows of the cached matrix).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from labeler.model.preprocessing import PreprocessingConfig, finish_batch
from training.views import apply_view

log = logging.getLogger(__name__)


def feature_cache_key(
    backbone: str,
    weights_id: str,
    preprocessing: PreprocessingConfig,
    files: list[str],
    view: str = "identity",
) -> str:
    payload: dict[str, object] = {
        "backbone": backbone,
        "weights": weights_id,
        # Spread, not nested: the keys of caches written before cache_fields() stay the same.
        **preprocessing.cache_fields(),
        "files": files,
    }
    if view != "identity":  # keeps the keys of caches written before views existed
        payload["view"] = view
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def extract_features(
    extractor: keras.Model,
    images: np.ndarray,
    preprocessing: PreprocessingConfig,
    batch_size: int = 64,
    view: str = "identity",
) -> np.ndarray:
    """Run the backbone over uint8 images in chunks (a float copy of all of them is large).

    ``view`` (``training.views``) is applied chunk by chunk, seeded by the chunk's offset, so
    the same images always give the same augmented features.
    """
    chunks = []
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        pixels = apply_view(images[i : i + batch_size], view, seed=i)
        batch = finish_batch(pixels, preprocessing)
        chunks.append(np.asarray(extractor.predict_on_batch(batch), dtype=np.float32))
        done = min(i + batch_size, len(images))
        if (i // batch_size) % 20 == 0 or done == len(images):
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("features %d/%d (%.1f images/s)", done, len(images), rate)
    if not chunks:
        return np.zeros((0, int(extractor.output_shape[-1])), dtype=np.float32)
    return np.concatenate(chunks)


def cached(cache_dir: Path | None, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` memoised as ``cache_dir/features-<key>.npy``."""
    if cache_dir is None:
        return compute()
    path = cache_dir / f"features-{key}.npy"
    if path.is_file():
        log.info("feature cache hit %s", path)
        return np.load(path)
    log.info("feature cache miss %s: running the backbone", path)
    value = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, value)
    tmp.replace(path)
    return value
