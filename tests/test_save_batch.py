"""Saving a batch: one statement per shape of result when every row is still ours, row by row
(each in its own SAVEPOINT) when a claim was lost, staff reviewed a row meanwhile, or the
database refuses a value. Either way the same rows end up saved, counted and protected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text, update

from labeler.config.settings import Settings
from labeler.core.domain import Outcome, PhotoStatus, Prediction
from labeler.shelter.source import reflect_source
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import photo
from labeler.store.seam import SqlStore
from tests.helpers import create_photos, png_bytes

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
TOKEN = "test:batch"


def _claimed_store(url: str, rows: int) -> tuple[SqlStore, Any, int]:
    engine = make_engine(Settings(database_url=url))
    create_photos(engine, "bytes", ({"id": i, "photo": png_bytes((i, 0, 0))} for i in range(rows)))
    settings = Settings(database_url=url, source_table="animals", source_image_column="photo")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        store = SqlStore(engine, reflect_source(conn, settings))
    run_id = store.start_run(command="test", worker="w", model_version="v1", now=NOW)
    assert store.discover(run_id, NOW) == rows
    claimed = store.claim(
        TOKEN, run_id=run_id, now=NOW, ttl=timedelta(minutes=5), limit=rows, max_attempts=3
    )
    assert len(claimed) == rows
    return store, engine, run_id


def _labelled(pid: str, confidence: float = 0.9) -> Outcome:
    return Outcome(pid, PhotoStatus.LABELLED, Prediction((("beagle", confidence), ("pug", 0.05))))


def _mixed() -> list[Outcome]:
    return [
        _labelled("0"),
        _labelled("1"),
        Outcome("2", PhotoStatus.NEEDS_REVIEW, Prediction((("pug", 0.4),)), error="low"),
        Outcome("3", PhotoStatus.FAILED, error="not an image"),
        Outcome("4", PhotoStatus.GONE, error="vanished"),
        _labelled("5", 0.8),
    ]


def _rows(engine: Any) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        result = conn.execute(
            select(
                photo.c.photo_id,
                photo.c.status,
                photo.c.breed,
                photo.c.attempts,
                photo.c.claimed_by,
                photo.c.last_error,
            )
        )
        return {r[0]: tuple(r[1:]) for r in result}


def _savepoints(engine: Any) -> list[str]:
    """The SAVEPOINT statements the engine sends from now on."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SAVEPOINT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    return seen


def test_a_whole_batch_is_saved_with_its_counts(db_url: str) -> None:
    store, engine, run_id = _claimed_store(db_url, 6)
    savepoints = _savepoints(engine)
    counts = store.save_outcomes(TOKEN, run_id, "v1", _mixed(), NOW)
    assert len(savepoints) == 1  # the whole batch at once, not a savepoint per row
    assert (counts.labelled, counts.needs_review, counts.failed, counts.gone, counts.lost) == (
        3,
        1,
        1,
        1,
        0,
    )
    rows = _rows(engine)
    assert rows["0"][:4] == ("labelled", "beagle", 0, None)
    assert rows["2"][:2] == ("needs_review", "pug")
    assert rows["3"][0] == "failed" and rows["3"][2] == 1 and rows["3"][4] == "not an image"
    assert rows["4"][0] == "gone"
    assert all(r[3] is None for r in rows.values())  # every claim given back


def test_a_lost_claim_and_a_staff_review_are_left_alone(db_url: str) -> None:
    store, engine, run_id = _claimed_store(db_url, 6)
    with engine.begin() as conn:
        conn.execute(update(photo).where(photo.c.photo_id == "1").values(claimed_by="other"))
        conn.execute(
            update(photo).where(photo.c.photo_id == "5").values(status="reviewed", breed="pug")
        )
    savepoints = _savepoints(engine)
    counts = store.save_outcomes(TOKEN, run_id, "v1", _mixed(), NOW)
    assert len(savepoints) == 1 + 6  # the batch at once, undone; then row by row
    assert (counts.labelled, counts.needs_review, counts.failed, counts.lost) == (1, 1, 1, 2)
    rows = _rows(engine)
    assert rows["0"][:2] == ("labelled", "beagle")
    assert rows["1"][0] == "pending" and rows["1"][3] == "other"  # another labeler's now
    assert rows["5"][:2] == ("reviewed", "pug")  # staff's decision stands
    assert rows["3"][2] == 1  # attempts counted once, not twice


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_value_the_database_refuses_fails_only_its_row(db_url: str) -> None:
    store, engine, run_id = _claimed_store(db_url, 4)
    outcomes = [_labelled("0"), _labelled("1"), _labelled("2"), _labelled("3")]
    outcomes[2] = Outcome("2", PhotoStatus.LABELLED, outcomes[2].prediction, context="a\x00b")
    counts = store.save_outcomes(TOKEN, run_id, "v1", outcomes, NOW)
    assert (counts.labelled, counts.failed) == (3, 1)
    rows = _rows(engine)
    assert rows["2"][0] == "failed" and "refused this row's result" in rows["2"][4]
    assert {rows[p][0] for p in ("0", "1", "3")} == {"labelled"}
    with engine.connect() as conn:
        labelled = conn.execute(text("SELECT labelled, failed FROM labeler_run")).one()
    assert tuple(labelled) == (3, 1)
