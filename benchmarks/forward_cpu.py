"""CPU milliseconds per photo of each model's forward pass alone, by number of threads.

    .venv/bin/python benchmarks/forward_cpu.py \\
        --models models/efficientnet-lite2-dogs,models/efficientnet-lite2-int8-dogs

Process CPU time (all threads together) over batches of random inputs of the model's shape,
served exactly as the pass serves them (with the feature output where the model has one);
repeated, so that the spread shows how quiet the machine is. Read it beside throughput.py,
whose "forward only" row is wall-clock photos/s.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from labeler.model.classifier import Classifier


def forward_cpu_ms(model: Path, threads: int, batch: int, batches: int, runs: int) -> list[float]:
    """CPU ms per photo of ``runs`` timed runs of ``batches`` forward passes each."""
    classifier = Classifier.load(model, runtime="onnx", threads=threads)
    shape = classifier.artifact.preprocessing.output_shape()[-3:]
    images = np.random.default_rng(0).uniform(0, 255, (batch, *shape)).astype(np.float32)
    classifier.runtime.predict_with_features(images)  # warm-up: allocations, kernel choice
    out = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(batches):
            classifier.runtime.predict_with_features(images)
        out.append(1000 * (time.process_time() - start) / (batch * batches))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma list of model folders")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# forward_cpu.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(f"{'model':<40} {'threads':>7}  CPU ms per photo (each run)")
    for model in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            runs = forward_cpu_ms(Path(model), threads, args.batch_size, args.batches, args.runs)
            print(f"{Path(model).name:<40} {threads:>7}  " + " / ".join(f"{r:.1f}" for r in runs))


if __name__ == "__main__":
    main()
