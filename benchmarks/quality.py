"""What a model artifact's labels are worth on a folder tree of breed photos.

Runs the product's own path on every photo: labeler's decoding, the artifact's preprocessing,
``Classifier`` (runtime, test-time augmentation, temperature) and the decision rule
(``labeler.decide.decision``: threshold, margin, reject labels). Reports top-1, top-3, calibration
error (ECE), coverage (share auto-labelled) and precision of the auto-labels with a 95 %
Wilson interval at the shipped rule, and the best coverage that a threshold chosen after the
fact could reach at 95 % and 97 % precision.

Folders are named ``<synset>-<breed>`` (the shared data's layout); the breed part must be one
of the artifact's labels. ``--heldout`` keeps only the held-out test photos of the artifact's
own training data (the split is recomputed from the metadata and its fingerprint checked).

    .venv/bin/python benchmarks/quality.py --data ../shared/data/fullframe-calibration
    .venv/bin/python benchmarks/quality.py --data ../shared/data/stanford-dogs-train --heldout
    .venv/bin/python benchmarks/quality.py --negatives skimage   # photos with no dog in them

``--negatives`` takes a folder of photos that show no dog of the model's breeds (cats,
people, empty kennels, other breeds), or ``skimage``: the photos scikit-image ships in its
``data`` module (a cat, an astronaut, a coffee cup, a rocket, ...). Every auto-label there is
a wrong breed written to a record; the report lists them.

Each ``--data`` run also simulates breeds the model has no class for: every photo is decided
again with its own breed taken out of the model's answer (the rest renormalised), as a photo
of a breed outside the 120 would come out; every auto-label there is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labeler.core.paths import default_model_dir  # noqa: E402
from labeler.decide.decision import decide, resolve_thresholds  # noqa: E402
from labeler.model.artifact import load_artifact  # noqa: E402
from labeler.model.classifier import Classifier, Prediction  # noqa: E402
from labeler.photos.decoding import decode_image  # noqa: E402
from labeler.store.schema import LABELLED  # noqa: E402
from training import calibration  # noqa: E402
from training.data import IMAGE_SUFFIXES, discover, split_fingerprint, stratified_split  # noqa: E402


def photos(root: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(photo, label index) for every photo under ``root/<synset>-<breed>/``."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        breed = folder.name.partition("-")[2] or folder.name
        if breed not in index:
            raise SystemExit(f"folder {folder.name}: breed {breed!r} is not one of the labels")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                out.append((path, index[breed]))
    return out


def heldout(root: Path, meta: dict[str, Any]) -> set[Path]:
    """The test part of the artifact's own training split, recomputed and fingerprint-checked."""
    data = meta.get("data") or {}
    split_cfg = data.get("split") or {}
    training = meta.get("training") or {}
    dataset = discover(
        root,
        None,
        training.get("max_classes"),
        training.get("per_class"),
        int(split_cfg.get("seed", training.get("seed", 0))),
    )
    split = stratified_split(
        dataset.labels,
        float(split_cfg.get("val_fraction", training.get("val_fraction", 0.15))),
        float(split_cfg.get("test_fraction", training.get("test_fraction", 0.15))),
        int(split_cfg.get("seed", training.get("seed", 0))),
    )
    got = split_fingerprint(dataset, split)
    if got != data.get("split_fingerprint"):
        raise SystemExit(
            f"split fingerprint {got} differs from the artifact's {data.get('split_fingerprint')}:"
            " this is not the data the model was trained on"
        )
    return {dataset.paths[int(i)] for i in split["test"]}


def evaluate(
    model_dir: Path, data: Path, *, only_heldout: bool = False, batch_size: int = 32
) -> dict[str, Any]:
    classifier = Classifier.load(model_dir)
    art = classifier.artifact
    items = photos(data, art.labels)
    if only_heldout:
        keep = heldout(data, load_artifact(model_dir).metadata)
        items = [(p, y) for p, y in items if p in keep]
    thresholds = resolve_thresholds(art, None, None)
    preds: list[Prediction] = []
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        images = [decode_image(p.read_bytes()) for p, _ in items[i : i + batch_size]]
        preds.extend(classifier.classify_images(images, k=len(art.labels)))
    seconds = time.perf_counter() - start
    truth = [art.labels[y] for _, y in items]
    unknown = sum(
        decide(without(p, t), thresholds).status == LABELLED
        for p, t in zip(preds, truth, strict=True)
    )
    conf = np.array([p.confidence for p in preds])
    correct = np.array([p.label == t for p, t in zip(preds, truth, strict=True)])
    top3 = np.array(
        [t in (c[0] for c in p.candidates[:3]) for p, t in zip(preds, truth, strict=True)]
    )
    auto = np.array([decide(p, thresholds).status == LABELLED for p in preds])
    allowed = np.array([p.label not in art.reject_labels for p in preds])
    shipped = calibration.RuleOutcome(len(preds), int(auto.sum()), int((auto & correct).sum()))
    return {
        "model": art.version,
        "data": data.name + (" (held-out test split)" if only_heldout else ""),
        "n": len(preds),
        "top1": float(correct.mean()),
        "top3": float(top3.mean()),
        "ece": calibration.calibration_error(conf, correct),
        "rule": {
            "review_threshold": thresholds.review_threshold,
            "review_margin": thresholds.review_margin,
            "reject_labels": sorted(thresholds.reject_labels),
            "tta": list(art.tta),
        },
        "shipped_rule": shipped.as_dict(),
        "best_coverage_at_95": calibration.best_coverage(conf, correct, allowed, 0.95),
        "best_coverage_at_97": calibration.best_coverage(conf, correct, allowed, 0.97),
        "unknown_breed_simulated": {
            "n": len(preds),
            "auto_labelled": int(unknown),
            "share": unknown / len(preds) if preds else 0.0,
        },
        "seconds": seconds,
    }


