"""Stamp columns (LABELER_TARGET_STAMP): every write to the shelter's record also sets who
changed it, when (the database's own clock) and a version that changes, as the shelter's own
software does on a save; the stamps never make labeler's write look like a staff decision."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from labeler.config.settings import Settings
from labeler.service import checks
from labeler.service.app import Service
from labeler.shelter.source import SourceError
from labeler.shelter.target import reflect_target
from labeler.store.schema import FAILED, LABELLED, group
from tests.test_shelter_errors import _build, _rows
from tests.test_shelter_helpers import ScriptedModel

STAMP = {"changed_by": "labeler", "changed_at": "now", "version": "increment"}
INTAKE = datetime(2026, 1, 2, 3, 4, 5)


def _add_stamp_columns(url: str) -> None:
    engine = create_engine(url)
    date_type = {"postgresql": "TIMESTAMP", "mysql": "DATETIME"}.get(
        engine.dialect.name, "TIMESTAMP"
    )
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE pets ADD COLUMN changed_by VARCHAR(20)"))
        conn.execute(text(f"ALTER TABLE pets ADD COLUMN changed_at {date_type}"))
        conn.execute(text("ALTER TABLE pets ADD COLUMN version INTEGER"))
        conn.execute(
            text("UPDATE pets SET changed_by = 'intake', changed_at = :d, version = 7"),
            {"d": INTAKE},
        )
        conn.execute(text("UPDATE pets SET version = NULL WHERE id = 2"))
    engine.dispose()


def _stamped(db_url: str, tmp_path: Path, artifact: Path) -> tuple[Service, list[Path]]:
    built = _build(db_url, tmp_path, artifact)
    built.service.engine.dispose()
    _add_stamp_columns(db_url)
    settings = built.service.settings.model_copy(update={"target_stamp": STAMP})
    service = Service.build(settings)
    files = list(built.files.values())
    ScriptedModel(service.classifier, files)
    return service, files


def _stamped_service(db_url: str, tmp_path: Path, artifact: Path) -> Service:
    return _stamped(db_url, tmp_path, artifact)[0]


def _db_now(service: Service) -> datetime:
    with service.engine.connect() as conn:
        value = conn.execute(text("SELECT CURRENT_TIMESTAMP")).scalar()
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=None)


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def test_every_write_stamps_the_record_and_only_a_write(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    service = _stamped_service(db_url, tmp_path, tiny_artifact)
    before = _db_now(service)
    assert service.run_pass().status == "finished"
    after = _db_now(service)
    _, groups, pets = _rows(service)
    # Pets 1 and 2 are written: each stamped once, the version one more (NULL counts as 0).
    for pet, version in ((1, 8), (2, 1)):
        assert groups[pet].status == LABELLED
        row = pets[pet]
        assert row.changed_by == "labeler" and row.version == version
        stamped = _as_datetime(row.changed_at)
        assert before - timedelta(seconds=2) <= stamped <= after + timedelta(seconds=2)
    # Pets 3 and 4: the write was refused, so no stamp either (the same statement).
    for pet in (3, 4):
        assert groups[pet].status == FAILED
        row = pets[pet]
        assert (row.changed_by, row.version, row.breed_id) == ("intake", 7, 442)
        assert _as_datetime(row.changed_at) == INTAKE

    # A second pass has nothing to write: the stamps stay, and the stamped records are still
    # labeler's own (no staff decision read into the stamp columns).
    assert service.run_pass().status == "finished"
    _, again, pets_again = _rows(service)
    for pet in (1, 2):
        assert pets_again[pet].version == pets[pet].version
        assert again[pet].status == LABELLED and again[pet].staff_values is None
    service.engine.dispose()


def test_a_save_that_only_changes_the_stamps_is_no_staff_decision(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    """Staff save the animal in their own screen without touching its breed: their software
    stamps the record; the breed is still labeler's and labeler may still correct it."""
    service, files = _stamped(db_url, tmp_path, tiny_artifact)
    assert service.run_pass().status == "finished"
    with service.engine.begin() as conn:
        conn.execute(text("UPDATE pets SET changed_by = 'anna', version = 143015 WHERE id = 1"))
    assert service.run_pass().status == "finished"
    _, groups, pets = _rows(service)
    assert groups[1].status == LABELLED and groups[1].staff_values is None
    assert (pets[1].breed_id, pets[1].changed_by, pets[1].version) == (19, "anna", 143015)

    # A withdrawal (the answer goes to review on a relabel) is a write too: stamped.
    with service.engine.begin() as conn:
        conn.execute(text("UPDATE labeler_photo SET status = 'pending' WHERE group_id = '1'"))
        conn.execute(text("UPDATE labeler_group SET status = 'pending' WHERE group_id = '1'"))
    strict = Service.build(service.settings.model_copy(update={"review_threshold": 0.99}))
    ScriptedModel(strict.classifier, files)
    assert strict.run_pass().status == "finished"
    _, groups, pets = _rows(strict)
    assert groups[1].status != LABELLED and groups[1].staff_values is None
    assert (pets[1].breed_id, pets[1].changed_by, pets[1].version) == (442, "labeler", 143016)
    strict.engine.dispose()
    service.engine.dispose()


