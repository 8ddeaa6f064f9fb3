"""Zero-shot labelling: a backbone's own ImageNet classifier, restricted to the dog breeds.

No training: the 1000-way ImageNet softmax is regrouped into one output per breed plus a
``not_a_dog`` output holding the mass of every other ImageNet class, so the labeler can send a
photo whose best guess is not a (known) dog to review (``reject_labels``).

ImageNet-1k class indices are the positions of the 1000 wnids in sorted order. No package on
these machines ships that list (Keras downloads ``imagenet_class_index.json`` at run time), so
the dog region is written out here: indices 151..268 are 118 dog breeds in wnid order, 269..272
wolves and coyote, and 273..275 dingo, dhole and African hunting dog. Stanford Dogs' 120
breeds are 117 of the 118 (all but n02110341 dalmatian, which is counted as ``not_a_dog``
since no label can name it) plus the three wild dogs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from labeler.model.preprocessing import PreprocessingConfig

log = logging.getLogger(__name__)

# ImageNet-1k wnids at indices 151..268, in index (= sorted wnid) order.
_DOG_WNIDS_151_268 = """
n02085620 n02085782 n02085936 n02086079 n02086240 n02086646 n02086910 n02087046 n02087394
n02088094 n02088238 n02088364 n02088466 n02088632 n02089078 n02089867 n02089973 n02090379
n02090622 n02090721 n02091032 n02091134 n02091244 n02091467 n02091635 n02091831 n02092002
n02092339 n02093256 n02093428 n02093647 n02093754 n02093859 n02093991 n02094114 n02094258
n02094433 n02095314 n02095570 n02095889 n02096051 n02096177 n02096294 n02096437 n02096585
n02097047 n02097130 n02097209 n02097298 n02097474 n02097658 n02098105 n02098286 n02098413
n02099267 n02099429 n02099601 n02099712 n02099849 n02100236 n02100583 n02100735 n02100877
n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 n02102480 n02102973 n02104029
n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855 n02106030
n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908
n02108000 n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063
n02110185 n02110341 n02110627 n02110806 n02110958 n02111129 n02111277 n02111500 n02111889
n02112018 n02112137 n02112350 n02112706 n02113023 n02113186 n02113624 n02113712 n02113799
n02113978
""".split()  # noqa: SIM905  a block of ids reads better than 118 lines
# 269..275: timber wolf, white wolf, red wolf, coyote, dingo, dhole, African hunting dog.
_CANIDS_269_275 = [
    "n02114367",
    "n02114548",
    "n02114712",
    "n02114855",
    "n02115641",
    "n02115913",
    "n02116738",
]

IMAGENET_INDEX: dict[str, int] = {
    **{w: 151 + i for i, w in enumerate(_DOG_WNIDS_151_268)},
    **{w: 269 + i for i, w in enumerate(_CANIDS_269_275)},
}
REJECT_LABEL = "not_a_dog"


def imagenet_indices(synsets: list[str]) -> list[int]:
    """ImageNet-1k output index of each synset; raises for one outside the dog region."""
    missing = [s for s in synsets if s not in IMAGENET_INDEX]
    if missing:
        raise ValueError(f"synsets not in the ImageNet-1k dog region: {missing[:5]}")
    indices = [IMAGENET_INDEX[s] for s in synsets]
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate synsets")
    return indices


def read_breeds(tsv: Path) -> tuple[list[str], list[str]]:
    """(synsets, breed names) in the TSV's index order."""
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:] if line.strip()]
    rows.sort(key=lambda r: int(r[0]))
    return [r[1] for r in rows], [r[2] for r in rows]


def run_zero_shot(args: argparse.Namespace) -> None:
    from labeler.model.artifact import save_artifact
    from training.backbones import load_backbone, weights_id
    from training.models import build_zero_shot_model, preprocess_mode

    synsets, breeds = read_breeds(Path(args.breeds_tsv))
    indices = imagenet_indices(synsets)
    # ImageNet classifiers are trained at 224x224; other sizes only make sense for tests.
    size = tuple(getattr(args, "image_size", (224, 224)))
    shape = (int(size[0]), int(size[1]), 3)
    prep = PreprocessingConfig(image_size=(shape[0], shape[1]))
    classifier = load_backbone(args.backbone, args.weights, shape, include_top=True)
    model = build_zero_shot_model(classifier, preprocess_mode(args.backbone), shape, indices)
    labels = [*breeds, REJECT_LABEL]
    metrics: dict[str, object] = {}
    if args.evaluate:
        metrics = evaluate_zero_shot(
            model, Path(args.evaluate), args.breeds_tsv, args.per_class, prep
        )
        log.info("zero-shot metrics: %s", json.dumps(metrics))
    name = args.name or Path(args.output).name
    save_artifact(
        args.output,
        model,
        labels,
        prep,
        name=name,
        kind="zero_shot",
        reject_labels=[REJECT_LABEL],
        quality_note=f"{args.backbone} ImageNet classifier restricted to {len(breeds)} breeds",
        extra={
            "backbone": {
                "name": args.backbone,
                "weights": weights_id(args.weights),
                "preprocess_mode": preprocess_mode(args.backbone),
                "imagenet_indices": indices,
            },
            "metrics": metrics,
        },
    )
    log.info("zero-shot artifact written to %s", args.output)


def evaluate_zero_shot(
    model: object, data: Path, breeds_tsv: str | None, per_class: int, prep: PreprocessingConfig
) -> dict[str, object]:
    from training import calibration
    from training.data import discover, load_images

    dataset = discover(data, breeds_tsv, per_class=per_class)
    images = load_images(dataset.paths, prep).astype(np.float32)
    probs = np.asarray(model.predict(images, batch_size=32, verbose=0))  # type: ignore[attr-defined]
    labels = dataset.labels
    return {
        "n": len(labels),
        "top1": calibration.top_k_accuracy(probs, labels, 1),
        "top3": calibration.top_k_accuracy(probs, labels, 3),
        "not_a_dog_share": float(np.mean(probs.argmax(axis=1) == probs.shape[1] - 1)),
        "ece": calibration.expected_calibration_error(probs, labels),
    }
