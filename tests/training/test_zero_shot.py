from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeler.model.classifier import Classifier
from tests.helpers import SHARED, require
from training.cli import main
from training.zero_shot import IMAGENET_INDEX, REJECT_LABEL, imagenet_indices, read_breeds

TSV = SHARED / "data" / "breeds.tsv"


def test_imagenet_dog_region_is_consistent_with_sorted_wnids() -> None:
    # ImageNet-1k indices are ranks of the sorted wnids, so a contiguous block of indices
    # must list its wnids in ascending order with no gaps in the indices.
    by_index = sorted(IMAGENET_INDEX.items(), key=lambda kv: kv[1])
    wnids = [w for w, _ in by_index]
    assert wnids == sorted(wnids)
    assert [i for _, i in by_index] == list(range(151, 276))
    assert IMAGENET_INDEX["n02085620"] == 151  # Chihuahua
    assert IMAGENET_INDEX["n02113978"] == 268  # Mexican hairless
    assert IMAGENET_INDEX["n02116738"] == 275  # African hunting dog
    with pytest.raises(ValueError):
        imagenet_indices(["n01440764"])  # tench: not a dog


def test_the_120_stanford_breeds_map_to_120_distinct_imagenet_dogs() -> None:
    require(TSV)
    synsets, breeds = read_breeds(TSV)
    indices = imagenet_indices(synsets)
    assert len(indices) == len(set(indices)) == 120
    assert indices == sorted(indices)  # label order (sorted synsets) = ImageNet order
    unused = set(range(151, 276)) - set(indices)
    # Left out: dalmatian (251) and the wolves/coyote (269..272).
    assert unused == {251, 269, 270, 271, 272}
    assert breeds[0] == "Chihuahua" and breeds[-1] == "African_hunting_dog"


@pytest.mark.slow
def test_zero_shot_artifact_loads_with_a_reject_label(tmp_path: Path) -> None:
    tsv = tmp_path / "breeds.tsv"
    tsv.write_text("index\tsynset\tbreed\n0\tn02085620\tChihuahua\n1\tn02116738\twild_dog\n")
    out = tmp_path / "zs"
    assert (
        main(
            [
                "zero-shot",
                "--backbone",
                "mobilenetv2",
                "--weights",
                "none",
                "--breeds-tsv",
                str(tsv),
                "--output",
                str(out),
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    clf = Classifier.load(out)
    assert clf.artifact.kind == "zero_shot"
    assert clf.artifact.labels == ("Chihuahua", "wild_dog", REJECT_LABEL)
    assert clf.artifact.reject_labels == frozenset({REJECT_LABEL})
    photos = [np.full((50, 60, 3), v, np.uint8) for v in (10, 200)]
    assert clf.predict_probabilities(np.zeros((0, 32, 32, 3), np.float32)).shape == (0, 3)
    preds = clf.classify_images(photos)
    # A random-weight ImageNet net spreads its mass over 1000 classes: "not a dog" wins.
    assert all(p.label == REJECT_LABEL for p in preds)
    assert clf.artifact.metadata["backbone"]["imagenet_indices"] == [151, 275]
