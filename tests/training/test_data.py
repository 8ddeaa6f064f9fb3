from __future__ import annotations

from pathlib import Path

import numpy as np

from labeler.model.preprocessing import PreprocessingConfig
from tests.helpers import SHARED, require
from training.data import (
    discover,
    load_images,
    split_fingerprint,
    stratified_split,
    write_split,
)


def test_discover_orders_labels_by_folder_and_names_from_tsv(tiny_data: Path) -> None:
    ds = discover(tiny_data, tiny_data.parent / "breeds.tsv")
    assert ds.class_names == ("red", "green", "blue")
    assert ds.class_ids == ("n00000001", "n00000002", "n00000003")
    assert len(ds) == 30
    assert np.bincount(ds.labels).tolist() == [10, 10, 10]
    # Without the TSV the folder name after the synset is the class name.
    assert discover(tiny_data).class_names == ("red_dog", "green_dog", "blue_dog")


def test_subset_is_a_label_prefix_and_seeded(tiny_data: Path) -> None:
    a = discover(tiny_data, max_classes=2, per_class=4, seed=1)
    b = discover(tiny_data, max_classes=2, per_class=4, seed=1)
    c = discover(tiny_data, max_classes=2, per_class=4, seed=2)
    assert a.class_names == ("red_dog", "green_dog")
    assert a.paths == b.paths
    assert a.paths != c.paths
    assert np.bincount(a.labels).tolist() == [4, 4]


def test_stratified_split_is_a_seeded_partition_keeping_class_shares() -> None:
    labels = np.repeat(np.arange(4), [20, 20, 10, 3])
    split = stratified_split(labels, 0.2, 0.2, seed=5)
    all_idx = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(all_idx.tolist()) == list(range(len(labels)))
    for part, share in (("val", 0.2), ("test", 0.2)):
        counts = np.bincount(labels[split[part]], minlength=4)
        assert counts[:3].tolist() == [round(20 * share), round(20 * share), round(10 * share)]
        assert counts[3] == 1  # a tiny class still appears in every part
    again = stratified_split(labels, 0.2, 0.2, seed=5)
    other = stratified_split(labels, 0.2, 0.2, seed=6)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], other["test"])


def test_split_fingerprint_and_csv_record_the_split(tiny_data: Path, tmp_path: Path) -> None:
    ds = discover(tiny_data)
    s1 = stratified_split(ds.labels, 0.2, 0.2, seed=0)
    s2 = stratified_split(ds.labels, 0.2, 0.2, seed=1)
    assert split_fingerprint(ds, s1) == split_fingerprint(ds, s1)
    assert split_fingerprint(ds, s1) != split_fingerprint(ds, s2)
    write_split(tmp_path / "split.csv", ds, s1)
    lines = (tmp_path / "split.csv").read_text().splitlines()
    assert lines[0] == "split,path,label,class"
    assert len(lines) == 1 + len(ds)
    assert sum(line.startswith("test,") for line in lines) == len(s1["test"])


def test_load_images_runs_the_labeler_chain(tiny_data: Path) -> None:
    ds = discover(tiny_data)
    cfg = PreprocessingConfig(image_size=(16, 12), grayscale=True, equalize=True)
    images = load_images(ds.paths[:5], cfg)
    assert images.shape == (5, 16, 12, 1)
    assert images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0  # equalized: full range


def test_stanford_dogs_labels_match_breeds_tsv() -> None:
    require(SHARED / "data" / "stanford-dogs-train")
    ds = discover(
        SHARED / "data" / "stanford-dogs-train", SHARED / "data" / "breeds.tsv", per_class=1
    )
    rows = [r.split("\t") for r in (SHARED / "data/breeds.tsv").read_text().splitlines()[1:]]
    assert list(ds.class_ids) == [r[1] for r in rows]
    assert list(ds.class_names) == [r[2] for r in rows]
    assert len(ds.class_names) == 120
