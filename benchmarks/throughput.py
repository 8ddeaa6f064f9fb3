"""Throughput and memory of one labelling pass.

    .venv/bin/python benchmarks/throughput.py --backend postgresql --rows 1000 --model mobilenet

Seeds a fresh database with the real full-frame sample photos (cycled) stored as BLOBs, runs one
pass and prints photos/s, time per stage and peak memory. Run it with two --rows values to see
that memory does not grow with the number of rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import build_tiny_artifact, fresh_database, mobilenet_artifact, peak_rss_mib, seed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mariadb"), default="sqlite")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="tiny", help="tiny | mobilenet | an artifact directory")
    args = parser.parse_args()

    from labeler import migrate
    from labeler.app import Service
    from labeler.settings import Settings

    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.backend, Path(tmp)) as url:
        if args.model == "tiny":
            model = build_tiny_artifact(Path(tmp) / "model")
        elif args.model == "mobilenet":
            model = mobilenet_artifact(Path(tmp) / "model")
        else:
            model = Path(args.model)
        settings = Settings(
            database_url=url,
            source_table="animals",
            source_image_column="photo",
            model_dir=model,
            batch_size=args.batch_size,
        )
        service = Service.build(settings)
        seed(service.engine, args.rows)
        migrate.upgrade(service.engine)
        rss_before = peak_rss_mib()
        t0 = time.perf_counter()
        summary = service.run_pass()
        wall = time.perf_counter() - t0
        service.engine.dispose()
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(summary.stage_seconds.items()))
    print(
        f"backend={args.backend} rows={args.rows} batch={args.batch_size} "
        f"model={service.classifier.version}"
    )
    print(f"  {summary.processed} photos in {wall:.1f}s = {summary.processed / wall:.1f} photos/s")
    print(f"  stages: {stages}")
    print(f"  peak RSS: {rss_before:.0f} MiB before the pass, {peak_rss_mib():.0f} MiB after")


if __name__ == "__main__":
    main()
