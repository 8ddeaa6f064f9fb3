"""`labeler demo`: a small ASM3-like shelter database on SQLite, labelled in one pass, then shown.

The shelter keeps the breed on the animal (``animal.BreedID``/``BreedName``, intake's placeholder
"Mixed Breed"), several photos per animal as base64 in ``dbfs``, and one dog whose breed staff
already set. After one per-animal pass the demo prints the animal records, the per-animal review
queue and the untouched staff decision.

Works offline. Uses the sample photos in ``../shared`` when they are there, otherwise generated
pictures; uses the default model of the settings when it exists, otherwise an untrained one, and
says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, inspect

from labeler.config.settings import Settings, load_settings
from labeler.demo import shelter as demo_shelter
from labeler.model.artifact import ArtifactError, load_artifact, save_artifact
from labeler.model.preprocessing import PreprocessingConfig
from labeler.service.app import Service
from labeler.store import animals, migrate
from labeler.store.engine import session_factory
from labeler.store.schema import LABELLED, NEEDS_REVIEW

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "fullframe-sample"
BREEDS_TSV = REPO_ROOT.parent / "shared" / "data" / "breeds.tsv"
PER_BREED = 3  # photos per breed, all of one dog: each dog has several photos


def _sample_photos(folder: Path | None, demo_dir: Path) -> tuple[list[tuple[str, Path]], str]:
    """Return ``(breed folder, photo)`` pairs and where they came from."""
    source = folder or (SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else None)
    if source is not None:
        if not source.is_dir():
            raise SystemExit(f"demo: photo folder {source} does not exist")
        pairs: list[tuple[str, Path]] = []
        for breed_dir in sorted(p for p in source.iterdir() if p.is_dir()) or [source]:
            files = sorted(
                f for f in breed_dir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
            pairs += [(breed_dir.name, f) for f in files[:PER_BREED]]
        if pairs:
            return pairs, f"{len(pairs)} sample photos from {source}"
    generated = demo_dir / "photos"
    generated.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(12):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (240, 320, 3)), 0, 255).astype(np.uint8)
        path = generated / f"generated_{i:02d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        pairs.append(("generated", path))
    return pairs, "12 generated pictures (no sample photos found: these are not dogs)"


def _untrained_artifact(directory: Path) -> Path:
    """A randomly initialised model in the real format, so the whole pass can still run."""
    import keras  # only for this fallback: a serving install has no Keras

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


def _model_dir() -> Path:
    """LABELER_MODEL_DIR, else the settings' default model, found from the repository too."""
    if os.environ.get("LABELER_MODEL_DIR"):
        return Path(os.environ["LABELER_MODEL_DIR"])
    default = Path(Settings.model_fields["model_dir"].get_default(call_default_factory=True))
    if default.is_absolute() or default.exists():
        return default
    return REPO_ROOT / default


