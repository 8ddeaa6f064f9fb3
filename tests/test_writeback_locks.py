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
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from labeler.config.settings import Settings
from labeler.decide.decision import Thresholds
from labeler.service.app import Service
from labeler.store import migrate
from labeler.store.engine import utc_now
from labeler.store.schema import LABELLED, PENDING, REVIEWED, group, photo
from labeler.store.seam import SqlStore, TargetLocked
from labeler.store.writeback import GroupPolicy
from tests.helpers import FULLFRAME
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


def test_a_locked_photo_row_waits_for_the_next_pass_and_the_rest_goes_on(
    server_db_url: str, tiny_artifact: Path
) -> None:
    """One answer per photo, written into the source's own breed column: a photo row staff
    hold locked is left as it was (no attempt spent, nothing written), the other photos are
    saved and written, and the next pass labels it."""
    engine = create_engine(server_db_url, poolclass=NullPool)
    photo_type = "LONGBLOB" if engine.dialect.name in ("mysql", "mariadb") else "BYTEA"
    files = sorted(FULLFRAME.glob("*/*.JPEG"))[:3]
    with engine.begin() as conn:
        conn.execute(
            text(f"CREATE TABLE media (id INTEGER PRIMARY KEY, photo {photo_type}, breed TEXT)")
        )
        conn.execute(
            text("INSERT INTO media (id, photo) VALUES (:i, :p)"),
            [{"i": i, "p": f.read_bytes()} for i, f in enumerate(files, start=1)],
        )
    settings = Settings(
        database_url=server_db_url,
        source_table="media",
        source_image_column="photo",
        image_kind="bytes",
        writeback_breed_column="breed",
        model_dir=tiny_artifact,
        review_threshold=0.0,
        review_margin=0.0,
        audit_share=0.0,
        target_lock_timeout_seconds=1,
    )
    service = Service.build(settings)
    migrate.upgrade(service.engine)
    held = engine.connect()
    try:
        tx = held.begin()
        held.execute(text("SELECT * FROM media WHERE id = 1 FOR UPDATE")).all()
        started = time.monotonic()
        summary = service.run_pass()
        elapsed = time.monotonic() - started
        assert summary.status == "finished", summary.line()
        assert elapsed < 30, f"the pass waited {elapsed:.0f} s for the lock"
        assert summary.locked == 1 and summary.labelled == 2 and summary.failed == 0
        assert any("LABELER_TARGET_LOCK_TIMEOUT_SECONDS" in e for e in summary.errors)
        tx.rollback()
    finally:
        held.close()
    with engine.connect() as conn:
        rows = {r.photo_id: r for r in conn.execute(select(photo))}
        written = dict(conn.execute(text("SELECT id, breed FROM media")).all())
    assert rows["1"].status == PENDING and rows["1"].attempts == 0 and rows["1"].claimed_by is None
    assert written[1] is None
    assert {rows[k].status for k in ("2", "3")} == {LABELLED}
    assert written[2] == rows["2"].breed and written[3] == rows["3"].breed

    summary = service.run_pass()
    assert summary.labelled == 1 and summary.locked == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT breed FROM media WHERE id = 1")).scalar() is not None
    service.engine.dispose()
    engine.dispose()
