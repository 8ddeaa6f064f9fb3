"""A reviewed breed labeler cannot write (a label the map leaves out, a typo, an empty value)
never drops the animal out of the review queue: it stays, with the reason beside it, staff's
value stays as they wrote it, and their next value - or a breed set in their own screen - is
taken from there. On every server (the view compares the two columns in SQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from labeler.service.app import Service
from labeler.store import reports
from labeler.store.schema import GROUP_REVIEW_VIEW, NEEDS_REVIEW, REVIEWED, group
from labeler.store.staff import group_verdicts
from tests.test_shelter_errors import _build, _rows


def _queue(service: Service) -> dict[int, Any]:
    with service.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {GROUP_REVIEW_VIEW}")).mappings()
        return {int(r["group_id"]): dict(r) for r in rows}


def _review(service: Service, values: dict[int, str | None]) -> None:
    with service.engine.begin() as conn:
        for pet, breed in values.items():
            conn.execute(
                update(group)
                .where(group.c.group_id == str(pet))
                .values(reviewed_breed=breed, reviewed_by="anna")
            )


def test_a_refused_review_keeps_the_animal_in_the_queue_with_the_reason(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    # Every animal goes to review: the scripted model is 0.9 sure, below the threshold.
    built = _build(db_url, tmp_path, tiny_artifact, review_threshold=0.99)
    service = built.service
    assert service.run_pass().status == "finished"
    assert set(_queue(service)) == {1, 2, 3, 4}

    _review(service, {1: "dingo", 2: "beagel", 3: "", 4: " Beagle "})
    summary = service.run_pass()
    assert summary.status == "finished"
    assert summary.animals.get("review refused") == 3, summary.animals
    _, groups, pets = _rows(service)
    queue = _queue(service)
    # Accepted: letter case and surrounding spaces do not matter.
    assert groups[4].status == REVIEWED and 4 not in queue
    assert (pets[4].breed_id, pets[4].breed_name) == (19, "Beagle")
    # Refused: still in the queue, the reason beside them, staff's value as they wrote it,
    # the record untouched.
    expected = {
        1: ("dingo", "not a dog breed"),
        2: ("beagel", "did you mean 'beagle'"),
        3: ("", "empty"),
    }
    for pet, (value, why) in expected.items():
        assert groups[pet].status == NEEDS_REVIEW
        assert groups[pet].reviewed_breed == value and groups[pet].refused_breed == value
        assert pet in queue, pet
        assert why in queue[pet]["refusal"], queue[pet]["refusal"]
        assert pets[pet].breed_id == 442
    # A refused value says nothing about the model's answer: no verdict from it; `status`
    # counts the refusals and says why.
    with Session(service.engine) as session:
        verdicts = group_verdicts(session, None)
        waiting = reports.waiting_animals(session)
    assert sum(v.staff_agrees is not None for v in verdicts) == 1  # pet 4 only
    assert waiting["refused_reviews"]["count"] == 3
    assert "not a dog breed" in waiting["refused_reviews"]["example"]

    # Said once: another pass leaves them as they are.
    with service.engine.connect() as conn:
        stamp = {r.group_id: r.updated_at for r in conn.execute(select(group))}
    assert service.run_pass().status == "finished"
    with service.engine.connect() as conn:
        assert {r.group_id: r.updated_at for r in conn.execute(select(group))} == stamp
    assert set(_queue(service)) == {1, 2, 3}

    # Staff correct the typo: it leaves the queue at once and is written at the next pass.
    _review(service, {2: "Shih-Tzu"})
    assert set(_queue(service)) == {1, 3}
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[2].status == REVIEWED and groups[2].refusal is None
    assert (pets[2].breed_id, pets[2].breed_name) == (188, "Shih Tzu")

    # Staff decide pet 1 in their own screen instead: a staff decision, out of the queue; and
    # pet 3's empty value back to NULL: an ordinary animal in review again.
    with service.engine.begin() as conn:
        conn.execute(text("UPDATE pets SET breed_id = 188, breed_name = 'Shih Tzu' WHERE id = 1"))
    _review(service, {3: None})
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == REVIEWED and groups[1].staff_values
    assert pets[1].breed_id == 188
    assert set(_queue(service)) == {3}
    assert groups[3].status == NEEDS_REVIEW and pets[3].breed_id == 442
    assert _queue(service)[3]["refusal"] is None, "an old refusal is not shown"
    service.engine.dispose()
