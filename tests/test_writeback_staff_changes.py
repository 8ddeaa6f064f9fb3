"""Any change a person makes to the record after labeler's write is a staff decision, whatever
its value: setting it back to the undecided value (an undo) too. And labeler recognises its own
write when the map spells a value differently from how the column holds it (``0019`` in an
integer column), so its own write is never taken for a staff decision - on every server."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from labeler.store import results
from labeler.store.engine import session_factory, utc_now
from labeler.store.schema import LABELLED, REVIEWED
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
