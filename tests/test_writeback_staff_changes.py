"""Any change a person makes to the record after labeler's write is a staff decision, whatever
its value: setting it back to the undecided value (an undo) too. And labeler recognises its own
write when the map spells a value differently from how the column holds it (``0019`` in an
integer column), so its own write is never taken for a staff decision - on every server."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session

from labeler.shelter.target import parse_values, same_value_text
from labeler.store import results
from labeler.store.engine import session_factory, utc_now
from labeler.store.schema import GONE, LABELLED, REVIEWED, group
from labeler.store.shelter_sql import lock_timeout
from labeler.store.staff import animal_verdict
from tests.test_shelter_errors import _build, _rows
from tests.test_shelter_helpers import ScriptedModel


def test_staff_undo_is_a_decision_that_no_relabel_overwrites(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    service = built.service
    ScriptedModel(service.classifier, built.files.values())
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == LABELLED and pets[1].breed_id == 19
    # In the shelter's own screen, staff put pet 1 back to "Mixed Breed".
    with service.engine.begin() as conn:
        conn.execute(
            text("UPDATE pets SET breed_id = 442, breed_name = 'Mixed Breed' WHERE id = 1")
        )
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == REVIEWED and "442" in groups[1].staff_values
    # A relabel of everything never writes over it.
    with session_factory(service.engine).begin() as session:
        results.relabel(session, results.RelabelSelection(everything=True), utc_now())
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert (pets[1].breed_id, pets[1].breed_name) == (442, "Mixed Breed")
    assert groups[1].status == REVIEWED
    assert groups[2].status == LABELLED and pets[2].breed_id == 188  # the others as before
    service.engine.dispose()


def test_a_map_value_spelt_unlike_the_column_is_still_labelers_own_write(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    breed_map = Path(str(built.service.settings.breed_map))
    breed_map.write_text(breed_map.read_text().replace("beagle,19,", "beagle,0019,"))
    service = built.service.build(built.service.settings)
    ScriptedModel(service.classifier, built.files.values())
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == LABELLED and pets[1].breed_id == 19
    assert '"19"' in groups[1].written_values, "written_values hold what the record holds"
    for _ in range(2):
        assert service.run_pass().status == "finished"
        _, groups, _ = _rows(service)
        assert groups[1].status == LABELLED and groups[1].staff_values is None
    service.engine.dispose()
    built.service.engine.dispose()


def test_a_reviewed_breed_waiting_for_a_missing_record_is_written_when_it_is_back(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    service = built.service
    ScriptedModel(service.classifier, built.files.values())
    assert service.run_pass().status == "finished"
    with service.engine.begin() as conn:
        conn.execute(update(group).where(group.c.group_id == "2").values(reviewed_breed="beagle"))
        conn.execute(text("DELETE FROM pets WHERE id = 2"))
    assert service.run_pass().status == "finished"
    _, groups, _ = _rows(service)
    assert groups[2].status == GONE and groups[2].reviewed_breed == "beagle"
    with service.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO pets (id, breed_id, breed_name) VALUES (2, 442, 'Mixed Breed')")
        )
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[2].status == REVIEWED and (pets[2].breed_id, pets[2].breed_name) == (19, "Beagle")
    service.engine.dispose()


def test_staff_agreement_is_compared_as_numbers_where_the_column_type_is_not_at_hand() -> None:
    lookup = {"beagle": {"BreedID": "0019", "BreedName": "Beagle"}}.get
    row = {
        "breed": "beagle",
        "reviewed_breed": None,
        "refused_breed": None,
        "staff_values": '{"breedid": "19", "breedname": "Beagle"}',
        "written_values": None,
        "audit": 1,
        "review_reason": "audit",
    }
    assert animal_verdict(row, lookup) == (False, True, True)
    assert animal_verdict({**row, "staff_values": '{"breedid": "188"}'}, lookup)[2] is False
    assert same_value_text("19", "0019") and same_value_text("1.50", "1.5")
    assert not same_value_text("Beagle", "beagle") and not same_value_text(None, "19")
    # A column stored as null is never read back as the text "None".
    assert parse_values('{"BreedID": "19", "Breed2ID": null}') == {"BreedID": "19"}


def test_a_lock_timeout_covers_only_its_block(server_db_url: str) -> None:
    engine = create_engine(server_db_url)
    show = (
        "SELECT current_setting('lock_timeout')"
        if engine.dialect.name == "postgresql"
        else "SELECT @@SESSION.innodb_lock_wait_timeout"
    )
    with Session(engine) as session, session.begin():
        before = session.scalar(text(show))
        with lock_timeout(session, 2):
            assert str(session.scalar(text(show))) in ("2s", "2000ms", "2")
        assert session.scalar(text(show)) == before
    engine.dispose()