def test_check_tries_the_stamps_and_rolls_them_back(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    service = _stamped_service(db_url, tmp_path, tiny_artifact)
    fitting = tmp_path / "fitting-map.csv"
    fitting.write_text("label,breed_id,breed_name\nbeagle,19,Beagle\nShih-Tzu,188,Shih Tzu\n")
    settings = service.settings.model_copy(update={"breed_map": fitting})
    assert "works" in checks.write_back(checks.CheckContext(settings, service.engine))
    _, _, pets = _rows(service)
    assert all(p.changed_by == "intake" and p.breed_id == 442 for p in pets.values())
    service.engine.dispose()


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        ("nosuch=labeler", "does not have"),
        ("breed_name=labeler", "breed map already sets"),
        ("ID=5", "key column"),
        ("version=now", "needs a date/time column"),
        ("changed_by=increment", "needs an integer column"),
        ("version=seven", "does not fit"),
    ],
)
def test_stamps_that_cannot_work_are_refused_at_start_up(
    tmp_path: Path, stamp: str, message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'pets.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE pets (id INTEGER PRIMARY KEY, breed_id INTEGER, "
                "breed_name VARCHAR(20), changed_by VARCHAR(20), changed_at TIMESTAMP, "
                "version INTEGER)"
            )
        )
    breed_map = tmp_path / "map.csv"
    breed_map.write_text("label,breed_id,breed_name\nbeagle,19,Beagle\n")
    settings = Settings(
        database_url=url,
        source_group_column="pet_id",
        target_table="pets",
        target_key_column="id",
        breed_map=breed_map,
        target_undecided="breed_id=442",
        target_stamp=stamp,
    )
    with engine.connect() as conn, pytest.raises(SourceError, match=message) as err:
        reflect_target(conn, settings)
    assert "LABELER_TARGET_STAMP" in str(err.value) or "LABELER_TARGET_KEY" in str(err.value)
    # The same table takes the stamps spelt in another letter case.
    fine = settings.model_copy(
        update={"target_stamp": {"Changed_By": "labeler", "CHANGED_AT": "now"}}
    )
    with engine.connect() as conn:
        target = reflect_target(conn, fine)
    assert target is not None and dict(target.stamps) == {
        "changed_by": "labeler",
        "changed_at": "now",
    }
    engine.dispose()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_stamp": "LastChangedBy"}, "Column=value"),
        ({"target_stamp": "LastChangedBy="}, "has no value"),
        ({"target_stamp": "a=1,A=2"}, "twice"),
        ({"target_stamp": "bad name=1"}, "plain SQL identifier"),
    ],
)
def test_stamp_settings_are_checked(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_stamp needs target_table"):
        Settings(target_stamp="LastChangedBy=labeler")
    parsed = Settings(
        target_table="animal",
        target_key_column="ID",
        source_group_column="animal_id",
        breed_map=Path("map.csv"),
        target_undecided="BreedID=442",
        target_stamp="LastChangedBy=labeler, LastChangedDate=now,RecordVersion=increment",
    )
    assert parsed.target_stamp == {
        "LastChangedBy": "labeler",
        "LastChangedDate": "now",
        "RecordVersion": "increment",
    }


def test_groups_table_untouched_by_stamps(db_url: str, tmp_path: Path, tiny_artifact: Path) -> None:
    """written_values holds only the breed map's columns: the stamps are never compared."""
    service = _stamped_service(db_url, tmp_path, tiny_artifact)
    assert service.run_pass().status == "finished"
    with service.engine.connect() as conn:
        written = {
            r.group_id: r.written_values
            for r in conn.execute(select(group).where(group.c.written_values.is_not(None)))
        }
    assert written and all("changed" not in w and "version" not in w for w in written.values())
    service.engine.dispose()
