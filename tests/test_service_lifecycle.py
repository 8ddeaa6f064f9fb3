"""`labeler schedule`, `check`, `status` and `run-once` as processes: signals, outages, secrets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from labeler.store.schema import LABELLED, NEEDS_REVIEW, PENDING, photo, run
from tests.helpers import REPO
from tests.test_processes import labeler_env, seed, spawn

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-Pw-42"
UNREACHABLE = f"postgresql+psycopg://labeler:{PASSWORD}@127.0.0.1:9/shelter"


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_sigterm_finishes_the_batch_and_releases_claims(
    server_db_url: str, tiny_artifact: Path
) -> None:
    total = 600
    seed(server_db_url, total)
    env = labeler_env(server_db_url, tiny_artifact)
    proc = spawn(["schedule", "--now"], env)
    engine = create_engine(server_db_url)

    def labelled() -> int:
        with engine.connect() as conn:
            return conn.execute(
                select(func.count()).where(photo.c.status.in_([LABELLED, NEEDS_REVIEW]))
            ).scalar_one()

    try:
        assert wait_for(lambda: labelled() >= 30), "the scheduled pass never started"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out and "scheduler stopped" in out

    with engine.connect() as conn:
        claimed = conn.execute(
            select(func.count()).where(photo.c.claimed_by.is_not(None))
        ).scalar_one()
        pending = conn.execute(select(func.count()).where(photo.c.status == PENDING)).scalar_one()
        runs = list(conn.execute(select(run)))
    engine.dispose()
    done = labelled()
    assert claimed == 0, "unfinished claims must be released on shutdown"
    assert pending > 0 and done + pending == total, "it stopped early, losing nothing"
    assert len(runs) == 1 and runs[0].status == "interrupted"
    assert runs[0].labelled + runs[0].needs_review == done


def test_schedule_keeps_running_while_the_database_is_unreachable(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    env = labeler_env(
        UNREACHABLE,
        tiny_artifact,
        LABELER_FAILED_PASS_RETRY_SECONDS="1",
        LABELER_DB_CONNECT_RETRIES="0",
    )
    log = tmp_path / "schedule.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labeler", "schedule"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # TensorFlow start-up, the start-up check, then at least one retry (1 s, then 2 s).
            retried = wait_for(
                lambda: log.read_text().count("start-up check failed (database unreachable") >= 2,
                timeout=120,
                interval=0.2,
            )
            assert proc.poll() is None, "the scheduler must not exit because the database is down"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log.read_text()
    assert retried, out
    assert proc.returncode == 0, out
    assert "tries again in" in out
    assert PASSWORD not in out


def test_check_and_run_once_fail_with_the_reason(tiny_artifact: Path) -> None:
    env = labeler_env(
        UNREACHABLE,
        tiny_artifact,
        LABELER_DB_CONNECT_RETRIES="1",
        LABELER_DB_RETRY_BACKOFF_SECONDS="0.1",
    )
    check = spawn(["check"], env)
    out = check.communicate(timeout=120)[0]
    assert check.returncode == 1, out
    assert "FAIL  database reachable" in out and "refused" in out.lower()
    assert "ok    model" in out  # the other checks still run and report
    run_once = spawn(["run-once"], env)
    out2 = run_once.communicate(timeout=120)[0]
    assert run_once.returncode == 1, out2
    assert "database error" in out2 and "refused" in out2.lower()
    assert PASSWORD not in out + out2


def test_check_and_status_on_a_healthy_database(server_db_url: str, tiny_artifact: Path) -> None:
    seed(server_db_url, 20)
    url = make_url(server_db_url)
    if url.get_backend_name() == "postgresql":
        server_db_url = url.set(username="postgres", password=PASSWORD).render_as_string(
            hide_password=False
        )
    env = labeler_env(server_db_url, tiny_artifact)
    outputs = []
    for args in (["check"], ["run-once"], ["status"], ["status", "--json"]):
        proc = spawn(args, env)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, (args, out)
        outputs.append(out)
    check, _, status, status_json = outputs
    steps = ("database reachable", "migrations", "photo source", "photo root", "model")
    assert all(f"ok    {step}:" in check for step in steps) and "FAIL" not in check, check
    assert "photos:   20" in status and "recent runs:" in status and "run-once" in status
    assert '"total": 20' in status_json
    assert PASSWORD not in "".join(outputs)


def test_check_reports_missing_migrations(server_db_url: str, tiny_artifact: Path) -> None:
    env = labeler_env(server_db_url, tiny_artifact)
    proc = spawn(["check"], env)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert "FAIL  migrations: schema is at nothing" in out and "labeler db upgrade" in out
    assert "FAIL  photo source" in out and "'animals' does not exist" in out


def _labelled_count(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(photo.c.status.in_([LABELLED, NEEDS_REVIEW]))
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        (["run-once"], signal.SIGINT, 130),  # Ctrl-C: 128 + SIGINT
        (["run-once"], signal.SIGHUP, 0),  # like SIGTERM: an orderly stop
        (["schedule", "--now"], signal.SIGINT, 130),
        (["schedule", "--now"], signal.SIGHUP, 0),
    ],
)
def test_stop_signals_finish_the_batch_with_the_documented_exit_code(
    tiny_artifact: Path, tmp_path: Path, command: list[str], sig: signal.Signals, code: int
) -> None:
    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    total = 400
    seed(url, total)
    proc = spawn(command, labeler_env(url, tiny_artifact))
    engine = create_engine(url)
    try:
        assert wait_for(lambda: _labelled_count(engine) >= 20), "the pass never started"
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, out
    assert f"{sig.name} received" in out
    with engine.connect() as conn:
        claimed = conn.execute(
            select(func.count()).where(photo.c.claimed_by.is_not(None))
        ).scalar_one()
        runs = list(conn.execute(select(run)))
    done = _labelled_count(engine)
    engine.dispose()
    assert claimed == 0 and done < total
    assert [r.status for r in runs] == ["interrupted"]
    assert runs[0].labelled + runs[0].needs_review == done


def test_json_log_format_from_a_real_pass(tiny_artifact: Path, tmp_path: Path) -> None:
    import json

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    seed(url, 12)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO animals (id, photo) VALUES (13, :junk)"), {"junk": b"junk"})
    engine.dispose()
    env = labeler_env(url, tiny_artifact, LABELER_LOG_FORMAT="json")
    proc = subprocess.run(
        [sys.executable, "-m", "labeler", "run-once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    done = [r for r in records if r.get("run_status") == "finished"]
    assert len(done) == 1 and done[0]["run_id"] == 1
    assert done[0]["labelled"] + done[0]["needs_review"] + done[0]["failed"] == 13
    per_row = [r for r in records if r.get("photo_id") == "13"]
    assert len(per_row) == 1 and per_row[0]["run_id"] == 1 and "failed" in per_row[0]["message"]
