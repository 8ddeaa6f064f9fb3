"""Report figures (matplotlib, Agg backend: no display on servers or CI).

Figures showing photos go to the run directory only, never into an artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training import calibration

if TYPE_CHECKING:
    from training.train import TrainResult


def learning_curves(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, values in history.items():
            if key.endswith(metric) and values:
                ax.plot(range(1, len(values) + 1), values, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def comparison_bars(
    names: Sequence[str], values: Sequence[float], path: Path, ylabel: str = "top-1"
) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(cm: np.ndarray, names: Sequence[str], path: Path) -> None:
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(20, 4 + 0.12 * n), min(20, 4 + 0.12 * n)))
    rows = cm.sum(axis=1, keepdims=True)
    ax.imshow(cm / np.maximum(rows, 1), cmap="viridis", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticklabels(names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confused_pairs(
    pairs: list[tuple[int, int, int]],
    names: Sequence[str],
    examples: dict[int, list[np.ndarray]],
    path: Path,
    per_class: int = 2,
) -> None:
    """Each row: a most-confused (true, predicted) pair with example photos of both breeds."""
    if not pairs:
        return
    cols = 2 * per_class
    fig, axes = plt.subplots(len(pairs), cols, figsize=(2 * cols, 2.1 * len(pairs)), squeeze=False)
    for r, (t, p, count) in enumerate(pairs):
        for c in range(cols):
            cls = t if c < per_class else p
            ax = axes[r][c]
            ax.axis("off")
            photos = examples.get(cls, [])
            k = c % per_class
            if k < len(photos):
                ax.imshow(photos[k])
            if c == 0:
                ax.set_title(f"{names[t]} -> {names[p]} ({count}x)", fontsize=7, loc="left")
            elif c == per_class:
                ax.set_title(names[p], fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_report(result: TrainResult, run_dir: Path, n_pairs: int = 8) -> dict[str, Any]:
    """Learning curves, confusion matrix and the most-confused pairs for one run."""
    from training.data import read_rgb

    names = result.class_names
    learning_curves(result.history, run_dir / "learning_curves.png", result.config.name)
    if len(result.test_labels) == 0:
        return {}
    cm = calibration.confusion_matrix(
        result.test_probs.argmax(axis=1), result.test_labels, len(names)
    )
    confusion(cm, names, run_dir / "confusion_matrix.png")
    pairs = calibration.most_confused_pairs(cm, n_pairs)
    examples: dict[int, list[np.ndarray]] = {}
    for t, p, _ in pairs:
        for cls in (t, p):
            if cls not in examples:
                idx = result.test_indices[result.test_labels == cls][:2]
                examples[cls] = [read_rgb(result.dataset.paths[int(i)]) for i in idx]
    confused_pairs(pairs, names, examples, run_dir / "confused_pairs.png")
    rows = [{"true": names[t], "predicted": names[p], "count": n} for t, p, n in pairs]
    (run_dir / "confused_pairs.md").write_text(
        "| true | predicted | count |\n|---|---|---|\n"
        + "".join(f"| {r['true']} | {r['predicted']} | {r['count']} |\n" for r in rows)
    )
    return {"confused_pairs": rows}
