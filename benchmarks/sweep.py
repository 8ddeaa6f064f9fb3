"""What the per-pass sweep costs (labeler.store.discovery.sweep_source): one scan of the
source's ids and group values against labeler's own rows, no photo value read.

    .venv/bin/python benchmarks/sweep.py [--rows 10000] [--repeat 5] [--backend sqlite ...]

The source is a table of ``--rows`` photos of ``--rows / 3`` animals, each holding a 40 KB
photo value (what a base64 phone photo would weigh is much more; the sweep never reads it).
Every photo is labelled. Timed: a sweep with nothing to do (every night of a quiet shelter),
then one after 1% of the photos were deleted and 1% moved to another animal (a merge).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import fresh_database
from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session

from labeler.shelter.source import Source, reflect_table
from labeler.store import discovery, migrate
from labeler.store.engine import utc_now
from labeler.store.schema import LABELLED, photo

PHOTO = "x" * 40_000


def build(url: str, rows: int) -> Source:
    engine = create_engine(url)
    big = "LONGTEXT" if engine.dialect.name == "mysql" else "TEXT"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE media (id INTEGER PRIMARY KEY, pet INTEGER, p {big})"))
        for start in range(0, rows, 1000):
            conn.execute(
                text("INSERT INTO media VALUES (:i, :g, :p)"),
                [{"i": i, "g": i // 3, "p": PHOTO} for i in range(start, min(start + 1000, rows))],
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        table = reflect_table(conn, "media", "source", "LABELER_SOURCE_TABLE")
    source = Source(table=table, id_column="id", image_column="p", group_column="pet")
    with Session(engine) as session, session.begin():
        discovery.discover(session, source, utc_now())
        session.execute(update(photo).values(status=LABELLED))
    engine.dispose()
    return source


def timed(url: str, source: Source, repeat: int) -> tuple[float, discovery.Swept]:
    engine = create_engine(url)
    times, swept = [], discovery.Swept()
    for _ in range(repeat):
        with Session(engine) as session, session.begin():
            t0 = time.perf_counter()
            swept = discovery.sweep_source(session, source, utc_now())
            times.append((time.perf_counter() - t0) * 1000)
    engine.dispose()
    return statistics.median(times), swept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--backend",
        action="append",
        choices=("sqlite", "postgresql", "mariadb"),
        help="repeatable; all three by default",
    )
    args = parser.parse_args()
    for backend in args.backend or ["sqlite", "postgresql", "mariadb"]:
        with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
            source = build(url, args.rows)
            quiet, _ = timed(url, source, args.repeat)
            engine = create_engine(url)
            step = 100
            with engine.begin() as conn:
                conn.execute(text(f"DELETE FROM media WHERE id % {step} = 0"))  # noqa: S608
                conn.execute(text(f"UPDATE media SET pet = -pet WHERE id % {step} = 1"))  # noqa: S608
            engine.dispose()
            changed, swept = timed(url, source, 1)
            print(
                f"{backend:10s} {args.rows} photos: nothing to do {quiet:.1f} ms; "
                f"after {swept.gone} deleted and {swept.moved} moved: {changed:.1f} ms "
                f"({len(swept.groups)} animals to decide again)"
            )


if __name__ == "__main__":
    main()
