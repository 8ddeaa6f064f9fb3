"""A shelter record another session holds locked (staff's tool in a long transaction) does not
stall the pass: the write gives up after LABELER_TARGET_LOCK_TIMEOUT_SECONDS, the animal stays as
it was without spending an attempt, the other animals are written, and the next pass writes it.
PostgreSQL (lock_timeout) and MariaDB (innodb_lock_wait_timeout) lock the record; SQLite locks
the whole database (its busy timeout)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from labeler.decide.decision import Thresholds
from labeler.store.engine import utc_now
from labeler.store.schema import LABELLED, PENDING, REVIEWED, group
from labeler.store.seam import SqlStore, TargetLocked
from labeler.store.writeback import GroupPolicy
from tests.test_shelter_errors import _build, _rows


def test_a_locked_record_waits_for_the_next_pass_and_the_rest_goes_on(
    server_db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(server_db_url, tmp_path, tiny_artifact, target_lock_timeout_seconds=1)
    service = built.service
    staff = create_engine(server_db_url, poolclass=NullPool)
    held = staff.connect()
    try:
        tx = held.begin()
        held.execute(text("SELECT * FROM pets WHERE id = 1 FOR UPDATE")).all()
        started = time.monotonic()
        summary = service.run_pass()
        elapsed = time.monotonic() - started
        assert summary.status == "finished", summary.line()
        assert elapsed < 30, f"the pass waited {elapsed:.0f} s for the lock"
        _, groups, pets = _rows(service)
        # The locked animal: nothing written, no attempt, still pending for the next pass.
        assert groups[1].status == PENDING and groups[1].attempts == 0
        assert groups[1].written_values is None and pets[1].breed_id == 442
        # The others are written as usual.
        assert groups[2].status == LABELLED and pets[2].breed_id == 188
        assert any("LABELER_TARGET_LOCK_TIMEOUT_SECONDS" in e for e in summary.errors)
        assert sum(n for s, n in summary.animals.items() if s.startswith("locked")) == 1
        if built.dialect == "mariadb":
            # The short wait was for labeler's write only: its connections are back to normal.
            with service.engine.connect() as conn:
                wait = conn.execute(text("SELECT @@SESSION.innodb_lock_wait_timeout")).scalar()
            assert wait != 1

        # A reviewed breed for a record that is locked waits the same way.
        with service.engine.begin() as conn:
            conn.execute(
                update(group)
                .where(group.c.group_id == "2")
                .values(reviewed_breed="beagle", status="needs_review")
            )
        held.execute(text("SELECT * FROM pets WHERE id = 2 FOR UPDATE")).all()
        summary = service.run_pass()
        _, groups, pets = _rows(service)
        assert groups[2].status == "needs_review" and pets[2].breed_id == 188
        assert groups[1].status == PENDING
        tx.rollback()
    finally:
        held.close()
        staff.dispose()

    # Staff closed the animal: the next pass writes both.
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == LABELLED and pets[1].breed_id == 19
    assert groups[2].status == REVIEWED and pets[2].breed_id == 19
    service.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_gives_up_after_the_busy_timeout(
    backend: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    built = _build(url, tmp_path, tiny_artifact, target_lock_timeout_seconds=1)
    service = built.service
    assert service.run_pass().status == "finished"
    with service.engine.begin() as conn:
        conn.execute(update(group).where(group.c.group_id == "1").values(status=PENDING))
    store = SqlStore(service.engine, service.source(), service.target())
    policy = GroupPolicy(Thresholds(review_threshold=0.5))
    database = make_url(url).database
    assert database is not None
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program holds SQLite's one write lock
        started = time.monotonic()
        with pytest.raises(TargetLocked, match="the database stayed locked") as locked:
            store.settle_group(
                "1", policy, model_version=service.classifier.version, run_id=1, now=_now()
            )
        assert locked.value.database_wide
        assert time.monotonic() - started < 10
        other.execute("ROLLBACK")
    finally:
        other.close()
    _, groups, _ = _rows(service)
    assert groups[1].status == PENDING and groups[1].attempts == 0
    # The rest of labeler's transactions keep the usual busy timeout.
    with service.engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    status = store.settle_group(
        "1", policy, model_version=service.classifier.version, run_id=1, now=_now()
    )
    assert status == LABELLED
    service.engine.dispose()


def _now() -> datetime:
    return utc_now()