def without(prediction: Prediction, label: str) -> Prediction:
    """The answer a model without ``label`` would give: the other labels, renormalised."""
    rest = [(other, p) for other, p in prediction.candidates if other != label]
    total = sum(p for _, p in rest)
    if total <= 0:
        return Prediction(tuple(rest[:3]))
    return Prediction(tuple((other, p / total) for other, p in rest[:3]))


def negative_photos(source: str) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) of photos that show none of the breeds."""
    if source == "skimage":
        import skimage.data

        root = Path(skimage.data.__file__).parent
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    else:
        files = sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for path in files:
        try:
            out.append((path.name, decode_image(path.read_bytes())))
        except Exception as exc:  # a mask or a 16-bit scan: not a photo a shelter stores
            print(f"  skipped {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def evaluate_negatives(model_dir: Path, source: str) -> dict[str, Any]:
    classifier = Classifier.load(model_dir)
    art = classifier.artifact
    thresholds = resolve_thresholds(art, None, None)
    items = negative_photos(source)
    preds = classifier.classify_images([image for _, image in items], k=3)
    written = [
        {"photo": name, "label": p.label, "confidence": round(p.confidence, 3)}
        for (name, _), p in zip(items, preds, strict=True)
        if decide(p, thresholds).status == LABELLED
    ]
    labels = sorted({p.label for p in preds})
    return {
        "model": art.version,
        "data": f"negatives: {source}",
        "n": len(items),
        "auto_labelled": len(written),
        "auto_share": len(written) / len(items) if items else 0.0,
        "written": written,
        "best_labels_seen": labels,
    }


def render_negatives(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} on {r['data']}: n={r['n']}, auto-labelled {r['auto_labelled']} "
        f"({r['auto_share']:.1%}; each one a wrong breed on a record)"
    ]
    lines += [f"  {w['photo']}: {w['label']} ({w['confidence']})" for w in r["written"]]
    return "\n".join(lines)


def render(r: dict[str, Any]) -> str:
    s = r["shipped_rule"]
    low, high = s["precision_interval_95"]
    precision = "n/a" if s["precision"] is None else f"{s['precision']:.3f}"
    return (
        f"{r['model']} on {r['data']}: n={r['n']} top-1 {r['top1']:.3f} top-3 {r['top3']:.3f} "
        f"ECE {r['ece']:.3f}\n"
        f"  shipped rule (threshold {r['rule']['review_threshold']:.3f}, margin "
        f"{r['rule']['review_margin']:.2f}, tta {','.join(r['rule']['tta'])}): coverage "
        f"{s['coverage']:.3f} ({s['auto_labelled']}/{s['n']}), precision {precision} "
        f"(95% Wilson {low:.3f}-{high:.3f})\n"
        f"  best coverage after the fact: {r['best_coverage_at_95']:.3f} at 95% precision, "
        f"{r['best_coverage_at_97']:.3f} at 97%   ({r['seconds']:.0f} s)\n"
        f"  breeds outside the model (simulated, own breed taken out): "
        f"{r['unknown_breed_simulated']['share']:.3f} auto-labelled "
        f"({r['unknown_breed_simulated']['auto_labelled']}/{r['n']}), all of them wrong"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: packaged)")
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        default=[],
        help="a folder of <synset>-<breed> folders; repeat for several",
    )
    parser.add_argument(
        "--negatives",
        action="append",
        default=[],
        help="a folder of photos with none of the breeds, or 'skimage'; repeat for several",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="only the artifact's held-out test photos of its training data",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    model = args.model or default_model_dir()
    if not args.data and not args.negatives:
        parser.error("give --data and/or --negatives")
    results = [evaluate(model, d, only_heldout=args.heldout) for d in args.data]
    for r in results:
        print(render(r))
    for source in args.negatives:
        result = evaluate_negatives(model, source)
        print(render_negatives(result))
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
