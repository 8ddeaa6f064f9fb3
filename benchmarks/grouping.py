"""How to combine an animal's photos (labeler.decide.grouping): per-animal top-1 of several rules.

A linear probe on ImageNet MobileNetV2 features (the shared weights) is trained on a few
Stanford Dogs photos of the 10 breeds in the full-frame sample; its probabilities for the 200
full-frame photos are then grouped into fake animals (N photos of one breed, 50 seeded
shuffles) and each rule names the animal's breed. "stored top-3" is what labeler combines when
a photo row keeps only its best labels (it keeps 10). Usage:

    python -m benchmarks.grouping [--train-per-breed 8]
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from labeler.decide.grouping import combine, parse_scores, scores_json
from labeler.model.classifier import Prediction
from tests.helpers import FULLFRAME, SHARED

WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def _features(files: list[Path]) -> np.ndarray:
    import keras
    from PIL import Image

    base = keras.applications.MobileNetV2(
        weights=str(WEIGHTS), include_top=False, input_shape=(224, 224, 3), pooling="avg"
    )

    def load(path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB").resize((224, 224))
        return keras.applications.mobilenet_v2.preprocess_input(np.asarray(image, np.float32))

    return np.concatenate(
        [
            base.predict(np.stack([load(f) for f in files[i : i + 32]]), verbose=0)
            for i in range(0, len(files), 32)
        ]
    )


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-per-breed", type=int, default=8)
    args = parser.parse_args()
    import keras

    photos = sorted(FULLFRAME.glob("*/*.JPEG"))
    breeds = sorted({f.parent.name for f in photos})
    labels = [b.split("-", 1)[1] for b in breeds]
    train, train_y = [], []
    for i, breed in enumerate(breeds):
        for f in sorted((SHARED / "data" / "stanford-dogs-train" / breed).glob("*"))[
            : args.train_per_breed
        ]:
            train.append(f)
            train_y.append(i)
    truth = np.array([breeds.index(f.parent.name) for f in photos])
    head = keras.Sequential(
        [keras.Input((1280,)), keras.layers.Dense(len(breeds), activation="softmax")]
    )
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(_features(train), np.array(train_y), epochs=60, batch_size=32, verbose=0)
    probs = head.predict(_features(photos), verbose=0).astype(np.float64)
    print(f"per-photo top-1 {np.mean(probs.argmax(1) == truth):.3f} ({len(photos)} photos)")

    def top(p: np.ndarray, k: int) -> Prediction:
        order = np.argsort(-p)[:k]
        return Prediction(tuple((labels[int(j)], float(p[j])) for j in order))

    stored = [parse_scores(str(i), scores_json(top(p, 3))) for i, p in enumerate(probs)]
    rules: dict[str, Callable[[list[int]], int]] = {
        "mean log-prob": lambda g: int(np.log(np.clip(probs[g], 1e-12, 1)).mean(0).argmax()),
        "mean log-prob, stored top-3": lambda g: labels.index(
            combine([s for i in g if (s := stored[i]) is not None]).label
        ),
        "mean probability": lambda g: int(probs[g].mean(0).argmax()),
        "most confident photo": lambda g: int(probs[g][probs[g].max(1).argmax()].argmax()),
        "majority vote": lambda g: Counter(int(probs[i].argmax()) for i in g).most_common(1)[0][0],
    }
    for n in (2, 3, 4):
        hits: Counter[str] = Counter()
        total = 0
        for seed in range(50):
            rng = np.random.default_rng(seed)
            for b in range(len(breeds)):
                idx = rng.permutation(np.where(truth == b)[0])
                for s in range(0, len(idx) - n + 1, n):
                    group = [int(i) for i in idx[s : s + n]]
                    total += 1
                    for name, rule in rules.items():
                        hits[name] += rule(group) == b
        print(f"{n} photos per animal ({total} fake animals):")
        for name in rules:
            print(f"  {name:<28} top-1 {hits[name] / total:.3f}")


if __name__ == "__main__":
    main()
