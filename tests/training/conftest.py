from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import SHARED

__all__ = ["SHARED"]

# Three visually separable classes: a learnable problem in a handful of steps.
CLASSES = (("n00000001", "red_dog"), ("n00000002", "green_dog"), ("n00000003", "blue_dog"))


def write_dataset(root: Path, per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, (synset, name) in enumerate(CLASSES):
        folder = root / f"{synset}-{name}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[..., c] = np.clip(img[..., c].astype(int) + 150, 0, 255).astype(np.uint8)
            # Odd sizes too: the chain must resize whatever it gets.
            if i % 3 == 0:
                img = img[: size - 5]
            Image.fromarray(img).save(
                folder / f"{synset}_{i}.jpg" if i % 2 else folder / f"{synset}_{i}.png"
            )
    (root.parent / "breeds.tsv").write_text(
        "index\tsynset\tbreed\n"
        + "".join(f"{i}\t{s}\t{n.replace('_dog', '')}\n" for i, (s, n) in enumerate(CLASSES))
    )
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")
