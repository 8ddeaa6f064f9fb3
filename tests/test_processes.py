"""Whole `labeler` processes against the real servers: two at once, and one killed mid-pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from labeler.config.settings import Settings
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, photo, run
from tests.helpers import REPO, create_photos, png_bytes

pytestmark = pytest.mark.slow


def labeler_env(db_url: str, model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELER_")}
    env.update(
        LABELER_DATABASE_URL=db_url,
        LABELER_SOURCE_TABLE="animals",
        LABELER_SOURCE_IMAGE_COLUMN="photo",
        LABELER_IMAGE_KIND="bytes",
        LABELER_MODEL_DIR=str(model),
        LABELER_BATCH_SIZE="5",
        # Every process starts the same way (TensorFlow import, a few seconds), so they overlap
        # and each takes a share; ONNX start-up (a cache hit, or a first conversion for one of
        # them) is so uneven that one labeler could find the work done. ONNX has its own tests.
        LABELER_RUNTIME="keras",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "labeler", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def seed(db_url: str, n: int) -> None:
    engine = make_engine(Settings(database_url=db_url))
    colors = [((i * 37) % 256, (i * 91) % 256, (i * 53) % 256) for i in range(n)]
    create_photos(
        engine,
        "bytes",
        ({"id": i + 1, "photo": png_bytes(c, (24, 24))} for i, c in enumerate(colors)),
    )
    migrate.upgrade(engine)
    engine.dispose()


def outcome_summary(db_url: str) -> tuple[dict[str, int], list[object], int]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(select(photo.c.status, func.count()).group_by(photo.c.status)).all()
        )
        runs = list(conn.execute(select(run).order_by(run.c.id)))
        claimed = conn.execute(
            select(func.count()).where(photo.c.claimed_by.is_not(None))
        ).scalar_one()
    engine.dispose()
    return counts, runs, claimed


def processed(r: object) -> int:
    return int(r.labelled + r.needs_review + r.failed)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("labelers", "rows"), [(2, 500), (3, 1000)])
def test_labelers_at_once_label_each_row_exactly_once(
    server_db_url: str, tiny_artifact: Path, labelers: int, rows: int
) -> None:
    seed(server_db_url, rows)
    env = labeler_env(server_db_url, tiny_artifact)
    procs = [spawn(["run-once"], env) for _ in range(labelers)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * labelers, outputs

    counts, runs, claimed = outcome_summary(server_db_url)
    assert counts.get(LABELLED, 0) + counts.get(NEEDS_REVIEW, 0) == rows
    assert FAILED not in counts and claimed == 0
    assert len(runs) == labelers and all(r.status == "finished" for r in runs)
    # Each result is counted by the run that wrote it, in the same transaction: the sum is
    # exactly the number of rows only if no row was written twice.
    assert sum(processed(r) for r in runs) == rows
    assert all(r.lost == 0 for r in runs)
    # At least two took a share, so rows were claimed concurrently. A third that starts last
    # on a loaded machine may find the work done: start-up (a TensorFlow import) is uneven.
    sharing = sum(processed(r) > 0 for r in runs)
    assert sharing >= 2, f"only {sharing} of {labelers} labelers took a share"
    engine = create_engine(server_db_url)
    with engine.connect() as conn:
        by_run = dict(
            conn.execute(select(photo.c.run_id, func.count()).group_by(photo.c.run_id)).all()
        )
    engine.dispose()
    assert by_run == {r.id: processed(r) for r in runs if processed(r)}


def test_killed_labeler_loses_nothing(server_db_url: str, tiny_artifact: Path) -> None:
    total = 600
    seed(server_db_url, total)
    env = labeler_env(server_db_url, tiny_artifact, LABELER_CLAIM_TTL_SECONDS="3")
    victim = spawn(["run-once"], env)
    engine = create_engine(server_db_url)
    done = 0
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            with engine.connect() as conn:
                done = conn.execute(
                    select(func.count()).where(photo.c.status.in_([LABELLED, NEEDS_REVIEW]))
                ).scalar_one()
            if done >= 50:
                break
            time.sleep(0.02)
        assert victim.poll() is None, "the labeler finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    engine.dispose()

    counts, runs, _ = outcome_summary(server_db_url)
    partial = counts.get(LABELLED, 0) + counts.get(NEEDS_REVIEW, 0)
    assert 50 <= partial < total
    assert runs[0].status == "running"  # it never got to record its end

    time.sleep(3.5)  # let the dead worker's claims expire
    again = spawn(["run-once"], env)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out

    counts, runs, claimed = outcome_summary(server_db_url)
    assert counts.get(LABELLED, 0) + counts.get(NEEDS_REVIEW, 0) == total
    assert claimed == 0
    assert sum(processed(r) for r in runs) == total, "a row was labelled twice or lost"
    assert processed(runs[0]) == partial and runs[1].status == "finished"
    assert runs[0].status == "abandoned", "the next pass closes the killed pass's run"
