"""Faults on the real servers: the database restarts in the middle of a pass.

These tests restart the local PostgreSQL and MariaDB servers; every test leaves them running.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from labeler.store.schema import LABELLED, NEEDS_REVIEW, photo, run
from tests.helpers import REPO
from tests.test_processes import labeler_env, seed, spawn
from tests.test_service_lifecycle import wait_for

pytestmark = pytest.mark.slow


def _up(backend: str) -> bool:
    if backend == "postgresql":
        cmd = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]
    else:
        cmd = ["mysqladmin", "-h", "127.0.0.1", "-u", "root", "ping"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def restart(backend: str) -> None:
    """Restart the server the way an administrator (or a crash and a supervisor) would."""
    if backend == "postgresql":
        version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                version,
                "main",
                "restart",
                "-m",
                "fast",
            ],
            check=True,
            capture_output=True,
        )
    else:
        subprocess.run(["mysqladmin", "-h", "127.0.0.1", "-u", "root", "shutdown"], check=True)
        assert wait_for(lambda: not _up("mariadb"), timeout=60, interval=0.2)
        time.sleep(1.0)  # the service is really gone for a moment
        subprocess.run(
            [
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ],
            check=True,
        )
    assert wait_for(lambda: _up(backend), timeout=90, interval=0.2), f"{backend} did not come back"


@pytest.fixture(autouse=True)
def _servers_stay_up():  # type: ignore[no-untyped-def]
    if not (shutil.which("pg_ctlcluster") and shutil.which("start-stop-daemon")):
        pytest.fail("restarting the databases needs pg_ctlcluster and start-stop-daemon")
    yield
    subprocess.run(["bash", str(REPO / "scripts" / "start-databases.sh")], check=False)


def test_database_restart_mid_pass(server_db_url: str, tiny_artifact: Path) -> None:
    backend = make_url(server_db_url).get_backend_name()
    backend = "postgresql" if backend == "postgresql" else "mariadb"
    total = 800
    seed(server_db_url, total)
    env = labeler_env(
        server_db_url,
        tiny_artifact,
        LABELER_DB_CONNECT_RETRIES="12",
        LABELER_DB_RETRY_BACKOFF_SECONDS="0.5",
        LABELER_CLAIM_TTL_SECONDS="5",
    )
    proc = spawn(["run-once"], env)
    engine = create_engine(server_db_url, pool_pre_ping=True)

    def labelled() -> int:
        try:
            with engine.connect() as conn:
                return conn.execute(
                    select(func.count()).where(photo.c.status.in_([LABELLED, NEEDS_REVIEW]))
                ).scalar_one()
        except Exception:
            return -1

    try:
        assert wait_for(lambda: labelled() >= 40)
        assert proc.poll() is None, "the pass ended before the restart"
        restart(backend)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "retrying in" in out, "the restart should have been noticed and retried"
    if proc.returncode != 0:
        # It gave up cleanly: the next pass, after any unreleased claims expire, finishes.
        time.sleep(5.5)
        again = spawn(["run-once"], env)
        out2 = again.communicate(timeout=300)[0]
        assert again.returncode == 0, out2

    engine.dispose()
    engine = create_engine(server_db_url)
    with engine.connect() as conn:
        done = conn.execute(
            select(func.count()).where(photo.c.status.in_([LABELLED, NEEDS_REVIEW]))
        ).scalar_one()
        claimed = conn.execute(
            select(func.count()).where(photo.c.claimed_by.is_not(None))
        ).scalar_one()
        runs = list(conn.execute(select(run)))
    engine.dispose()
    assert done == total and claimed == 0
    assert sum(r.labelled + r.needs_review + r.failed for r in runs) == total, "labelled twice?"
