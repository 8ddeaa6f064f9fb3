"""The photo dataset: one folder per class, a seeded stratified split, and image loading.

Label order comes from the data: class folders sorted by name (for Stanford Dogs the names
start with the synset, so this is the sorted-synset order of ``breeds.tsv``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeler.model.preprocessing import PreprocessingConfig, preprocess_image
from labeler.photos.decoding import decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray  # (n,) int, index into class_names
    class_names: tuple[str, ...]
    class_ids: tuple[str, ...]  # folder names' synset part (or the folder name)

    def __len__(self) -> int:
        return len(self.paths)

    def relative(self, i: int) -> str:
        return self.paths[i].relative_to(self.root).as_posix()


def read_breeds_tsv(path: Path) -> dict[str, str]:
    """synset -> breed name, from a ``index, synset, breed`` TSV file."""
    with path.open(newline="") as handle:
        return {row["synset"]: row["breed"] for row in csv.DictReader(handle, delimiter="\t")}


def discover(
    root: str | Path,
    breeds_tsv: str | Path | None = None,
    max_classes: int | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Index a one-folder-per-class tree, optionally keeping a seeded subset.

    ``max_classes`` keeps the first classes in label order (so a subset's labels are a prefix
    of the full label list); ``per_class`` keeps a seeded random sample of each class.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root} has no class folders")
    if max_classes is not None:
        folders = folders[:max_classes]
    names_by_synset = read_breeds_tsv(Path(breeds_tsv)) if breeds_tsv else {}
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    ids: list[str] = []
    for label, folder in enumerate(folders):
        class_id, _, rest = folder.name.partition("-")
        ids.append(class_id)
        names.append(names_by_synset.get(class_id) or rest or folder.name)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {folder} has no images")
        if per_class is not None and per_class < len(files):
            keep = np.sort(rng.choice(len(files), size=per_class, replace=False))
            files = [files[i] for i in keep]
        paths.extend(files)
        labels.extend([label] * len(files))
    if len(set(names)) != len(names):
        raise ValueError("class names are not unique")
    return Dataset(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(names), tuple(ids))


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded split of indices that keeps every class's share in each part.

    Each class contributes ``round(n * fraction)`` items (at least one when it has three or
    more), so tiny classes still appear in train, validation and test.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("fractions must be in [0, 1) and leave room for training")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test = max(n_test, 1) if test_fraction > 0 else 0
            n_val = max(n_val, 1) if val_fraction > 0 else 0
        parts["test"].extend(idx[:n_test])
        parts["val"].extend(idx[n_test : n_test + n_val])
        parts["train"].extend(idx[n_test + n_val :])
    return {name: np.sort(np.asarray(v, dtype=np.int64)) for name, v in parts.items()}


def split_fingerprint(dataset: Dataset, split: dict[str, np.ndarray]) -> str:
    """A hash of which file went to which part: equal fingerprints mean the same split."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for i in split[name]:
            digest.update(f"{name}\t{dataset.relative(int(i))}\t{dataset.labels[i]}\n".encode())
    return digest.hexdigest()[:16]


def write_split(path: Path, dataset: Dataset, split: dict[str, np.ndarray]) -> None:
    """Record the split as CSV (split, path, label) so a run can be reproduced or audited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "label", "class"])
        for name in SPLITS:
            for i in split[name]:
                label = int(dataset.labels[i])
                writer.writerow([name, dataset.relative(int(i)), label, dataset.class_names[label]])


def read_rgb(path: Path, target_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a photo exactly as serving does (EXIF upright, first frame, same limits)."""
    return decode_image(path.read_bytes(), target_size=target_size)


def load_images(paths: Sequence[Path], config: PreprocessingConfig, workers: int = 2) -> np.ndarray:
    """Decode and run the per-image part of the labeler's chain (resize/grayscale/equalize).

    Returns uint8 (n, h, w, c); whitening is batch-level and applied by the caller with
    ``labeler.model.preprocessing.finish_batch``, exactly as serving does.
    """
    h, w = config.image_size
    out = np.empty((len(paths), h, w, config.channels), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = preprocess_image(read_rgb(paths[i], config.image_size), config)

    # Pillow releases the GIL while decoding, so threads are enough.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, range(len(paths))))
    return out


def cached_images(
    cache_dir: Path | None, dataset: Dataset, config: PreprocessingConfig, workers: int = 2
) -> np.ndarray:
    """``load_images`` for the whole dataset, memoised on disk (decoding dominates small runs)."""
    if cache_dir is None:
        return load_images(dataset.paths, config, workers)
    key = hashlib.sha256(
        json.dumps(
            {
                "files": [dataset.relative(i) for i in range(len(dataset))],
                "root": str(dataset.root.resolve()),
                "preprocessing": config.cache_key(),
                "decoder": "labeler.photos.decoding",  # upright + reduced-scale decoding
            }
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"images-{key}.npy"
    if path.is_file():
        return np.load(path)
    images = load_images(dataset.paths, config, workers)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, images)
    tmp.replace(path)
    return images
