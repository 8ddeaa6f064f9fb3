"""`labeler demo`: a small shelter database on SQLite, labelled in one pass, then shown.

Works offline. Uses the sample photos in ``../shared`` when they are there, otherwise generated
pictures; uses the configured model when it exists, otherwise an untrained one, and says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Column, Double, Integer, MetaData, String, Table, create_engine

from labeler import migrate
from labeler import repository as repo
from labeler.app import Service
from labeler.artifact import ArtifactError, load_artifact
from labeler.db import session_factory
from labeler.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "fullframe-sample"
BREEDS_TSV = REPO_ROOT.parent / "shared" / "data" / "breeds.tsv"
PER_BREED = 3


def _sample_photos(folder: Path | None, demo_dir: Path) -> tuple[Path, list[str], str]:
    """Return (photo root, relative paths, where they came from)."""
    source = folder or (SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else None)
    if source is not None:
        if not source.is_dir():
            raise SystemExit(f"demo: photo folder {source} does not exist")
        photos: list[str] = []
        for breed_dir in sorted(p for p in source.iterdir() if p.is_dir()) or [source]:
            files = sorted(
                f for f in breed_dir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
            photos += [str(f.relative_to(source)) for f in files[:PER_BREED]]
        if photos:
            return source, photos, f"{len(photos)} sample photos from {source}"
    generated = demo_dir / "photos"
    generated.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (240, 320, 3)), 0, 255).astype(np.uint8)
        name = f"generated_{i:02d}.jpg"
        Image.fromarray(pixels).save(generated / name, quality=90)
        names.append(name)
    return generated, names, "12 generated pictures (no sample photos found: these are not dogs)"


def _untrained_artifact(directory: Path) -> Path:
    """A randomly initialised model in the real format, so the whole pass can still run."""
    import keras

    from labeler.artifact import save_artifact
    from labeler.preprocessing import PreprocessingConfig

    labels = [f"breed_{i:03d}" for i in range(120)]
    if BREEDS_TSV.is_file():
        labels = [line.split("\t")[2] for line in BREEDS_TSV.read_text().splitlines()[1:]]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(labels), activation="softmax")(x)
    save_artifact(
        directory,
        keras.Model(inputs, outputs),
        labels,
        PreprocessingConfig(image_size=(64, 64)),
        name="untrained-demo",
        kind="untrained",
        quality_note="UNTRAINED random weights: its breeds are meaningless; "
        "train one with `python -m training train` (see docs/training.md)",
    )
    return directory


def run_demo(demo_dir: Path, *, photos: Path | None = None, reset: bool = True) -> int:
    demo_dir.mkdir(parents=True, exist_ok=True)
    database = demo_dir / "shelter.db"
    if reset and database.exists():
        database.unlink()
    root, files, origin = _sample_photos(photos, demo_dir)

    model_dir = Path(os.environ.get("LABELER_MODEL_DIR", REPO_ROOT / "models" / "baseline-cnn"))
    try:
        load_artifact(model_dir)
    except ArtifactError as exc:
        print(f"! no usable model at {model_dir} ({exc});")
        print("! using an UNTRAINED model so the pass can still be shown")
        fallback = demo_dir / "untrained-model"
        shutil.rmtree(fallback, ignore_errors=True)
        model_dir = _untrained_artifact(fallback)

    url = f"sqlite:///{database}"
    engine = create_engine(url)
    metadata = MetaData()
    animals = Table(
        "animals",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(64)),
        Column("species", String(16)),
        Column("photo_path", String(512)),
        Column("breed", String(128)),
        Column("breed_confidence", Double()),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        if reset:
            rows = [
                {"id": i, "name": f"dog #{i}", "species": "dog", "photo_path": f}
                for i, f in enumerate(files, start=1)
            ]
            rows.append({"id": 900, "name": "Felix", "species": "cat", "photo_path": files[0]})
            rows.append({"id": 901, "name": "Ghost", "species": "dog", "photo_path": "lost.jpg"})
            conn.execute(animals.insert(), rows)
    engine.dispose()

    settings = Settings(
        database_url=url,  # type: ignore[arg-type]
        source_table="animals",
        source_image_column="photo_path",
        image_kind="path",
        photo_root=root,
        source_filter_column="species",
        source_filter_values=["dog"],
        writeback_breed_column="breed",
        writeback_confidence_column="breed_confidence",
        model_dir=model_dir,
        batch_size=16,
    )
    service = Service.build(settings)
    migrate.upgrade(service.engine)
    artifact = service.classifier.artifact
    print(f"database: {database} ({origin}; one cat, filtered out; one missing photo)")
    print(f"model:    {artifact.describe()}")
    print(f"worth:    {_worth(artifact.metadata.get('metrics') or {})}")
    print(
        f"decision: review below confidence {service.thresholds.review_threshold:.2f}"
        f" or top-2 margin {service.thresholds.review_margin:.2f}"
    )
    summary = service.run_pass(command="demo")
    print(f"\n{summary.line()}\n")

    with session_factory(service.engine)() as session:
        labelled = repo.labelled_rows(session, limit=50)
        queue = repo.review_queue(session, limit=50)
        failed = repo.failed_rows(session)
    print(f"Labelled automatically ({len(labelled)}):")
    for r in labelled:
        print(f"  {r['photo_id']:>4}  {r['breed']:<30} {r['confidence']:6.1%}  {r['photo_ref']}")
    print(f"\nReview queue, view labeler_review_queue ({len(queue)}):")
    for r in queue:
        print(
            f"  {r['photo_id']:>4}  {r['breed']} {r['confidence']:.1%} | {r['breed_2']} "
            f"{r['confidence_2']:.1%} | {r['breed_3']} {r['confidence_3']:.1%}  {r['photo_ref']}"
        )
    print(f"\nFailed ({len(failed)}):")
    for r in failed:
        print(f"  {r['photo_id']:>4}  {r['last_error']}")
    print(
        f"\nExplore it: LABELER_DATABASE_URL={url} labeler status   "
        f"(or open {database} in any SQLite browser)"
    )
    service.engine.dispose()
    return 0


def _worth(metrics: dict[str, Any]) -> str:
    """What the model's labels are worth, in the words a volunteer would use."""
    if "top1" not in metrics:
        return "no held-out measurements: treat every breed it gives as a guess"
    text = (
        f"first guess right on {metrics['top1']:.0%} of held-out photos, "
        f"right breed among its top 3 on {metrics.get('top3', 0):.0%}"
    )
    review = metrics.get("review") or {}
    share, accuracy = review.get("test_review_share"), review.get("test_auto_accuracy")
    if share is not None and accuracy is not None:
        text += f"; {share:.0%} go to review, the rest are {accuracy:.0%} right"
    elif share == 1.0:
        text += "; too weak to label anything on its own, so every photo goes to review"
    return text
