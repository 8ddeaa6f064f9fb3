"""The study's comparisons as one sweep over a small subset.

Each variant changes one thing against a common base (Adam, sparse cross-entropy, ReLU, batch
norm, flatten head, 32-64-64-64 filters, no equalization, no augmentation), so every row of the
table answers "what does this one choice do". Results go to ``<out>/results.{csv,md}`` with
bar charts, learning curves, and a confusion report of the best variant.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.models import BACKBONES
from training.options import config_values
from training.train import (
    DATA_OPTIONS,
    LOSSES,
    OPTIMIZERS,
    PREPROCESSING_OPTIONS,
    TrainConfig,
    TrainResult,
    run,
)

log = logging.getLogger(__name__)

GROUPS = (
    "preprocessing",
    "augmentation",
    "optimizer",
    "loss",
    "activation",
    "regularization",
    "head",
    "filters",
    "backbone",
)
ACTIVATIONS = ("relu", "elu", "selu", "leaky_relu", "gelu", "tanh", "sigmoid")


@dataclass(frozen=True)
class Variant:
    group: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def variants(
    groups: tuple[str, ...], backbone_weights: dict[str, str | None], backbone_size: tuple[int, int]
) -> list[Variant]:
    """The variants of each requested group, base first where it belongs to the group."""
    out: list[Variant] = []
    if "preprocessing" in groups:
        out += [
            Variant("preprocessing", "rgb"),
            Variant("preprocessing", "rgb+equalize", {"equalize": True}),
            Variant("preprocessing", "gray", {"grayscale": True}),
            Variant("preprocessing", "gray+equalize", {"grayscale": True, "equalize": True}),
            # Whitening on grayscale keeps the covariance matrix small enough to fit quickly.
            Variant("preprocessing", "gray+zca", {"grayscale": True, "whitening": "zca"}),
            Variant(
                "preprocessing",
                "gray+pca",
                {"grayscale": True, "whitening": "pca", "pca_components": 256},
            ),
        ]
    if "augmentation" in groups:
        out += [
            Variant("augmentation", "no augmentation"),
            Variant("augmentation", "augmentation", {"augment": True}),
        ]
    if "optimizer" in groups:
        out += [Variant("optimizer", o, {"optimizer": o}) for o in OPTIMIZERS]
    if "loss" in groups:
        out += [Variant("loss", loss, {"loss": loss}) for loss in LOSSES]
    if "activation" in groups:
        out += [Variant("activation", a, {"activation": a}) for a in ACTIVATIONS]
    if "regularization" in groups:
        out += [
            Variant("regularization", "batchnorm", {"normalization": "batchnorm"}),
            Variant("regularization", "dropout", {"normalization": "dropout"}),
            Variant("regularization", "neither", {"normalization": "none", "dropout": 0.0}),
        ]
    if "head" in groups:
        out += [
            Variant("head", "flatten", {"head": "flatten"}),
            Variant("head", "global pooling", {"head": "gap"}),
        ]
    if "filters" in groups:
        for f in ((16, 32, 32, 32), (32, 64, 64, 64), (64, 128, 128, 128)):
            out.append(Variant("filters", "-".join(map(str, f)), {"filters": f}))
    if "backbone" in groups:
        for name, weights in backbone_weights.items():
            out.append(
                Variant(
                    "backbone",
                    f"{name} ({'random' if weights is None else Path(weights).name})",
                    {
                        "model": "transfer",
                        "backbone": name,
                        "weights": weights,
                        "image_size": backbone_size,
                        "epochs": 40,
                    },
                )
            )
    return out


def parse_backbone_weights(specs: list[str]) -> dict[str, str | None]:
    """``NAME=WEIGHTS`` pairs; by default every backbone with ImageNet weights."""
    if not specs:
        return {name: "imagenet" for name in BACKBONES}
    out: dict[str, str | None] = {}
    for spec in specs:
        name, _, weights = spec.partition("=")
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}")
        out[name] = None if weights in ("", "none") else weights
    return out


def run_variants(base: TrainConfig, todo: list[Variant], out: Path) -> list[dict[str, Any]]:
    from training import plots

    rows: list[dict[str, Any]] = []
    best: tuple[float, TrainResult | None] = (-1.0, None)
    for i, v in enumerate(todo):
        slug = f"{i:02d}-{v.group}-{v.label}".replace(" ", "_").replace("/", "_")
        cfg = replace(base, run_dir=str(out / "runs" / slug), name=slug, **v.overrides)
        log.info("sweep %d/%d: %s / %s", i + 1, len(todo), v.group, v.label)
        start = time.perf_counter()
        row: dict[str, Any] = {"group": v.group, "variant": v.label}
        try:
            result = run(cfg)
        except (
            Exception
        ) as exc:  # one broken variant (e.g. weights unavailable) must not end the sweep
            log.warning("sweep variant %s failed: %s", slug, exc)
            row.update(status=f"failed: {type(exc).__name__}: {str(exc)[:120]}")
            rows.append(row)
            continue
        m = result.metrics
        epochs = len(result.history.get("loss", []))
        row.update(
            status="ok",
            top1=round(m["top1"], 4),
            top3=round(m["top3"], 4),
            ece=round(m["ece"], 4),
            val_top1=round(m["validation"]["top1"], 4),
            epochs=epochs,
            seconds=round(time.perf_counter() - start, 1),
        )
        rows.append(row)
        plots.learning_curves(result.history, out / f"curves-{slug}.png", f"{v.group}: {v.label}")
        if m["top1"] > best[0]:
            best = (m["top1"], result)
    write_table(rows, out)
    ok = [r for r in rows if r.get("status") == "ok"]
    if ok:
        plots.comparison_bars(
            [f"{r['group']}: {r['variant']}" for r in ok],
            [r["top1"] for r in ok],
            out / "comparison.png",
        )
    if best[1] is not None:
        report = plots.run_report(best[1], out)
        (out / "best.json").write_text(
            json.dumps({"name": best[1].config.name, **report}, indent=1)
        )
    return rows


COLUMNS = ("group", "variant", "status", "top1", "top3", "ece", "val_top1", "epochs", "seconds")


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def run_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    groups = GROUPS if args.groups == "all" else tuple(g.strip() for g in args.groups.split(","))
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown sweep groups {sorted(unknown)}")
    out = Path(args.out)
    # run_dir is per variant (run_variants); every other generated option sets the base.
    generated = (*DATA_OPTIONS, *PREPROCESSING_OPTIONS)
    names = [n for n in generated if n != "run_dir" and hasattr(args, n)]
    base = TrainConfig(
        **config_values(args, names),
        epochs=args.epochs,
        batch_size=args.batch_size,
        augment=False,
        patience=0,
        plots=False,
    )
    todo = variants(groups, parse_backbone_weights(args.backbone_weights), args.backbone_image_size)
    rows = run_variants(base, todo, out)
    log.info("sweep results in %s", out / "results.md")
    print((out / "results.md").read_text())
    return rows
