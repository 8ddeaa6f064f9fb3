"""Several labelers on the same pending rows: exactly-once, and time against one labeler.

    .venv/bin/python benchmarks/contention.py --rows 1000 --labelers 3

For each server (PostgreSQL, MariaDB): a fresh database with ``--rows`` pending photos, labelled
once by one `labeler run-once` process and once by ``--labelers`` processes started together.
Uses the tiny test model, so the database work (claims, locks, writes) dominates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, build_tiny_artifact, fresh_database
from sqlalchemy import create_engine, func, select

sys.path.insert(0, str(REPO))
from labeler.store.schema import photo, run
from tests.test_processes import labeler_env, seed


def one_round(
    backend: str, rows: int, labelers: int, model: Path, batch: int
) -> tuple[float, list[int], int]:
    with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
        seed(url, rows)
        env = labeler_env(url, model, LABELER_BATCH_SIZE=str(batch))
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "labeler", "run-once"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(labelers)
        ]
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - t0
        assert codes == [0] * labelers, codes
        engine = create_engine(url)
        with engine.connect() as conn:
            per_run = [r.labelled + r.needs_review + r.failed for r in conn.execute(select(run))]
            labelled = conn.execute(
                select(func.count()).where(photo.c.run_id.is_not(None))
            ).scalar_one()
        engine.dispose()
    return wall, per_run, labelled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--labelers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_artifact(Path(tmp) / "model")
        print("| server | labelers | rows | wall s | rows per labeler | exactly once |")
        print("|---|---|---|---|---|---|")
        for backend in ("postgresql", "mariadb"):
            for n in (1, args.labelers):
                wall, per_run, labelled = one_round(backend, args.rows, n, model, args.batch_size)
                once = sum(per_run) == args.rows == labelled
                print(f"| {backend} | {n} | {args.rows} | {wall:.1f} | {per_run} | {once} |")


if __name__ == "__main__":
    main()
