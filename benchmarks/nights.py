"""Nights of a shelter replayed through the product: label, staff review, adapt, repeat.

A folder tree of ``<synset>-<breed>/`` photos is shuffled (seeded) and cut into nights. Each
night its photos appear in an SQLite source table, ``labeler run-once`` labels them, staff
answer the review queue from the folder names (``reviewed_breed``), and ``labeler adapt
--apply`` writes an adapted model that the next night uses (when adapt refuses, the model
stays). Reported per night: coverage (share auto-labelled) and precision of the auto-labels
with a 95 % Wilson interval, and the model version that labelled it.

    .venv/bin/python benchmarks/nights.py --data ../shared/data/fullframe-calibration --nights 4
    .venv/bin/python benchmarks/nights.py --data ../shared/data/fullframe-sample \
        --rare ../shared/data/stanford-dogs-train --rare-per-night 30

``--rare`` mixes photos of breeds the main tree does not have into every night (the shelter's
long tail), and reports how many of them were auto-labelled and how many of those right.

``--shelter-record`` runs it as a shelter like ASM3 does: every photo is an animal whose own
record (``BreedID``, ``BreedName``; 0 is undecided) labeler writes through a breed map of the
model's labels, and staff answer the review queue in their own screens (the record), which
the next pass reads as their decisions. ``--outside BREED`` (with ``--shelter-record``) makes
one breed of the tree a breed the model has no class for: its column is taken out of every
answer the model gives, and staff name it in the record as a breed the map does not have, as
they would a pit bull type or a shiba inu. Reported: how many of its photos were
auto-labelled (every one wrong), and the look-alikes ``labeler adapt`` found.

    .venv/bin/python benchmarks/nights.py --data ../shared/data/fullframe-calibration \
        --shelter-record --outside English_foxhound
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select, update  # noqa: E402

from labeler.core.domain import NOT_A_BREED  # noqa: E402
from labeler.core.paths import default_model_dir  # noqa: E402
from labeler.decide.thresholds import wilson_interval  # noqa: E402
from labeler.model.artifact import load_artifact  # noqa: E402
from labeler.model.classifier import Classifier  # noqa: E402
from labeler.service.cli import main as labeler  # noqa: E402
from labeler.store.schema import LABELLED, NEEDS_REVIEW, photo  # noqa: E402
from training.data import IMAGE_SUFFIXES  # noqa: E402


def photos(root: Path) -> list[tuple[str, str]]:
    """(path under root, breed) for every photo of the tree."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        breed = folder.name.partition("-")[2] or folder.name
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path.relative_to(root).as_posix(), breed))
    return found


