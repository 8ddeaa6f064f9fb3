"""Can the photo's features tell a breed the model has no class for? A measurement, not a rule.

    .venv/bin/python benchmarks/novelty.py --data ../shared/data/fullframe-calibration

Every photo is classified through the product's classifier, which keeps its record (features
projected on the model's feature space). As in ``quality.py``, a breed outside the model is
simulated by taking each photo's own breed out of the answer; every auto-label there is wrong.
The candidate check is a distance: how far the photo's projected features lie from the
training photos of the breed it was given (Mahalanobis, with the class means and the pooled
within-breed covariance of the feature space's anchor records, shrunk halfway to its trace).
For limits that keep 90 %, 95 % and 99 % of the real auto-labels, it prints what is left of the
coverage, the precision and the simulated unknown breeds' auto-labels, then which breed the
unknowns were mistaken for. A model without a feature space cannot be measured.

Then what the shelter's own decisions do (``labeler adapt``'s look-alikes): one breed of the
data at a time is outside the model (taken out of every answer); staff decide a share of the
photos at random, naming a breed the model does not know for that breed's photos; the labels
``look_alikes`` finds in those decisions are sent to review, and the other photos are decided
with and without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import photos, without  # noqa: E402
from labeler.core.domain import Prediction  # noqa: E402
from labeler.core.paths import default_model_dir  # noqa: E402
from labeler.decide.adapt import look_alikes  # noqa: E402
from labeler.decide.decision import Thresholds, decide, resolve_thresholds  # noqa: E402
from labeler.model.classifier import Classifier  # noqa: E402
from labeler.model.features import FeatureSpace, decode_record  # noqa: E402
from labeler.photos.decoding import decode_image  # noqa: E402
from labeler.store.schema import LABELLED  # noqa: E402

KEEP = (0.90, 0.95, 0.99)
DECIDED_SHARES = (0.1, 0.25, 0.5)
SHRINK = 0.5


def breed_distances(space: FeatureSpace, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, d) and the inverse pooled covariance (d, d) of the anchor records."""
    x = space.anchor_projected.astype(np.float64)
    y = space.anchor_labels
    means = np.zeros((classes, x.shape[1]))
    residuals = []
    for label in np.unique(y):
        means[label] = x[y == label].mean(axis=0)
        residuals.append(x[y == label] - means[label])
    r = np.concatenate(residuals)
    cov = r.T @ r / (len(r) - len(np.unique(y)))
    cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a <synset>-<breed> tree")
    parser.add_argument("--model", type=Path, default=None, help="default: the packaged model")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.model or default_model_dir())
    art, space = classifier.artifact, classifier.feature_space
    if space is None:
        raise SystemExit(f"{art.path}: no feature space, nothing to measure")
    thresholds = resolve_thresholds(art, None, None)
    items = photos(args.data, art.labels)
    index = {label: i for i, label in enumerate(art.labels)}
    means, precision_matrix = breed_distances(space, len(art.labels))

    def distance(projected: np.ndarray, label: str) -> float:
        d = projected - means[index[label]]
        return float(d @ precision_matrix @ d) / len(d)

    rows = []  # (auto, right, distance, unknown auto, unknown distance, truth, unknown label)
    answers: list[tuple[Prediction, str]] = []
    for start in range(0, len(items), args.batch_size):
        batch = items[start : start + args.batch_size]
        images = [decode_image(p.read_bytes()) for p, _ in batch]
        predictions = classifier.classify_images(images, k=len(art.labels))
        for (_, y), pred in zip(batch, predictions, strict=True):
            record = decode_record(pred.record)
            if record is None:
                raise SystemExit("the classifier kept no record of a photo")
            truth = art.labels[y]
            projected = record.projected.astype(np.float64)
            other = without(pred, truth)
            answers.append((pred, truth))
            rows.append(
                (
                    decide(pred, thresholds).status == LABELLED,
                    pred.label == truth,
                    distance(projected, pred.label),
                    decide(other, thresholds).status == LABELLED,
                    distance(projected, other.label),
                    truth,
                    other.label,
                )
            )
    auto = np.array([r[0] for r in rows])
    right = np.array([r[1] for r in rows])
    dist = np.array([r[2] for r in rows])
    unknown = np.array([r[3] for r in rows])
    unknown_dist = np.array([r[4] for r in rows])
    n = len(rows)
    print(f"{art.version} on {args.data.name}: n={n}, feature space {space.space}")
    print(f"{'check':<36} {'coverage':>8} {'precision':>9} {'unknown breeds auto':>20}")
    print(
        f"{'none (the shipped rule)':<36} {auto.mean():>8.3f} {right[auto].mean():>9.3f} "
        f"{unknown.mean():>20.3f}"
    )
    for keep in KEEP:
        limit = float(np.quantile(dist[auto], keep))
        kept, kept_unknown = auto & (dist <= limit), unknown & (unknown_dist <= limit)
        name = f"distance <= {limit:.2f} ({keep:.0%} kept)"
        print(
            f"{name:<36} {kept.mean():>8.3f} {right[kept].mean():>9.3f} "
            f"{kept_unknown.mean():>20.3f}"
        )
    pairs = Counter((r[5], r[6]) for r in rows if r[3])
    print("unknown breeds auto-labelled, as what (top 10):")
    for (truth, label), count in pairs.most_common(10):
        print(f"  {count:>4}  {truth} -> {label}")
    for share in DECIDED_SHARES:
        print(learned_from_staff(answers, thresholds, share))
    return 0


def learned_from_staff(
    answers: list[tuple[Prediction, str]], thresholds: Thresholds, share: float, seed: int = 0
) -> str:
    """One breed of the data at a time outside the model (taken out of every answer): staff
    decide ``share`` of the photos, their own breed for it being one the model does not know;
    ``look_alikes`` on those decisions, then the other photos decided with and without them."""
    breeds = sorted({truth for _, truth in answers})
    decided = np.random.default_rng(seed).random(len(answers)) < share
    totals = Counter[str]()
    for breed in breeds:
        answered = [(without(p, breed), truth) for p, truth in answers]
        found = look_alikes(
            (a.label, "outside" if truth == breed else None)
            for (a, truth), d in zip(answered, decided, strict=True)
            if d
        )
        learned = replace(thresholds, look_alikes=tuple((f.label, "staff") for f in found))
        totals["look-alikes"] += len(found)
        for (a, truth), d in zip(answered, decided, strict=True):
            if d:
                continue
            kind = "unknown" if truth == breed else "known"
            totals[kind] += 1
            for rule, when in ((thresholds, "before"), (learned, "after")):
                if decide(a, rule).status == LABELLED:
                    totals[f"{kind} auto {when}"] += 1
                    totals[f"{kind} right {when}"] += int(a.label == truth)
    lines = [
        f"one breed at a time outside the model ({len(breeds)} breeds), look-alikes learned "
        f"from staff deciding {share:.0%} of the photos ({totals['look-alikes']} labels found "
        "in all), judged on the others:"
    ]
    for when in ("before", "after"):
        auto, right = totals[f"known auto {when}"], totals[f"known right {when}"]
        lines.append(
            f"  {when:<6}: unknown breed auto-labelled "
            f"{totals[f'unknown auto {when}'] / totals['unknown']:.3f} "
            f"({totals[f'unknown auto {when}']}/{totals['unknown']}); other photos' coverage "
            f"{auto / totals['known']:.3f}, precision {right / max(auto, 1):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
