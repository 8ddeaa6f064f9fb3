"""A write to the shelter's record changes at most one record, and `check` refuses the
configurations that would break that or fake staff decisions - on every server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labeler.service import checks
from labeler.service.app import Service
from labeler.store.schema import FAILED, LABELLED
from tests.test_shelter_errors import _build, _rows
from tests.test_shelter_helpers import ScriptedModel


def _duplicate_key_target(db_url: str) -> None:
    """A copy of `pets` without a primary key, in which pet 1's id is on two records."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE pets_dup (id INTEGER, breed_id INTEGER, breed_name VARCHAR(20))")
        )
        for pet in (1, 1, 2, 3, 4):
            conn.execute(text("INSERT INTO pets_dup VALUES (:i, 442, 'Mixed Breed')"), {"i": pet})
    engine.dispose()


def _dup_rows(service: Service) -> list[tuple[int, int, str]]:
    with service.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, breed_id, breed_name FROM pets_dup ORDER BY id"))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_key_on_two_records_writes_neither_and_fails_only_that_animal(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    _duplicate_key_target(db_url)
    service = Service.build(built.service.settings.model_copy(update={"target_table": "pets_dup"}))
    ScriptedModel(service.classifier, built.files.values())
    assert service.run_pass().status == "finished"
    _, groups, _ = _rows(service)
    assert groups[1].status == FAILED
    assert "LABELER_TARGET_KEY_COLUMN" in groups[1].last_error
    rows = _dup_rows(service)
    assert [r for r in rows if r[0] == 1] == [(1, 442, "Mixed Breed")] * 2
    # The other animals, each on one record, are written as usual.
    assert groups[2].status == LABELLED and (2, 188, "Shih Tzu") in rows
    service.engine.dispose()
    built.service.engine.dispose()


def test_check_refuses_a_key_that_is_not_unique(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    _duplicate_key_target(db_url)
    settings = built.service.settings.model_copy(
        update={"target_table": "pets_dup", "breed_map": _fitting_map(tmp_path)}
    )
    with pytest.raises(Exception, match="LABELER_TARGET_KEY_COLUMN must name a unique key"):
        checks.write_back(checks.CheckContext(settings, built.service.engine))
    assert all(r[1] == 442 for r in _dup_rows(built.service))
    # The same settings on the real table (unique ids) pass.
    fine = built.service.settings.model_copy(update={"breed_map": _fitting_map(tmp_path)})
    assert "works" in checks.write_back(checks.CheckContext(fine, built.service.engine))
    built.service.engine.dispose()


def test_check_refuses_undecided_values_no_record_holds(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    settings = built.service.settings.model_copy(
        update={"target_undecided": {"breed_id": "4420"}, "breed_map": _fitting_map(tmp_path)}
    )
    with pytest.raises(Exception, match="LABELER_TARGET_UNDECIDED"):
        checks.write_back(checks.CheckContext(settings, built.service.engine))
    built.service.engine.dispose()


def _fitting_map(tmp_path: Path) -> Path:
    """A breed map every value of which fits `pets` (the shared one has misfits on purpose)."""
    path = tmp_path / "fitting-map.csv"
    path.write_text("label,breed_id,breed_name\nbeagle,19,Beagle\nShih-Tzu,188,Shih Tzu\n")
    return path


def test_check_tries_the_per_photo_write_back_into_the_source(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    built = _build(db_url, tmp_path, tiny_artifact)
    engine = built.service.engine
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE pet_photos ADD COLUMN breed VARCHAR(40)"))
        conn.execute(
            text(
                "CREATE VIEW pet_photo_join AS SELECT DISTINCT p.id, p.species, p.photo, p.breed "
                "FROM pet_photos p JOIN pets ON pets.id = p.pet_id"
            )
        )
    base = {"target_table": None, "source_group_column": None, "writeback_breed_column": "breed"}
    fine = built.service.settings.model_copy(update={**base, "source_table": "pet_photos"})
    assert "per-photo write-back into pet_photos works" in checks.write_back(
        checks.CheckContext(fine, engine)
    )
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT COUNT(*) FROM pet_photos WHERE breed IS NOT NULL")).scalar()
            == 0
        )
    view = built.service.settings.model_copy(update={**base, "source_table": "pet_photo_join"})
    with pytest.raises(RuntimeError, match="LABELER_WRITEBACK_BREED_COLUMN='breed'"):
        checks.write_back(checks.CheckContext(view, engine))
    built.service.engine.dispose()
