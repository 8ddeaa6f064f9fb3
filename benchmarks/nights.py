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
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select, update  # noqa: E402

from labeler.core.paths import default_model_dir  # noqa: E402
from labeler.decide.thresholds import wilson_interval  # noqa: E402
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


def replay(args: argparse.Namespace) -> list[dict[str, object]]:
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
        source = Table(
            "animals",
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("photo", Text),
        )
        source.metadata.create_all(engine)
        model = Path(args.model or default_model_dir())
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
                    conn.execute(
                        update(photo)
                        .where(photo.c.photo_id == r.photo_id)
                        .values(reviewed_breed=truth[int(r.photo_id)])
                    )
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
            }
            output = Path(tmp) / f"model-night-{number}"
            refit = () if args.refit else ("--no-refit",)
            code, out = quiet("adapt", *refit, "--apply", "--output", str(output))
            result["adapt"] = "applied" if code == 0 else out.strip().splitlines()[-1][:200]
            head = [line for line in out.splitlines() if line.startswith("head refitted")]
            if code == 0 and head:
                result["adapt"] += ", head " + head[0].partition(": ")[2]
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
    return (
        f"night {r['night']}: {r['photos']} photos, model {r['model']}: coverage "
        f"{r['coverage']:.3f} ({r['auto']}), precision {precision}{span}{rare}; "
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
    replay(parser.parse_args())


if __name__ == "__main__":
    main()
