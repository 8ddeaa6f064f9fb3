"""Trained heads on one backbone or on two concatenated, against the ImageNet classifier.

    nice -n 10 .venv/bin/python benchmarks/concat_heads.py

Features and ImageNet logits of EfficientNet-Lite0 and Lite2 (float, from ``--weights-dir``)
for the Stanford Dogs crops (``--data``) and the full frames (``--calibration-data``), cached
in ``runs/feature-cache`` like ``python -m training onnx`` does (the first run takes about 20
minutes on 2 cores). A softmax head (training's own, ``training.onnx_train.fit_head``) is
trained on the crops' features, with ``--views`` optionally adding views of every crop that
imitate a full frame (``zoomout``: the crop shrunk inside a frame). Every recognizer is judged
as training judges the shipped one: on the full frames, the decision rule for
``--target`` precision cross-validated in 5 folds, the three wild dogs never auto-labelled,
photos under the shipped no-dog gate (Lite2's ImageNet dog mass 0.3) sent to review.
Reported: top-1 and top-3 on the full frames and on held-out crops, and coverage with
precision (95 % interval) at the target.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import calibration as cal_metrics  # noqa: E402
from training.data import discover, read_breeds_tsv  # noqa: E402
from training.onnx_backbone import (  # noqa: E402
    KNOWN_BACKBONES,
    Head,
    OnnxBackbone,
    breed_probabilities,
    dog_probability,
)
from training.onnx_train import WILD_DOGS, dataset_outputs, fit_head, labels_for  # noqa: E402
from training.zero_shot import imagenet_indices  # noqa: E402

SHARED = REPO.parent / "shared"
BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")
DOG_GATE = 0.3


def outputs(
    args: argparse.Namespace, name: str, root: str, view: str = "identity"
) -> tuple[np.ndarray, np.ndarray]:
    spec = KNOWN_BACKBONES[name]
    path = Path(args.weights_dir) / spec.file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backbone = OnnxBackbone(path, spec, threads=0)
    data = discover(root, args.breeds_tsv)
    return dataset_outputs(backbone, data, Path(args.cache), digest, view, workers=2)


def gated(breeds: np.ndarray, dog: np.ndarray) -> np.ndarray:
    keep = (dog >= DOG_GATE).astype(breeds.dtype)[:, None]
    return np.concatenate([breeds * keep, 1.0 - keep], axis=1)


def geometric_mean(*probabilities: np.ndarray) -> np.ndarray:
    logp = np.mean([np.log(np.clip(p, 1e-12, 1.0)) for p in probabilities], axis=0)
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def judge(
    name: str,
    breeds: np.ndarray,
    dog: np.ndarray,
    y: np.ndarray,
    wild: list[int],
    target: float,
    crops: str,
) -> str:
    reject = [*wild, breeds.shape[1]]
    probs = gated(breeds, dog)
    oof, _ = cal_metrics.cross_validate_rule(probs, y, target, reject, folds=5, seed=0)
    row = oof.as_dict()
    low, high = row["precision_interval_95"]  # type: ignore[misc]
    precision = "n/a" if oof.auto == 0 else f"{oof.precision:.3f} ({low:.3f}-{high:.3f})"
    return (
        f"| {name} | {cal_metrics.top_k_accuracy(probs, y):.3f} | "
        f"{cal_metrics.top_k_accuracy(probs, y, 3):.3f} | {crops} | "
        f"{oof.coverage:.3f} ({oof.auto}) | {precision} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = SHARED / "data"
    parser.add_argument("--weights-dir", default=str(SHARED / "weights" / "efficientnet-lite"))
    parser.add_argument("--data", default=str(data / "stanford-dogs-train"))
    parser.add_argument("--calibration-data", default=str(data / "fullframe-calibration"))
    parser.add_argument("--breeds-tsv", default=str(data / "breeds.tsv"))
    parser.add_argument("--cache", default="runs/feature-cache")
    parser.add_argument("--target", type=float, default=0.96)
    parser.add_argument(
        "--views", default="", help="comma-separated extra training views, e.g. zoomout"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    names = read_breeds_tsv(Path(args.breeds_tsv))
    synsets = sorted(names)
    wild = [synsets.index(s) for s in WILD_DOGS]
    crops_y = labels_for(discover(args.data, args.breeds_tsv), synsets)
    frames_y = labels_for(discover(args.calibration_data, args.breeds_tsv), synsets)
    views = [v for v in args.views.split(",") if v]
    crops = {b: outputs(args, b, args.data)[0] for b in BACKBONES}
    extra = {b: [outputs(args, b, args.data, v)[0] for v in views] for b in BACKBONES}
    frames = {b: outputs(args, b, args.calibration_data) for b in BACKBONES}
    dog = dog_probability(frames["efficientnet-lite2"][1])
    imagenet = Head(imagenet_classes=tuple(imagenet_indices(synsets)))
    zero_shot = {b: breed_probabilities(*frames[b], imagenet, None) for b in BACKBONES}

    rows = [
        "| recognizer | top-1 | top-3 | held-out crops top-1 | coverage | precision (95 %) |",
        "|---|---|---|---|---|---|",
        judge(
            "Lite2 ImageNet classifier (shipped)",
            zero_shot[BACKBONES[1]],
            dog,
            frames_y,
            wild,
            args.target,
            "-",
        ),
    ]
    trained: dict[str, np.ndarray] = {}
    for label, parts in (
        ("Lite0 features", [BACKBONES[0]]),
        ("Lite2 features", [BACKBONES[1]]),
        ("Lite0 + Lite2 features concatenated", list(BACKBONES)),
    ):
        x = np.concatenate([crops[b] for b in parts], axis=1)
        y = crops_y
        if views:
            # Every view of a crop is another training row with the crop's label.
            x = np.concatenate(
                [
                    x,
                    *(
                        np.concatenate([extra[b][k] for b in parts], axis=1)
                        for k in range(len(views))
                    ),
                ]
            )
            y = np.tile(crops_y, 1 + len(views))
        head, held = fit_head(x, y, len(synsets), args.seed)
        assert head.kernel is not None and head.bias is not None
        f = np.concatenate([frames[b][0] for b in parts], axis=1)
        z = f @ head.kernel + head.bias
        e = np.exp(z - z.max(axis=1, keepdims=True))
        trained[label] = e / e.sum(axis=1, keepdims=True)
        suffix = f", trained on crops{' + ' + '+'.join(views) if views else ''}"
        rows.append(
            judge(
                label + suffix,
                trained[label],
                dog,
                frames_y,
                wild,
                args.target,
                f"{held['top1']:.3f}",
            )
        )
    concat = trained["Lite0 + Lite2 features concatenated"]
    rows.append(
        judge(
            "concatenated head and Lite2 ImageNet classifier, geometric mean",
            geometric_mean(concat, zero_shot[BACKBONES[1]]),
            dog,
            frames_y,
            wild,
            args.target,
            "-",
        )
    )
    rows.append(
        judge(
            "concatenated head and both ImageNet classifiers, geometric mean",
            geometric_mean(concat, *zero_shot.values()),
            dog,
            frames_y,
            wild,
            args.target,
            "-",
        )
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
