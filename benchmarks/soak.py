"""Many consecutive passes in one long-lived process: memory, open files, threads, connections.

    .venv/bin/python benchmarks/soak.py --backend postgresql --passes 40 --rows-per-pass 50

Between passes new photos are inserted, as volunteers would. Prints one line per pass and the
growth between the first and last tenth of the run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from itertools import cycle
from pathlib import Path

from common import build_tiny_artifact, fresh_database, mobilenet_artifact
from sqlalchemy import text

from tests.helpers import create_photos, fullframe_photos


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def connections(engine, backend: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        if backend == "postgresql":
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                ).scalar()
            )
        if backend == "mariadb":
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE()"
                    )
                ).scalar()
            )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "mariadb"), default="postgresql"
    )
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--rows-per-pass", type=int, default=50)
    parser.add_argument("--model", default="tiny", help="tiny | mobilenet")
    args = parser.parse_args()

    from labeler.config.settings import Settings
    from labeler.service.app import Service
    from labeler.store import migrate

    photos = cycle([p.read_bytes() for p in fullframe_photos()])
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.backend, Path(tmp)) as url:
        model = (mobilenet_artifact if args.model == "mobilenet" else build_tiny_artifact)(
            Path(tmp) / "m"
        )
        settings = Settings(
            database_url=url, source_table="animals", source_image_column="photo", model_dir=model
        )
        service = Service.build(settings)
        create_photos(service.engine, "bytes", [])
        migrate.upgrade(service.engine)
        samples = []
        next_id = 1
        print("pass  labelled  rss_MiB  fds  threads  db_conns")
        for i in range(args.passes):
            rows = [{"id": next_id + k, "photo": next(photos)} for k in range(args.rows_per_pass)]
            next_id += args.rows_per_pass
            with service.engine.begin() as conn:
                conn.execute(text("INSERT INTO animals (id, photo) VALUES (:id, :photo)"), rows)
            summary = service.run_pass(command="soak")
            sample = (
                rss_mib(),
                len(os.listdir("/proc/self/fd")),
                threading.active_count(),
                connections(service.engine, args.backend),
            )
            samples.append(sample)
            print(
                f"{i + 1:>4}  {summary.processed:>8}  {sample[0]:7.0f}  {sample[1]:>3}  "
                f"{sample[2]:>7}  {sample[3]:>8}"
            )
        service.engine.dispose()
    tenth = max(1, len(samples) // 10)
    first, last = samples[:tenth], samples[-tenth:]
    names = ("rss_MiB", "fds", "threads", "db_conns")
    growth = ", ".join(
        f"{n} {sum(s[j] for s in first) / tenth:.1f} -> {sum(s[j] for s in last) / tenth:.1f}"
        for j, n in enumerate(names)
    )
    print(f"first tenth vs last tenth: {growth}")


if __name__ == "__main__":
    main()
