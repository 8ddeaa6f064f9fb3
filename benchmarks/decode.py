"""Reduced-scale JPEG decoding: time per photo, and whether labels stay the same.

    .venv/bin/python benchmarks/decode.py [--phones 60] [--timed 40] [--model DIR ...] [--no-probe]

Decode time: 12-megapixel phone JPEGs made at benchmark time from the full-frame sample
(``common.phone_jpegs``), decoded whole and at the smallest DCT scale that covers 224x224 and
64x64, then resized to the model input as the pass does.

Agreement: top-1 label with and without reduced-scale decoding, per model, on the full-frame
sample and calibration photos as stored (320 px short side: only models with inputs under
160 px decode them reduced) and on the 12-megapixel versions of the sample. Models: every
artifact under ``models/`` and ``--model``, plus (unless ``--no-probe``) a MobileNetV2 probe:
the shared ImageNet backbone with a logistic head fitted here on the Stanford Dogs crops of the
ten full-frame breeds. Also the PSNR of the preprocessed 224x224 arrays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import MOBILENET_WEIGHTS, REPO, phone_jpegs

from labeler.model.preprocessing import PreprocessingConfig, preprocess_image
from labeler.photos.decoding import decode_image
from tests.helpers import SHARED

SAMPLE = SHARED / "data" / "fullframe-sample"
CALIBRATION = SHARED / "data" / "fullframe-calibration"
STANFORD = SHARED / "data" / "stanford-dogs-train"

Labeller = Callable[[np.ndarray], np.ndarray]  # uint8 (n, h, w, c) -> probabilities


def photos_of(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(root.glob("*/*.JPEG"))]


def ms_per_photo(
    rows: Sequence[tuple[str, Callable[[bytes], object]]], photos: Sequence[bytes], repeat: int = 3
) -> dict[str, float]:
    """Median milliseconds per photo of each way, interleaved photo by photo so that load from
    other processes falls on every way alike."""
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _, fn in rows:
        fn(photos[0])  # warm-up
    for _ in range(repeat):
        for data in photos:
            for name, fn in rows:
                t0 = time.perf_counter()
                fn(data)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def prepared(photos: Sequence[bytes], prep: PreprocessingConfig, reduced: bool) -> np.ndarray:
    size = prep.image_size if reduced else None
    return np.stack(
        [preprocess_image(decode_image(data, target_size=size), prep) for data in photos]
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def artifact_labeller(path: Path) -> tuple[str, PreprocessingConfig, Labeller]:
    from labeler.model.classifier import Classifier
    from labeler.model.preprocessing import finish_batch

    clf = Classifier.load(path, runtime="keras")
    prep = clf.artifact.preprocessing

    def label(x: np.ndarray) -> np.ndarray:
        return clf.predict_probabilities(finish_batch(x, prep))

    return clf.artifact.version, prep, label


def probe_labeller() -> tuple[str, PreprocessingConfig, Labeller]:
    """MobileNetV2 (shared ImageNet weights) + a logistic head on the ten full-frame breeds."""
    import keras

    prep = PreprocessingConfig(image_size=(224, 224))
    backbone = keras.applications.MobileNetV2(
        weights=str(MOBILENET_WEIGHTS), include_top=False, input_shape=(224, 224, 3), pooling="avg"
    )

    def features(x: np.ndarray) -> np.ndarray:
        return np.asarray(
            backbone.predict(x.astype(np.float32) / 127.5 - 1, batch_size=32, verbose=0)
        )

    breeds = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
    x_train, y_train = [], []
    for index, breed in enumerate(breeds):
        for path in sorted((STANFORD / breed).glob("*"))[:100]:
            x_train.append(preprocess_image(decode_image(path.read_bytes()), prep))
            y_train.append(index)
    feats = features(np.stack(x_train))
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((feats.shape[1],)), keras.layers.Dense(len(breeds))])
    head.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    head.fit(feats, np.array(y_train), epochs=60, batch_size=64, verbose=0)

    def label(x: np.ndarray) -> np.ndarray:
        logits = np.asarray(head.predict(features(x), verbose=0))
        exp = np.exp(logits - logits.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    return "mobilenetv2-probe (10 breeds)", prep, label


def agreement(label: Labeller, prep: PreprocessingConfig, photos: Sequence[bytes]) -> str:
    """Top-1 agreement, reduced vs full decoding; for scale, a 1-pixel crop of the full decode
    on the same photos, and how close the flipped photos' top two classes were."""
    full = prepared(photos, prep, reduced=False)
    reduced = prepared(photos, prep, reduced=True)
    changed = ~np.all(full == reduced, axis=tuple(range(1, full.ndim)))
    n_changed = int(changed.sum())
    if not n_changed:
        return f"{len(photos)}/{len(photos)} = 100.0% (no input differs after preprocessing)"
    probs_full, probs_reduced = label(full[changed]), label(reduced[changed])
    cropped = prepared_crop(photos, prep, changed)
    flips = probs_full.argmax(1) != probs_reduced.argmax(1)
    crop_flips = probs_full.argmax(1) != label(cropped).argmax(1)
    top2 = np.sort(probs_full, 1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    agree = len(photos) - int(flips.sum())
    detail = (
        f"median top-2 margin of the flipped {np.median(margins[flips]):.3f} "
        f"(all: {np.median(margins):.3f})"
        if flips.any()
        else "no flips"
    )
    return (
        f"{agree}/{len(photos)} = {agree / len(photos):.1%} ({n_changed} inputs differ; "
        f"a 1-px crop flips {int(crop_flips.sum())} of them; {detail})"
    )


def prepared_crop(
    photos: Sequence[bytes], prep: PreprocessingConfig, which: np.ndarray
) -> np.ndarray:
    """The full decode less its first row and column: a change nobody would call a new photo."""
    return np.stack(
        [
            preprocess_image(decode_image(data)[1:, 1:], prep)
            for data, keep in zip(photos, which, strict=True)
            if keep
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phones", type=int, default=60, help="12 MP photos to generate")
    parser.add_argument("--timed", type=int, default=40, help="of which timed (3 rounds)")
    parser.add_argument("--model", type=Path, action="append", default=[], help="artifact dir")
    parser.add_argument("--no-probe", action="store_true", help="skip the MobileNetV2 probe")
    args = parser.parse_args()

    t0 = time.perf_counter()
    phones = phone_jpegs(args.phones)
    print(
        f"generated {len(phones)} 4032x3024 JPEGs in {time.perf_counter() - t0:.0f} s", flush=True
    )
    sample, calibration = photos_of(SAMPLE), photos_of(CALIBRATION)

    print(
        f"\n## decode time, {min(args.timed, len(phones))} 12 MP JPEGs (ms per photo, one thread)"
    )
    prep224 = PreprocessingConfig(image_size=(224, 224))
    rows = [
        ("full decode", lambda d: decode_image(d)),
        ("reduced decode for 224", lambda d: decode_image(d, target_size=(224, 224))),
        ("reduced decode for 64", lambda d: decode_image(d, target_size=(64, 64))),
        ("full decode + resize 224", lambda d: preprocess_image(decode_image(d), prep224)),
        (
            "reduced decode + resize 224",
            lambda d: preprocess_image(decode_image(d, target_size=(224, 224)), prep224),
        ),
    ]
    timings = ms_per_photo(rows, phones[: args.timed])
    base = timings["full decode"]
    for name, ms in timings.items():
        print(f"| {name} | {ms:.1f} ms | {base / ms:.1f}x |")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (1 min)", flush=True)
    shape = decode_image(phones[0], target_size=(224, 224)).shape
    print(f"reduced decode for 224 gives {shape[1]}x{shape[0]} from 4032x3024")

    full = prepared(phones, prep224, reduced=False)
    reduced = prepared(phones, prep224, reduced=True)
    values = sorted(psnr(a, b) for a, b in zip(full, reduced, strict=True))
    print(
        f"\nPSNR of preprocessed 224x224 inputs, reduced vs full (12 MP): "
        f"min {values[0]:.1f} dB, median {statistics.median(values):.1f} dB"
    )

    models = [
        artifact_labeller(p.parent) for p in sorted((REPO / "models").glob("*/metadata.json"))
    ]
    models += [artifact_labeller(p) for p in args.model]
    if not args.no_probe:
        models.append(probe_labeller())
    print("\n## top-1 agreement, reduced vs full decoding")
    for name, prep, label in models:
        size = "x".join(map(str, prep.image_size))
        print(f"### {name} (input {size})", flush=True)
        print(f"| full-frame sample (200) | {agreement(label, prep, sample)} |", flush=True)
        print(f"| full-frame calibration | {agreement(label, prep, calibration)} |", flush=True)
        print(
            f"| 12 MP from sample ({len(phones)}) | {agreement(label, prep, phones)} |", flush=True
        )


if __name__ == "__main__":
    main()