def quiet(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = labeler(list(argv))
    return code, out.getvalue()


# What staff type in the record for a breed the breed map does not have.
OUTSIDE_ID = 9999


class WithoutBreed:
    """A runtime whose answers never hold one column: a breed the model has no class for."""

    def __init__(self, inner: Any, column: int) -> None:
        self.inner, self.column = inner, column

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities, features = self.inner.predict_with_features(batch)
        kept = np.array(probabilities, dtype=np.float64)
        kept[:, self.column] = 0.0
        return kept / kept.sum(axis=1, keepdims=True), features


def hide_from_model(label: str) -> None:
    """Every classifier this process loads answers as if ``label`` were not one of its classes
    (labeler runs in this process: ``run-once`` and ``adapt`` see the same answers)."""
    scored = Classifier._scored

    def without(self: Classifier, batch: np.ndarray) -> tuple[np.ndarray, list[bytes] | None]:
        if not isinstance(self.runtime, WithoutBreed):
            self.runtime = WithoutBreed(self.runtime, self.artifact.labels.index(label))
        return scored(self, batch)

    Classifier._scored = without  # type: ignore[method-assign]


def write_breed_map(path: Path, labels: tuple[str, ...]) -> dict[str, int]:
    """A breed map of every breed label (``BreedID`` from 1, ``BreedName`` the label's words),
    like a shelter's list of breeds; returns each label's id."""
    ids = {label: k for k, label in enumerate(labels, start=1) if label not in NOT_A_BREED}
    rows = [f"{label},{k},{label.replace('_', ' ')}" for label, k in ids.items()]
    path.write_text("label,BreedID,BreedName\n" + "\n".join(rows) + "\n")
    return ids


def replay(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.outside is not None and not args.shelter_record:
        raise SystemExit("--outside needs --shelter-record: staff name the breed in the record")
    items = [(args.data / path, breed) for path, breed in photos(args.data)]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(items))
    nights = [list(n) for n in np.array_split(order, args.nights)]
    rare: set[int] = set()
    if args.rare is not None:
        # Photos of breeds the main tree does not have: a shelter's long tail, which a prior
        # learned from its common breeds must not swallow.
        common = {breed for _, breed in items}
        others = [(args.rare / p, b) for p, b in photos(args.rare) if b not in common]
        picked = rng.choice(len(others), size=args.rare_per_night * args.nights, replace=False)
        for k, night in enumerate(nights):
            for j in picked[k * args.rare_per_night : (k + 1) * args.rare_per_night]:
                rare.add(len(items))
                night.append(len(items))
                items.append(others[int(j)])
    results = []
    # The photo root: the folder both trees are under (paths in the table are relative to it).
    trees = [args.data.resolve()] + ([args.rare.resolve()] if args.rare is not None else [])
    root = Path(os.path.commonpath([str(t) for t in trees]))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/shelter.db"
        engine = create_engine(url)
        record: list[Column[Any]] = (
            [Column("BreedID", Integer, nullable=False, default=0), Column("BreedName", Text)]
            if args.shelter_record
            else []
        )
        source = Table(
            "animals",
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("photo", Text),
            *record,
        )
        source.metadata.create_all(engine)
        model = Path(args.model or default_model_dir())
        labels = load_artifact(model).labels
        if args.outside is not None:
            if args.outside not in labels:
                raise SystemExit(f"--outside {args.outside}: not one of the model's labels")
            if args.outside not in {breed for _, breed in items}:
                raise SystemExit(f"--outside {args.outside}: no photos of it under --data")
            hide_from_model(args.outside)
        breed_ids: dict[str, int] = {}
        tree_breeds = sorted({breed for _, breed in items})
        if args.shelter_record:
            breed_ids = write_breed_map(Path(tmp) / "breeds.csv", labels)
            os.environ.update(
                {
                    "LABELER_SOURCE_GROUP_COLUMN": "id",
                    "LABELER_TARGET_TABLE": "animals",
                    "LABELER_TARGET_KEY_COLUMN": "id",
                    "LABELER_BREED_MAP": str(Path(tmp) / "breeds.csv"),
                    "LABELER_TARGET_UNDECIDED": "BreedID=0",
                }
            )
        os.environ.update(
            {
                "LABELER_DATABASE_URL": url,
                "LABELER_SOURCE_TABLE": "animals",
                "LABELER_SOURCE_IMAGE_COLUMN": "photo",
                "LABELER_IMAGE_KIND": "path",
                "LABELER_PHOTO_ROOT": str(root),
                "LABELER_AUDIT_SHARE": "0",
                "LABELER_MODEL_DIR": str(model),
            }
        )
        code, out = quiet("db", "upgrade")
        if code:
            raise SystemExit(f"db upgrade failed: {out}")
        for number, night in enumerate(nights, start=1):
            truth = {int(i) + 1: items[int(i)][1] for i in night}
            with engine.begin() as conn:
                conn.execute(
                    source.insert(),
                    [
                        {"id": i, "photo": items[i - 1][0].resolve().relative_to(root).as_posix()}
                        for i in truth
                    ],
                )
            code, out = quiet("run-once")
            if code:
                raise SystemExit(f"night {number}: run-once failed: {out[-2000:]}")
            with engine.connect() as conn:
                rows = conn.execute(
                    select(photo.c.photo_id, photo.c.status, photo.c.breed, photo.c.model_version)
                ).all()
            tonight = [r for r in rows if int(r.photo_id) in truth]
            auto = [r for r in tonight if r.status == LABELLED]
            right = sum(r.breed == truth[int(r.photo_id)] for r in auto)
            review = [r for r in tonight if r.status == NEEDS_REVIEW]
            with engine.begin() as conn:
                for r in review:  # staff answer the queue from the folder names
                    breed = truth[int(r.photo_id)]
                    if args.shelter_record:
                        # In their own screens: the record, read back by the next pass. A
                        # breed the map has no row for (the wild dogs, the breed outside the
                        # model) gets a shelter id of its own.
                        known = breed_ids.get(breed) if breed != args.outside else None
                        conn.execute(
                            update(source)
                            .where(source.c.id == int(r.photo_id))
                            .values(
                                BreedID=known or OUTSIDE_ID + tree_breeds.index(breed),
                                BreedName=breed.replace("_", " ")
                                + ("" if known else " (not in the model)"),
                            )
                        )
                    else:
                        conn.execute(
                            update(photo)
                            .where(photo.c.photo_id == r.photo_id)
                            .values(reviewed_breed=breed)
                        )
            if args.shelter_record:
                code, out = quiet("run-once")  # the pass that reads staff's decisions
                if code:
                    raise SystemExit(f"night {number}: reading decisions failed: {out[-2000:]}")
            rare_auto = [r for r in auto if int(r.photo_id) - 1 in rare]
            rare_right = sum(r.breed == truth[int(r.photo_id)] for r in rare_auto)
            interval = wilson_interval(right, len(auto))
            result = {
                "night": number,
                "photos": len(tonight),
                "model": tonight[0].model_version if tonight else None,
                "auto": len(auto),
                "coverage": len(auto) / len(tonight) if tonight else 0.0,
                "precision": right / len(auto) if auto else None,
                "interval": None if interval is None else (interval.low, interval.high),
                "rare": sum(1 for i in truth if i - 1 in rare),
                "rare_auto": len(rare_auto),
                "rare_right": rare_right,
                "outside": sum(1 for b in truth.values() if b == args.outside),
                "outside_auto": sum(truth[int(r.photo_id)] == args.outside for r in auto),
                # The other breeds alone: what the look-alikes cost the photos the model knows.
                "known_coverage": sum(truth[int(r.photo_id)] != args.outside for r in auto)
                / max(1, sum(1 for b in truth.values() if b != args.outside)),
            }
            output = Path(tmp) / f"model-night-{number}"
            refit = () if args.refit else ("--no-refit",)
            code, out = quiet("adapt", *refit, "--apply", "--output", str(output))
            result["adapt"] = "applied" if code == 0 else out.strip().splitlines()[-1][:200]
            head = [line for line in out.splitlines() if line.startswith("head refitted")]
            if code == 0 and head:
                result["adapt"] += ", head " + head[0].partition(": ")[2]
            found = [
                line.split(";")[0] for line in out.splitlines() if line.startswith("look-alike:")
            ]
            if found:
                result["adapt"] += "; " + "; ".join(found)
            if code == 0:
                os.environ["LABELER_MODEL_DIR"] = str(output)
            results.append(result)
            print(render(result), flush=True)
        engine.dispose()
    return results


def render(r: dict[str, object]) -> str:
    precision = "n/a" if r["precision"] is None else f"{r['precision']:.3f}"
    interval = r["interval"]
    span = "" if interval is None else f" ({interval[0]:.3f}-{interval[1]:.3f})"  # type: ignore[index]
    rare = (
        f"; rare breeds: {r['rare_auto']} of {r['rare']} auto-labelled, {r['rare_right']} right"
        if r["rare"]
        else ""
    )
    outside = (
        f"; outside the model: {r['outside_auto']} of {r['outside']} auto-labelled, the other "
        f"breeds' coverage {r['known_coverage']:.3f}"
        if r["outside"]
        else ""
    )
    return (
        f"night {r['night']}: {r['photos']} photos, model {r['model']}: coverage "
        f"{r['coverage']:.3f} ({r['auto']}), precision {precision}{span}{rare}{outside}; "
        f"adapt: {r['adapt']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a <synset>-<breed> tree")
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--model", type=Path, default=None, help="default: the packaged model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rare", type=Path, default=None, help="a tree with other breeds, mixed into each night"
    )
    parser.add_argument("--rare-per-night", type=int, default=30)
    parser.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="adapt the breed frequencies only (labeler adapt --no-refit), for comparison",
    )
    parser.add_argument(
        "--shelter-record",
        action="store_true",
        help="one animal per photo, its breed written to its record; staff answer there",
    )
    parser.add_argument(
        "--outside",
        default=None,
        metavar="BREED",
        help="a breed of the tree the model answers as if it had no class for it",
    )
    replay(parser.parse_args())


if __name__ == "__main__":
    main()
