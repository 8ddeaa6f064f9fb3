"""A staff decision is never overwritten: not by run-once, not by any form of relabel."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update

from labeler.config.settings import Settings
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, PENDING, REVIEWED, photo
from tests.helpers import create_photos, png_bytes


@pytest.fixture
def shelter(db_url: str, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = make_engine(Settings(database_url=db_url))
    rows = [
        {"id": i, "photo": png_bytes(((i * 41) % 256, (i * 13) % 256, (i * 97) % 256))}
        for i in range(1, 41)
    ]
    rows.append({"id": 99, "photo": b"not an image"})
    create_photos(engine, "bytes", rows)
    migrate.upgrade(engine)
    engine.dispose()
    for key, value in {
        "DATABASE_URL": db_url,
        "SOURCE_TABLE": "animals",
        "SOURCE_IMAGE_COLUMN": "photo",
        "MODEL_DIR": str(tiny_artifact),
        "BATCH_SIZE": "8",
    }.items():
        monkeypatch.setenv(f"LABELER_{key}", value)
    return db_url


RUN_ID = list(photo.c.keys()).index("run_id")


def snapshot(db_url: str) -> dict[str, tuple[object, ...]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = {r.photo_id: tuple(r) for r in conn.execute(select(photo))}
    engine.dispose()
    return rows


def test_reviewed_rows_survive_everything(shelter: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run-once"]) == 0
    before = snapshot(shelter)
    by_status: dict[str, list[str]] = {}
    for pid, row in before.items():
        by_status.setdefault(row[1], []).append(pid)  # type: ignore[arg-type]
    assert by_status.get(LABELLED) and by_status.get(NEEDS_REVIEW) and by_status.get(FAILED)

    # Staff review one row of each kind in their database UI; one of them also sets the status.
    reviewed = [by_status[LABELLED][0], by_status[NEEDS_REVIEW][0], by_status[FAILED][0]]
    engine = create_engine(shelter)
    with engine.begin() as conn:
        for pid in reviewed:
            conn.execute(
                update(photo)
                .where(photo.c.photo_id == pid)
                .values(reviewed_breed="Pekinese", reviewed_by="anna")
            )
        conn.execute(update(photo).where(photo.c.photo_id == reviewed[1]).values(status=REVIEWED))
    engine.dispose()
    kept = {pid: row for pid, row in snapshot(shelter).items() if pid in reviewed}

    ids = ",".join(reviewed)
    commands = [
        ["run-once"],
        ["relabel", "--all", "--run"],
        ["relabel", "--ids", ids, "--run"],
        ["relabel", "--failed", "--run"],
        ["relabel", "--before", "2999-01-01", "--run"],
        ["relabel", "--other-model-version", "some-older-model", "--run"],
        ["relabel", "--not-current-model", "--run"],
    ]
    for command in commands:
        assert main(command) == 0, command
        after = snapshot(shelter)
        for pid in reviewed:
            assert after[pid] == kept[pid], (command, pid)

    # The relabel commands did act on every other row.
    after = snapshot(shelter)
    others = [pid for pid in after if pid not in reviewed]
    assert all(after[pid][1] in (LABELLED, NEEDS_REVIEW, FAILED) for pid in others)
    unchanged = [pid for pid in others if after[pid][RUN_ID] == before[pid][RUN_ID]]
    assert not unchanged, "relabel --run should have relabelled every unreviewed row"

    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "reviewed" in out and "review queue" in out


def test_relabel_selections(shelter: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run-once"]) == 0
    engine = create_engine(shelter)
    with engine.begin() as conn:
        conn.execute(
            update(photo)
            .where(photo.c.photo_id.in_(["1", "2", "3"]))
            .values(model_version="old-model")
        )

    def pending() -> set[str]:
        with engine.connect() as conn:
            return set(conn.scalars(select(photo.c.photo_id).where(photo.c.status == PENDING)))

    assert main(["relabel", "--not-current-model"]) == 0
    assert pending() == {"1", "2", "3"}
    assert main(["run-once"]) == 0 and pending() == set()

    assert main(["relabel", "--ids", "5,6", "--ids", "7"]) == 0
    assert pending() == {"5", "6", "7"}
    assert main(["run-once"]) == 0

    assert main(["relabel", "--failed"]) == 0
    assert pending() == {"99"}
    with engine.connect() as conn:
        assert conn.scalar(select(photo.c.attempts).where(photo.c.photo_id == "99")) == 0
    assert main(["run-once"]) == 0

    assert main(["relabel", "--before", "2000-01-01"]) == 0
    assert pending() == set()
    capsys.readouterr()
    assert main(["relabel"]) == 2
    assert "say which rows" in capsys.readouterr().err
    engine.dispose()


def test_failed_photos_stop_after_max_attempts(
    shelter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELER_MAX_ATTEMPTS", "2")
    engine = create_engine(shelter)

    def broken() -> tuple[str, int]:
        with engine.connect() as conn:
            row = conn.execute(
                select(photo.c.status, photo.c.attempts).where(photo.c.photo_id == "99")
            ).one()
        return row[0], row[1]

    for expected_attempts in (1, 2, 2, 2):
        assert main(["run-once"]) == 0
        assert broken() == (FAILED, expected_attempts)
    engine.dispose()
