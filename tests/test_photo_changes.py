"""A photo replaced under the same id (staff rotate, crop or swap it; shelter systems keep the
media id) is labelled again when the source's change marker says so, and its animal's answer
follows; an animal staff decided keeps their decision; unchanged photos are never read again -
on every server."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

from labeler.config.settings import Settings
from labeler.service.app import Service
from labeler.store import discovery, migrate
from labeler.store.schema import (
    GONE,
    GROUP_REVIEW_VIEW,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    group,
    photo,
)
from tests.helpers import FULLFRAME, require
from tests.test_shelter_helpers import ScriptedModel

BEAGLE = "n02088364-beagle"
SHIH_TZU = "n02086240-Shih-Tzu"
SAMOYED = "n02111889-Samoyed"
MAP = """label,breed_id,breed_name
beagle,19,Beagle
Shih-Tzu,188,Shih Tzu
golden_retriever,96,Golden Retriever
Samoyed,176,Samoyed
"""
FIRST = datetime(2026, 11, 1, 9, 30)
LATER = datetime(2026, 12, 2, 16, 5, 7)


def _photos(folder: str) -> list[Path]:
    return sorted((require(FULLFRAME) / folder).glob("*.JPEG"))


@dataclass
class Shelter:
    url: str
    settings: Settings
    files: list[Path]  # every photo the scripted model may see

    def service(self, **changes: Any) -> tuple[Service, ScriptedModel]:
        service = Service.build(self.settings.model_copy(update=changes))
        return service, ScriptedModel(service.classifier, self.files)

    def replace(self, media_id: int, path: Path, *, bump: bool = True) -> None:
        """What the shelter's software does when staff replace a photo."""
        engine = create_engine(self.url)
        with engine.begin() as conn:
            values = {"i": media_id, "p": _b64(path), "d": LATER}
            changed = ", changed = :d" if bump else ""
            conn.execute(text(f"UPDATE media SET photo = :p{changed} WHERE id = :i"), values)
        engine.dispose()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _shelter(db_url: str, tmp_path: Path, artifact: Path) -> Shelter:
    engine = create_engine(db_url)
    dialect = engine.dialect.name
    photo_type = "LONGTEXT" if dialect == "mysql" else "TEXT"
    date_type = "TIMESTAMP" if dialect == "postgresql" else "DATETIME"
    beagles, shih_tzus = _photos(BEAGLE), _photos(SHIH_TZU)
    media = {10: beagles[0], 11: beagles[1], 20: shih_tzus[0], 30: shih_tzus[1]}
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE pets (id INTEGER PRIMARY KEY, breed_id INTEGER NOT NULL, "
                "breed_name VARCHAR(40))"
            )
        )
        conn.execute(
            text(
                f"CREATE TABLE media (id INTEGER PRIMARY KEY, pet_id INTEGER, "
                f"photo {photo_type}, changed {date_type})"
            )
        )
        for pet in (1, 2, 3):
            conn.execute(text("INSERT INTO pets VALUES (:i, 442, 'Mixed Breed')"), {"i": pet})
        conn.execute(
            text("INSERT INTO media VALUES (:i, :pet, :p, :d)"),
            [{"i": i, "pet": i // 10, "p": _b64(f), "d": FIRST} for i, f in media.items()],
        )
    engine.dispose()
    breed_map = tmp_path / "map.csv"
    breed_map.write_text(MAP)
    settings = Settings(
        database_url=db_url,
        source_table="media",
        source_image_column="photo",
        image_kind="base64",
        source_group_column="pet_id",
        target_table="pets",
        target_key_column="id",
        breed_map=breed_map,
        target_undecided="breed_id=442,breed_name=Mixed Breed",
        model_dir=artifact,
        audit_share=0.0,
        db_connect_retries=0,
    )
    files = beagles[:2] + shih_tzus[:2] + _photos(SAMOYED)[:2]
    shelter = Shelter(db_url, settings, files)
    service, _ = shelter.service()
    migrate.upgrade(service.engine)
    service.engine.dispose()
    return shelter


def _state(service: Service) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    with service.engine.connect() as conn:
        photos = {int(r.photo_id): r for r in conn.execute(select(photo))}
        groups = {int(r.group_id): r for r in conn.execute(select(group))}
        pets = {int(r[0]): (int(r[1]), r[2]) for r in conn.execute(text("SELECT * FROM pets"))}
    return photos, groups, pets


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_replaced_photo_is_labelled_again_and_its_animal_follows(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    shelter = _shelter(db_url, tmp_path, tiny_artifact)
    beagles, shih_tzus, samoyeds = _photos(BEAGLE), _photos(SHIH_TZU), _photos(SAMOYED)

    # Labelled before the change marker was configured: a fingerprint of what was classified.
    service, _ = shelter.service()
    assert service.run_pass().status == "finished"
    photos, groups, pets = _state(service)
    assert pets == {1: (19, "Beagle"), 2: (188, "Shih Tzu"), 3: (188, "Shih Tzu")}
    assert photos[10].fingerprint == _sha(beagles[0])
    assert photos[10].change_marker is None
    service.engine.dispose()

    # The setting is switched on: the first pass records the markers and reads no photo.
    service, model = shelter.service(source_change_column="changed")
    summary = service.run_pass()
    assert summary.status == "finished" and summary.processed == 0
    assert model.seen == []
    photos, _, _ = _state(service)
    assert {p.change_marker is not None for p in photos.values()} == {True}
    assert photos[10].change_marker.startswith("v:2026-11-01")  # type: ignore[union-attr]

    # Staff replace both of pet 1's photos (a Samoyed after all), and pet 2's photo, but pet
    # 2's breed was set by staff in their own tool meanwhile. Pet 3's photo is swapped by
    # something that leaves the marker alone: it is not read again (no pass reads every photo).
    shelter.replace(10, samoyeds[0])
    shelter.replace(11, samoyeds[1])
    shelter.replace(20, beagles[0])
    shelter.replace(30, beagles[1], bump=False)
    with service.engine.begin() as conn:
        conn.execute(
            text("UPDATE pets SET breed_id = 96, breed_name = 'Golden Retriever' WHERE id = 2")
        )

    summary = service.run_pass()
    assert summary.status == "finished"
    assert sorted(model.seen) == sorted([samoyeds[0], samoyeds[1], beagles[0]])
    photos, groups, pets = _state(service)
    assert {pid: photos[pid].breed for pid in (10, 11, 20)} == {
        10: "Samoyed",
        11: "Samoyed",
        20: "beagle",
    }
    assert photos[10].status == LABELLED and photos[10].last_error is None
    assert photos[10].fingerprint == _sha(samoyeds[0])
    assert photos[10].change_marker.startswith("v:2026-12-02")  # type: ignore[union-attr]
    # The animal's answer is recomputed from its new photos and written over labeler's own.
    assert groups[1].status == LABELLED and groups[1].breed == "Samoyed"
    assert pets[1] == (176, "Samoyed")
    # Staff's decision stands: the changed photo never overwrites it.
    assert groups[2].status == REVIEWED
    assert pets[2] == (96, "Golden Retriever")
    # Unchanged marker: neither read nor relabelled.
    assert photos[30].breed == "Shih-Tzu" and photos[30].fingerprint == _sha(shih_tzus[1])
    assert pets[3] == (188, "Shih Tzu")

    # Nothing changed since: the next pass reads nothing.
    model.seen.clear()
    summary = service.run_pass()
    assert summary.processed == 0 and model.seen == []
    assert {p.status for p in _state(service)[0].values()} != {PENDING}
    service.engine.dispose()


def test_one_answer_per_photo_a_replaced_photo_is_relabelled_a_reviewed_one_is_not(
    db_url: str, tiny_artifact: Path
) -> None:
    beagles, shih_tzus, samoyeds = _photos(BEAGLE), _photos(SHIH_TZU), _photos(SAMOYED)
    engine = create_engine(db_url)
    dialect = engine.dialect.name
    photo_type = "LONGTEXT" if dialect == "mysql" else "TEXT"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE media (id INTEGER PRIMARY KEY, photo {photo_type}, "
                "changed INTEGER, breed VARCHAR(64))"
            )
        )
        conn.execute(
            text("INSERT INTO media (id, photo, changed) VALUES (:i, :p, 1)"),
            [{"i": 1, "p": _b64(beagles[0])}, {"i": 2, "p": _b64(shih_tzus[0])}],
        )
    engine.dispose()
    settings = Settings(
        database_url=db_url,
        source_table="media",
        source_image_column="photo",
        image_kind="base64",
        source_change_column="changed",  # e.g. a version number the shelter's software bumps
        writeback_breed_column="breed",
        model_dir=tiny_artifact,
        review_threshold=0.0,
        review_margin=0.0,
        audit_share=0.0,
    )
    shelter = Shelter(db_url, settings, beagles[:1] + shih_tzus[:1] + samoyeds[:2])
    service, model = shelter.service()
    migrate.upgrade(service.engine)
    assert service.run_pass().processed == 2
    with service.engine.begin() as conn:
        conn.execute(photo.update().where(photo.c.photo_id == "2").values(reviewed_breed="Lhasa"))
        for media_id, path in ((1, samoyeds[0]), (2, samoyeds[1])):
            conn.execute(
                text("UPDATE media SET photo = :p, changed = changed + 1 WHERE id = :i"),
                {"p": _b64(path), "i": media_id},
            )
    model.seen.clear()
    assert service.run_pass().status == "finished"
    assert model.seen == [samoyeds[0]]  # the reviewed photo is not read again
    with service.engine.connect() as conn:
        photos = {r.photo_id: r for r in conn.execute(select(photo))}
        written = dict(conn.execute(text("SELECT id, breed FROM media")).all())
    assert photos["1"].breed == "Samoyed" and photos["1"].change_marker == "v:2"
    assert photos["1"].fingerprint == _sha(samoyeds[0])
    assert written[1] == "Samoyed"  # labeler's own value in the source is corrected
    assert photos["2"].reviewed_breed == "Lhasa" and photos["2"].breed == "Shih-Tzu"
    assert written[2] == "Shih-Tzu"
    service.engine.dispose()


def _queue(service: Service) -> set[int]:
    with service.engine.connect() as conn:
        return {int(r[0]) for r in conn.execute(text(f"SELECT group_id FROM {GROUP_REVIEW_VIEW}"))}


def test_deleted_and_merged_animals_leave_the_queue_and_no_photo_is_read_again(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    shelter = _shelter(db_url, tmp_path, tiny_artifact)
    shih_tzus = _photos(SHIH_TZU)
    service, model = shelter.service()
    # Pet 3's only photo shows a breed the map leaves out: pet 3 waits in the review queue.
    model.script[shih_tzus[1]] = {"Border_terrier": 0.9}
    assert service.run_pass().status == "finished"
    _, groups, pets = _state(service)
    assert groups[3].status == NEEDS_REVIEW and _queue(service) == {3}
    assert groups[1].status == groups[2].status == LABELLED
    assert pets[1] == (19, "Beagle")

    # In the shelter's software: pet 3's record is deleted (its photo stays, as a system that
    # keeps photos apart from records may leave it), one of pet 1's photos is deleted, and pet
    # 2 is merged into pet 1: its photo moves to pet 1, its record is deleted.
    engine = create_engine(shelter.url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM pets WHERE id = 3"))
        conn.execute(text("DELETE FROM media WHERE id = 11"))
        conn.execute(text("UPDATE media SET pet_id = 1 WHERE pet_id = 2"))
        conn.execute(text("DELETE FROM pets WHERE id = 2"))
    engine.dispose()
    model.seen.clear()
    summary = service.run_pass()
    assert summary.status == "finished" and summary.processed == 0
    assert model.seen == [], "photos already labelled are never read again"
    photos, groups, pets = _state(service)
    assert photos[11].status == GONE and photos[11].last_error == discovery.VANISHED_REASON
    assert photos[20].group_id == "1" and photos[20].status == LABELLED
    # Pet 1 now has a beagle and a Shih Tzu photo: decided again, they disagree, so it goes to
    # review and labeler takes its own beagle back off the record.
    assert groups[1].status == NEEDS_REVIEW and groups[1].photos_used == 2
    assert "disagree" in groups[1].review_reason
    assert pets == {1: (442, "Mixed Breed")}, "nothing is written to a record that is gone"
    # The merged and the deleted animal leave the queue, and say why.
    assert groups[2].status == GONE and groups[3].status == GONE
    assert "no pets record has id = 3" in groups[3].last_error
    assert "deleted or merged" in groups[2].last_error
    assert _queue(service) == {1}

    # Nothing changed since: the next pass reads nothing and changes nothing.
    before = _state(service)
    summary = service.run_pass()
    assert summary.processed == 0 and model.seen == []
    after = _state(service)
    assert {k: (r.status, r.group_id) for k, r in after[0].items()} == {
        k: (r.status, r.group_id) for k, r in before[0].items()
    }
    assert {k: r.status for k, r in after[1].items()} == {k: r.status for k, r in before[1].items()}

    # Pet 3's record is restored under the same id (its photo never left): decided again, from
    # the scores kept, it is back in the queue; the merged-away pet 2 has no photo and stays gone.
    engine = create_engine(shelter.url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pets VALUES (3, 442, 'Mixed Breed')"))
    engine.dispose()
    summary = service.run_pass()
    assert summary.processed == 0 and model.seen == []
    _, groups, pets = _state(service)
    assert groups[3].status == NEEDS_REVIEW and groups[3].last_error is None
    assert groups[2].status == GONE
    assert _queue(service) == {1, 3}
    assert pets[3] == (442, "Mixed Breed")
    service.engine.dispose()