def run_demo(demo_dir: Path, *, photos: Path | None = None, reset: bool = True) -> int:
    demo_dir.mkdir(parents=True, exist_ok=True)
    database = demo_dir / "shelter.db"
    if reset and database.exists():
        database.unlink()
    pairs, origin = _sample_photos(photos, demo_dir)

    model_dir = _model_dir()
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
    if not database.exists() or not inspect(engine).has_table("animal"):
        with engine.begin() as conn:
            demo_shelter.create_schema(conn)
            demo_shelter.seed(conn, pairs, storage="base64", photos_per_dog=PER_BREED)
            demo_shelter.create_photo_view(conn, "base64")
    with engine.connect() as conn:
        before = {a["id"]: a for a in demo_shelter.animals(conn)}
    engine.dispose()

    values = demo_shelter.labeler_settings(url, "base64", "sqlite")
    settings = load_settings(
        **{k.removeprefix("LABELER_").lower(): v for k, v in values.items()},
        model_dir=model_dir,
        batch_size=16,
    )
    service = Service.build(settings)
    migrate.upgrade(service.engine)
    artifact = service.classifier.artifact
    dogs = sum(1 for a in before.values() if a["species"] == "Dog")
    print(
        f"database: {database}, an ASM3-like shelter: {len(before)} animals ({dogs} dogs), "
        f"photos as base64 in dbfs ({origin})"
    )
    print(f"model:    {artifact.describe()}")
    print(f"worth:    {_worth(artifact.metadata.get('metrics') or {})}")
    print(
        f"decision: review below confidence {service.thresholds.review_threshold:.2f}"
        f" or top-2 margin {service.thresholds.review_margin:.2f}; an animal whose photos"
        " disagree, or whose breed is not in ASM3's list, goes to review too"
    )
    summary = service.run_pass(command="demo")
    print(f"\n{summary.line()}\n")

    with session_factory(service.engine)() as session:
        groups = {str(g["group_id"]): g for g in animals.group_rows(session)}
        queue = animals.group_review_queue(session, limit=50)
    with service.engine.connect() as conn:
        after = demo_shelter.animals(conn)
    service.engine.dispose()

    print("The animal records (table animal; BreedID and BreedName are what ASM3 shows):")
    print(f"  {'ID':>3}  {'code':<9} {'name':<11} {'species':<7} {'breed':<36} labeler")
    for a in after:
        breed = f"{a['breed_id']:>3} {a['breed_name']}"
        print(
            f"  {a['id']:>3}  {a['code']:<9} {a['name']:<11} {a['species']:<7} {breed:<36} "
            f"{_what_labeler_did(a, groups.get(str(a['id'])))}"
        )
    print(f"\nReview queue per animal, view labeler_group_review_queue ({len(queue)}):")
    for q in queue:
        # ASM3's name first, as staff know it; the model's label beside it (an unmapped label
        # has no ASM3 name).
        guesses = " | ".join(
            f"{q[n] or '(not in the map)'} ({q[b]}) {q[c]:.0%}"
            for n, b, c in (
                ("breed_name", "breed", "confidence"),
                ("breed_name_2", "breed_2", "confidence_2"),
                ("breed_name_3", "breed_3", "confidence_3"),
            )
            if q[b] is not None
        )
        print(f"  animal {q['group_id']:>3} ({q['context']}): {guesses}")
        print(f"      why: {q['review_reason']}; photos (media ids): {q['photo_ids']}")
    # A dog that did not have intake's placeholder before the pass: its breed came from staff.
    for a in after:
        if a["species"] != "Dog" or before[a["id"]]["breed_id"] == demo_shelter.MIXED_BREED_ID:
            continue
        was = before[a["id"]]
        kept = (a["breed_id"], a["breed_name"]) == (was["breed_id"], was["breed_name"])
        answer = groups.get(str(a["id"]))
        recorded = (
            "labeler recorded it as a staff decision and will never write to that record"
            if answer is not None and answer["staff_values"]
            else "labeler has not recorded it yet"
        )
        print(
            f"\nStaff decision: {a['name']} (ID {a['id']}) was set to {was['breed_name']} by staff "
            f"before the pass; {'it is untouched' if kept else 'IT WAS CHANGED'}; {recorded}."
        )
    for a in after:
        if a["species"] == "Dog" and str(a["id"]) not in groups:
            print(f"{a['name']} (ID {a['id']}) has no photo: it keeps {a['breed_name']}.")
    print(
        f"\nExplore it: LABELER_DATABASE_URL={url} labeler status   "
        f"(or open {database} in any SQLite browser; docs/shelters/asm3.md is the real recipe)"
    )
    return 0


def _what_labeler_did(animal: dict[str, Any], group: dict[str, Any] | None) -> str:
    if animal["species"] != "Dog":
        return "not a dog: filtered out"
    if group is None:
        return "no photos: nothing to label"
    if group["staff_values"]:
        return "staff decision, left untouched"
    confidence = f" {group['confidence']:.0%}" if group["confidence"] is not None else ""
    photos = f"{group['photos_used']} photo{'s' if group['photos_used'] != 1 else ''}"
    if group["status"] == LABELLED and group["written_values"]:
        return f"wrote {group['breed']}{confidence} from {photos}"
    if group["status"] == NEEDS_REVIEW:
        return f"to review: {group['breed']}{confidence} from {photos}"
    return f"{group['status']}: {group['breed'] or ''}{confidence}"


def _worth(metrics: dict[str, Any]) -> str:
    """What the model's labels are worth, in the words a volunteer would use."""
    full = metrics.get("fullframe") or {}
    rule = full.get("shipped_rule_cross_validated") or full.get("shipped_rule") or {}
    if "top1" in full and "coverage" in rule:
        # Full frames are what a shelter stores: the honest measure (crops flatter the model).
        text = (
            f"on full-frame photos never trained on, first guess right on {full['top1']:.0%}, "
            f"right breed among its top 3 on {full.get('top3', 0):.0%}; it labels "
            f"{rule['coverage']:.0%} of photos on its own"
        )
        if rule.get("precision") is not None:
            low, high = rule.get("precision_interval_95") or (None, None)
            interval = f" (95% interval {low:.1%}-{high:.1%})" if low is not None else ""
            text += f", {rule['precision']:.1%} of them right{interval}"
        return text + ", and sends the rest to review"
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
