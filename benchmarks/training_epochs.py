"""Wall time per training epoch: baseline CNN, transfer head with and without the feature
cache, and fine-tuning.

    nice -n 10 .venv/bin/python benchmarks/training_epochs.py --classes 10 --per-class 40

Runs on a subset of ../shared/data/stanford-dogs-train with the shared MobileNetV2 weights and
extrapolates each cost to the full 8,400-photo training split (70 % of 12,000). "Without the
cache" one head epoch costs a full backbone pass over the training photos plus the head step;
with it, only the head step (plus loading the cache once).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import SHARED  # noqa: E402  (the same data folder the tests find)

WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
FULL_TRAIN = 8400


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "stanford-dogs-train"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--baseline-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras
    import numpy as np

    from labeler.model.preprocessing import PreprocessingConfig, finish_batch
    from training.augment import build_augmentation
    from training.backbones import load_backbone
    from training.data import discover, load_images
    from training.features import extract_features
    from training.models import (
        build_baseline_cnn,
        build_feature_extractor,
        build_head,
        build_transfer_model,
        set_fine_tuning,
    )

    ds = discover(args.data, max_classes=args.classes, per_class=args.per_class)
    n, k = len(ds), len(ds.class_names)
    y = ds.labels
    rows: list[tuple[str, float, float]] = []  # (what, seconds on subset, per full epoch)

    def record(what: str, seconds: float, images: int) -> None:
        rows.append((what, seconds, seconds / images * FULL_TRAIN))
        print(f"{what}: {seconds:.2f}s for {images} images", flush=True)

    # Baseline CNN, augmentation in the graph, as `python -m training train` runs it.
    prep = PreprocessingConfig(image_size=(args.baseline_size,) * 2, grayscale=True, equalize=True)
    x, secs = _timed(lambda: finish_batch(load_images(ds.paths, prep), prep))
    record(f"decode+preprocess {args.baseline_size}px gray+eq", secs, n)
    serving = build_baseline_cnn(prep.output_shape(), k)
    inp = keras.Input(prep.output_shape())
    trainer = keras.Model(inp, serving(build_augmentation()(inp)))
    trainer.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
    trainer.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)  # warm-up: tracing
    _, secs = _timed(lambda: trainer.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0))
    record("baseline CNN epoch", secs, n)

    if not WEIGHTS.is_file():
        print(f"no {WEIGHTS}: skipping transfer timings")
    else:
        prep224 = PreprocessingConfig(image_size=(224, 224))
        images, secs = _timed(lambda: load_images(ds.paths, prep224))
        record("decode 224px", secs, n)
        backbone = load_backbone("mobilenetv2", str(WEIGHTS), (224, 224, 3))
        extractor = build_feature_extractor(backbone, "tf", (224, 224, 3))
        extract_features(extractor, images[:32], prep224)  # warm-up
        feats, secs = _timed(lambda: extract_features(extractor, images, prep224))
        record("MobileNetV2 backbone pass (= feature cache fill)", secs, n)
        backbone_secs = secs
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "f.npy"
            np.save(path, feats)
            _, secs = _timed(lambda: np.load(path))
            record("feature cache load", secs, n)
        head = build_head(feats.shape[1], k)
        head.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
        head.fit(feats, y, batch_size=args.batch_size, epochs=1, verbose=0)
        _, head_secs = _timed(
            lambda: head.fit(feats, y, batch_size=args.batch_size, epochs=1, verbose=0)
        )
        record("head epoch with feature cache", head_secs, n)
        record("head epoch without cache (backbone + head)", backbone_secs + head_secs, n)

        set_fine_tuning(backbone, 0.2)
        model = build_transfer_model(backbone, head, "tf", (224, 224, 3))
        model.compile(
            keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", jit_compile=False
        )
        xs = finish_batch(images, prep224)
        sub = min(n, 4 * args.batch_size)
        model.fit(xs[: args.batch_size], y[: args.batch_size], epochs=1, verbose=0)
        _, secs = _timed(
            lambda: model.fit(xs[:sub], y[:sub], batch_size=args.batch_size, epochs=1, verbose=0)
        )
        record("fine-tune (top 20 % of MobileNetV2) epoch", secs, sub)

    print(f"\n{n} images, {k} classes; extrapolated to {FULL_TRAIN} training photos:\n")
    print("| step | seconds (subset) | seconds per full epoch |")
    print("|---|---|---|")
    for what, secs, full in rows:
        print(f"| {what} | {secs:.2f} | {full:.0f} |")


if __name__ == "__main__":
    main()
