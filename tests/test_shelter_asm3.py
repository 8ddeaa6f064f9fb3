"""Shelter fit on an ASM3-like database with the real sample photos, on every server: one answer
per animal, written to the animal's own record in ASM3's vocabulary, staff decisions respected
both ways, and nothing else touched."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from labeler.config.settings import Settings
from labeler.demo.shelter import MIXED_BREED_ID, MIXED_BREED_NAME, STAFF_BREED_ID
from labeler.labelling.passes import SourceChanged
from labeler.service.app import Service
from labeler.store import migrate, results
from labeler.store.engine import session_factory, utc_now
from labeler.store.schema import (
    FAILED,
    GONE,
    GROUP_REVIEW_VIEW,
    LABELLED,
    NEEDS_REVIEW,
    REVIEWED,
    group,
    photo,
)
from tests.asm3_fixture import Asm3Shelter, build_asm3
from tests.test_shelter_helpers import ScriptedModel, sure

UNMAPPED = "Samoyed"  # dropped from the test's copy of the ASM3 map


def _breed_map_without(tmp_path: Path, label: str) -> Path:
    from labeler.demo.shelter import default_breed_map

    lines = default_breed_map().read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"{label},")]
    assert len(kept) == len(lines) - 1
    path = tmp_path / "asm3-map.csv"
    path.write_text("\n".join(kept) + "\n")
    return path


def _service(shelter: Asm3Shelter, tiny_artifact: Path, breed_map: Path, **extra: Any) -> Service:
    values = {k.removeprefix("LABELER_").lower(): v for k, v in shelter.settings.items()}
    values.update(breed_map=str(breed_map), model_dir=tiny_artifact, batch_size=8)
    values.update(extra)
    values = {k: v for k, v in values.items() if k in Settings.model_fields}
    values.setdefault("audit_share", 0.0)  # no random audits: the test checks every decision
    return Service.build(Settings(**values))


def _expected_values(breed_map: Path, label: str) -> dict[str, str] | None:
    from labeler.shelter.breedmap import load_breed_map

    return load_breed_map(breed_map).lookup(label)


def _animals(shelter: Asm3Shelter) -> dict[int, dict[str, Any]]:
    engine = shelter.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT ID, BreedID, BreedName FROM animal")).all()
    finally:
        engine.dispose()
    return {int(r[0]): {"BreedID": int(r[1]), "BreedName": r[2]} for r in rows}


def _groups(service: Service) -> dict[int, dict[str, Any]]:
    with service.engine.connect() as conn:
        return {int(r.group_id): dict(r._mapping) for r in conn.execute(select(group))}


@pytest.fixture
def asm3(db_url: str, tmp_path: Path, tiny_artifact: Path) -> tuple[Asm3Shelter, Service, Path]:
    shelter = build_asm3(db_url, tmp_path, storage="base64", per_breed=3, photos_per_dog=3)
    breed_map = _breed_map_without(tmp_path, UNMAPPED)
    service = _service(shelter, tiny_artifact, breed_map)
    migrate.upgrade(service.engine)
    yield shelter, service, breed_map
    service.engine.dispose()


def _set_breed(shelter: Asm3Shelter, animal: int, breed_id: int, name: str) -> None:
    engine = shelter.engine()
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE animal SET BreedID = :b, Breed2ID = :b, CrossBreed = 0, "
                    "BreedName = :n WHERE ID = :id"
                ),
                {"b": breed_id, "n": name, "id": animal},
            )
    finally:
        engine.dispose()


def test_one_pass_writes_each_animals_breed(asm3: tuple[Asm3Shelter, Service, Path]) -> None:
    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    model = ScriptedModel(service.classifier, seeded.photo_files.values())
    before = shelter.snapshot()
    animals_before = _animals(shelter)

    # A dog staff name while the pass runs: its photos are already claimed, not yet saved.
    plain = [d for d, label in seeded.dogs.items() if label not in ("dingo", UNMAPPED)]
    during = plain[0]
    model.before_first_call = lambda: _set_breed(shelter, during, 19, "Beagle")

    summary = service.run_pass()
    assert summary.status == "finished"

    animals = _animals(shelter)
    groups = _groups(service)
    with service.engine.connect() as conn:
        photo_rows = {int(r.photo_id): r for r in conn.execute(select(photo))}
        queue = {int(r[0]): r for r in conn.execute(text(f"SELECT * FROM {GROUP_REVIEW_VIEW}"))}

    # Only dog photos were read: cats and documents never reached labeler.
    assert set(photo_rows) == set(seeded.dog_photo_ids)
    assert not set(photo_rows) & set(seeded.document_media)
    for cat in seeded.cats:
        assert cat not in groups and animals[cat] == animals_before[cat]

    for dog, label in seeded.dogs.items():
        g = groups[dog]
        if dog == during:
            # Staff's choice stands, is recorded as theirs, and closes the animal's review.
            assert animals[dog] == {"BreedID": 19, "BreedName": "Beagle"}
            assert g["status"] == REVIEWED and g["staff_values"]
            continue
        assert g["photos_used"] == len(seeded.photos[dog])
        assert g["photo_ids"] == ",".join(str(m) for m in sorted(seeded.photos[dog], key=str))
        if label == "dingo":
            assert g["status"] == NEEDS_REVIEW and "not a dog breed" in g["review_reason"]
        elif label == UNMAPPED:
            assert g["status"] == NEEDS_REVIEW and "breed map" in g["review_reason"]
        else:
            assert g["status"] == LABELLED, (dog, label, g["review_reason"])
            want = _expected_values(breed_map, label)
            assert want is not None
            assert animals[dog] == {"BreedID": int(want["BreedID"]), "BreedName": want["BreedName"]}
            assert json.loads(g["written_values"]) == {
                k.lower() if shelter.dialect == "postgresql" else k: v for k, v in want.items()
            }
            assert g["breed"] == label and g["confidence"] > 0.5
            continue
        assert animals[dog] == animals_before[dog], "an animal in review keeps its record"
        assert dog in queue
        assert queue[dog].photo_ids and queue[dog].context

    mixed = groups[seeded.mixed_dog]
    assert mixed["status"] == NEEDS_REVIEW and "disagree" in mixed["review_reason"]
    assert animals[seeded.mixed_dog] == animals_before[seeded.mixed_dog]
    assert "Patch" in (queue[seeded.mixed_dog].context or "")

    # Staff set the breed before labeler ever ran: untouched, and recorded as a staff decision.
    staff = groups[seeded.staff_dog]
    assert animals[seeded.staff_dog]["BreedID"] == STAFF_BREED_ID
    assert staff["status"] == REVIEWED and staff["written_values"] is None
    assert seeded.no_photo_dog not in groups

    # Nothing but BreedID/BreedName of the labelled dogs changed in the shelter's tables.
    after = shelter.snapshot()
    for table in ("species", "breed", "media", "dbfs"):
        assert after[table] == before[table], table
    changed = {a for a in animals if animals[a] != animals_before[a]}
    assert changed == {d for d, g in groups.items() if g["status"] == LABELLED} | {during}
    assert len(after["animal"]) == len(before["animal"])

    # A second pass changes nothing.
    again = service.run_pass()
    assert again.discovered == 0 and again.processed == 0
    assert _animals(shelter) == animals


def test_staff_decisions_flow_both_ways(asm3: tuple[Asm3Shelter, Service, Path]) -> None:
    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    model = ScriptedModel(service.classifier, seeded.photo_files.values())
    assert service.run_pass().status == "finished"
    groups = _groups(service)
    labelled = sorted(d for d, g in groups.items() if g["status"] == LABELLED)
    assert len(labelled) >= 3

    # A reviewed breed set on labeler's side goes to the record through the map.
    with service.engine.begin() as conn:
        conn.execute(
            update(group)
            .where(group.c.group_id == str(seeded.mixed_dog))
            .values(reviewed_breed="beagle", reviewed_by="anna")
        )
    # Staff change a labelled dog's breed in ASM3's own screen.
    staff_choice = (188, "Shih Tzu") if seeded.dogs[labelled[0]] != "Shih-Tzu" else (19, "Beagle")
    _set_breed(shelter, labelled[0], *staff_choice)

    # Staff close an animal on labeler's side without naming a breed.
    closed = labelled[3]
    with service.engine.begin() as conn:
        conn.execute(update(group).where(group.c.group_id == str(closed)).values(status=REVIEWED))
    closed_before = _animals(shelter)[closed]
    for media in seeded.photos[closed]:
        model.script[seeded.photo_files[media]] = sure("Border_terrier")

    # The model changes its mind about two labelled dogs; relabel everything.
    corrected, withdrawn = labelled[1], labelled[2]
    for media in seeded.photos[corrected]:
        model.script[seeded.photo_files[media]] = sure("Border_terrier")
    for media in seeded.photos[withdrawn]:
        model.script[seeded.photo_files[media]] = sure("beagle", 0.05)
    for media in seeded.photos[labelled[0]]:
        model.script[seeded.photo_files[media]] = sure("Border_terrier")
    with session_factory(service.engine).begin() as session:
        assert results.relabel(session, results.RelabelSelection(everything=True), utc_now()) > 0
    assert service.run_pass().status == "finished"

    animals = _animals(shelter)
    groups = _groups(service)
    beagle = _expected_values(breed_map, "beagle")
    border = _expected_values(breed_map, "Border_terrier")
    assert beagle and border
    assert animals[seeded.mixed_dog] == {"BreedID": int(beagle["BreedID"]), "BreedName": "Beagle"}
    assert groups[seeded.mixed_dog]["status"] == REVIEWED
    assert animals[corrected] == {
        "BreedID": int(border["BreedID"]),
        "BreedName": border["BreedName"],
    }
    assert animals[withdrawn] == {"BreedID": MIXED_BREED_ID, "BreedName": MIXED_BREED_NAME}
    assert (
        groups[withdrawn]["status"] == NEEDS_REVIEW and groups[withdrawn]["written_values"] is None
    )
    # Staff's own choice survives the relabel although the model now says Border terrier.
    assert animals[labelled[0]] == dict(zip(("BreedID", "BreedName"), staff_choice, strict=True))
    assert groups[labelled[0]]["status"] == REVIEWED
    assert str(staff_choice[0]) in groups[labelled[0]]["staff_values"]
    assert animals[seeded.staff_dog]["BreedID"] == STAFF_BREED_ID
    assert animals[closed] == closed_before and groups[closed]["status"] == REVIEWED


def test_source_change_is_refused_and_vanished_photos_are_gone(
    asm3: tuple[Asm3Shelter, Service, Path],
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.service.cli import main

    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    ScriptedModel(service.classifier, seeded.photo_files.values())
    assert service.run_pass().status == "finished"
    dogs = [d for d in seeded.dogs if len(seeded.photos[d]) >= 2]
    refiled, losing = dogs[0], dogs[1]
    deleted = seeded.photos[losing][0]
    engine = shelter.engine()
    with engine.begin() as conn:
        conn.execute(text("UPDATE animal SET SpeciesID = 2 WHERE ID = :id"), {"id": refiled})
        conn.execute(text("DELETE FROM media WHERE ID = :id"), {"id": deleted})
    engine.dispose()
    with session_factory(service.engine).begin() as session:
        results.relabel(session, results.RelabelSelection(everything=True), utc_now())
    summary = service.run_pass()
    assert summary.status == "finished" and summary.failed == 0
    assert summary.gone == len(seeded.photos[refiled]) + 1
    groups = _groups(service)
    with service.engine.connect() as conn:
        statuses = {int(r.photo_id): r.status for r in conn.execute(select(photo))}
        photo_queue = {
            int(r[0]) for r in conn.execute(text("SELECT photo_id FROM labeler_review_queue"))
        }
        group_queue = {
            int(r[0]) for r in conn.execute(text(f"SELECT group_id FROM {GROUP_REVIEW_VIEW}"))
        }
    assert statuses[deleted] == GONE and deleted not in photo_queue
    assert all(statuses[m] == GONE for m in seeded.photos[refiled])
    assert groups[refiled]["status"] == GONE and refiled not in group_queue
    # Re-filed as a cat: labeler takes its own breed back off the record.
    assert _animals(shelter)[refiled] == {"BreedID": MIXED_BREED_ID, "BreedName": MIXED_BREED_NAME}
    assert groups[losing]["photos_used"] == len(seeded.photos[losing]) - 1
    assert FAILED not in {groups[refiled]["status"], groups[losing]["status"]}

    # A new photo of a decided animal makes it decided again: here it shows another breed, so
    # the animal goes to review and labeler withdraws its own earlier answer.
    grown = next(d for d in dogs[2:] if groups[d]["status"] == LABELLED)
    other_file = next(
        f
        for f in seeded.photo_files.values()
        if f.parent.name.split("-", 1)[1] != seeded.dogs[grown]
    )
    engine = shelter.engine()
    with engine.begin() as conn:
        new_id = int(conn.scalar(text("SELECT MAX(ID) FROM media"))) + 1
        conn.execute(
            text(
                "INSERT INTO dbfs (ID, Name, Path, URL, Content) "
                "VALUES (:id, 'new.jpg', '/animal', 'base64:', :c)"
            ),
            {"id": new_id, "c": base64.b64encode(other_file.read_bytes()).decode("ascii")},
        )
        conn.execute(
            text(
                "INSERT INTO media (ID, LinkTypeID, LinkID, MediaType, MediaMimeType, MediaName, "
                "MediaNotes, DBFSID) VALUES (:id, 0, :a, 0, 'image/jpeg', 'new.jpg', '', :id)"
            ),
            {"id": new_id, "a": grown},
        )
    engine.dispose()
    assert service.run_pass().discovered == 1
    regrown = _groups(service)[grown]
    assert regrown["photos_used"] == len(seeded.photos[grown]) + 1
    assert regrown["status"] == NEEDS_REVIEW and "disagree" in regrown["review_reason"]
    assert _animals(shelter)[grown] == {"BreedID": MIXED_BREED_ID, "BreedName": MIXED_BREED_NAME}

    # Pointing labeler at another source is refused, naming the way out.
    engine = shelter.engine()
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW other_photos AS SELECT * FROM animal_photo"))
    engine.dispose()
    other = _service(shelter, tiny_artifact, breed_map, source_table="other_photos")
    with pytest.raises(SourceChanged, match="labeler reset-source"):
        other.run_pass()
    for key, value in shelter.settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABELER_SOURCE_TABLE", "other_photos")
    assert main(["reset-source"]) == 2, "without --yes nothing is deleted"
    with service.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(photo)) == len(statuses) + 1
    assert main(["reset-source", "--yes"]) == 0
    with service.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(photo)) == 0
        assert conn.scalar(select(func.count()).select_from(group)) == len(groups)
    ScriptedModel(other.classifier, seeded.photo_files.values())
    assert other.run_pass().status == "finished"
    other.engine.dispose()


def _check_lines(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    from labeler.service.cli import main

    capsys.readouterr()
    main(["check"])
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        for name in ("source rows", "write-back"):
            if f" {name}: " in line:
                lines[name] = line
    return lines


def test_check_proves_the_shelter_settings(
    asm3: tuple[Asm3Shelter, Service, Path],
    tmp_path: Path,
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shelter, _service_unused, breed_map = asm3
    for key, value in shelter.settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tiny_artifact))
    monkeypatch.setenv("LABELER_BREED_MAP", str(breed_map))
    before = shelter.snapshot()
    lines = _check_lines(capsys)
    assert lines["source rows"].startswith("ok") and "warning" not in lines["source rows"]
    assert lines["write-back"].startswith("ok") and "rolled back" in lines["write-back"]
    assert "labels have no breed-map entry (" in lines["write-back"]
    assert UNMAPPED in lines["write-back"]
    assert shelter.snapshot() == before, "check must roll its write back"

    # A filter value spelled in another letter case: only MariaDB matches it.
    monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", "DOG")
    line = _check_lines(capsys)["source rows"]
    assert "letter case" in line and "'Dog'" in line
    assert line.startswith("ok" if shelter.dialect == "mariadb" else "FAIL"), line
    monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", "Dog")

    # A map value longer than the column, and one that is not a number.
    long_map = tmp_path / "long.csv"
    long_map.write_text(breed_map.read_text().replace(",Beagle,", "," + "Beagle " * 40 + ","))
    monkeypatch.setenv("LABELER_BREED_MAP", str(long_map))
    line = _check_lines(capsys)["write-back"]
    assert line.startswith("FAIL") and "longer than" in line, line
    bad_type = tmp_path / "type.csv"
    bad_type.write_text(breed_map.read_text().replace("beagle,19,", "beagle,nineteen,"))
    monkeypatch.setenv("LABELER_BREED_MAP", str(bad_type))
    line = _check_lines(capsys)["write-back"]
    assert line.startswith("FAIL") and "nineteen" in line, line
    monkeypatch.setenv("LABELER_BREED_MAP", str(breed_map))

    # A target that cannot be updated.
    engine = shelter.engine()
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW animal_names AS SELECT DISTINCT * FROM animal"))
    engine.dispose()
    monkeypatch.setenv("LABELER_TARGET_TABLE", "animal_names")
    line = _check_lines(capsys)["write-back"]
    assert line.startswith("FAIL"), line
    assert shelter.snapshot() == before


def test_photos_stored_as_files(db_url: str, tmp_path: Path, tiny_artifact: Path) -> None:
    """ASM3 installations that keep photos on disk (`dbfs.URL = 'file:<name>'`)."""
    shelter = build_asm3(db_url, tmp_path, storage="file", per_breed=2, photos_per_dog=2)
    breed_map = _breed_map_without(tmp_path, UNMAPPED)
    service = _service(shelter, tiny_artifact, breed_map)
    migrate.upgrade(service.engine)
    ScriptedModel(service.classifier, shelter.seeded.photo_files.values())
    before = _animals(shelter)
    summary = service.run_pass()
    assert summary.status == "finished" and summary.failed == 0
    animals, groups = _animals(shelter), _groups(service)
    with service.engine.connect() as conn:
        refs = {r.photo_ref for r in conn.execute(select(photo))}
    assert all(ref and not ref.startswith("/") for ref in refs)
    for dog, label in shelter.seeded.dogs.items():
        want = _expected_values(breed_map, label)
        if label in ("dingo", UNMAPPED) or want is None:
            assert animals[dog] == before[dog]
            continue
        assert groups[dog]["status"] == LABELLED
        assert animals[dog] == {"BreedID": int(want["BreedID"]), "BreedName": want["BreedName"]}
    service.engine.dispose()


def test_two_labelers_at_once_agree(
    server_db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    """Two passes on the same shelter at the same time: each animal is decided and written
    once, and neither mistakes the other's write for a staff decision."""
    import threading

    shelter = build_asm3(server_db_url, tmp_path, storage="base64", per_breed=4)
    breed_map = _breed_map_without(tmp_path, UNMAPPED)
    services = [_service(shelter, tiny_artifact, breed_map, batch_size=2) for _ in range(2)]
    migrate.upgrade(services[0].engine)
    for service in services:
        ScriptedModel(service.classifier, shelter.seeded.photo_files.values())
    results: list[Any] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.run_pass())) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [r.status for r in results] == ["finished", "finished"]
    animals, groups = _animals(shelter), _groups(services[0])
    for dog, label in shelter.seeded.dogs.items():
        g = groups[dog]
        if label in ("dingo", UNMAPPED):
            assert g["status"] == NEEDS_REVIEW
            continue
        want = _expected_values(breed_map, label)
        assert want is not None
        assert g["status"] == LABELLED and g["staff_values"] is None, (dog, g["review_reason"])
        assert animals[dog] == {"BreedID": int(want["BreedID"]), "BreedName": want["BreedName"]}
    staff = [d for d, g in groups.items() if g["staff_values"]]
    assert staff == [shelter.seeded.staff_dog]
    for service in services:
        service.engine.dispose()


def test_a_rotated_photo_is_labelled_again_and_the_record_follows(
    asm3: tuple[Asm3Shelter, Service, Path],
) -> None:
    """ASM3 keeps the media id when staff rotate (or re-upload) a photo and sets media.Date."""
    from labeler.demo.shelter import rotate_photo

    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    model = ScriptedModel(service.classifier, seeded.photo_files.values())
    assert service.run_pass().status == "finished"
    groups = _groups(service)
    plain = [d for d, label in seeded.dogs.items() if label not in ("dingo", UNMAPPED)]
    dog = next(d for d in plain if groups[d]["status"] == LABELLED)
    other = next(d for d in plain if seeded.dogs[d] != seeded.dogs[dog])
    new_files = [seeded.photo_files[m] for m in seeded.photos[other]][: len(seeded.photos[dog])]
    assert len(new_files) == len(seeded.photos[dog])
    staff_photo = seeded.photos[seeded.staff_dog][0]
    staff_before = _animals(shelter)[seeded.staff_dog]
    engine = shelter.engine()
    with engine.begin() as conn:
        for media_id, path in zip(seeded.photos[dog], new_files, strict=True):
            rotate_photo(conn, media_id, path.read_bytes())
        rotate_photo(conn, staff_photo, new_files[0].read_bytes())
    engine.dispose()

    model.seen.clear()
    summary = service.run_pass()
    assert summary.status == "finished"
    # Only the rotated photos were read again, the staff dog's too (its record stays theirs).
    assert sorted(model.seen) == sorted([*new_files, new_files[0]])
    expected = _expected_values(breed_map, seeded.dogs[other])
    assert expected is not None
    assert _animals(shelter)[dog] == {
        "BreedID": int(expected["BreedID"]),
        "BreedName": expected["BreedName"],
    }
    regrouped = _groups(service)[dog]
    assert regrouped["status"] == LABELLED and regrouped["breed"] == seeded.dogs[other]
    assert _animals(shelter)[seeded.staff_dog] == staff_before
    assert _groups(service)[seeded.staff_dog]["status"] == REVIEWED


def _queue(service: Service) -> set[int]:
    with service.engine.connect() as conn:
        return {int(r[0]) for r in conn.execute(text(f"SELECT group_id FROM {GROUP_REVIEW_VIEW}"))}


def test_deleted_and_merged_animals_leave_the_queue_and_survivors_follow_their_photos(
    asm3: tuple[Asm3Shelter, Service, Path],
) -> None:
    """Staff delete an animal, merge a duplicate into another (ASM3 moves its media to the
    animal that stays and deletes the duplicate), and re-file a dog as a cat and back."""
    from labeler.demo.shelter import CAT, DOG, delete_animal, merge_animals, refile_species

    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    model = ScriptedModel(service.classifier, seeded.photo_files.values())
    assert service.run_pass().status == "finished"
    groups = _groups(service)
    deleted = seeded.mixed_dog  # its photos disagree: it waits in the review queue
    assert groups[deleted]["status"] == NEEDS_REVIEW and deleted in _queue(service)
    plain = [
        d
        for d, label in seeded.dogs.items()
        if label not in ("dingo", UNMAPPED) and groups[d]["status"] == LABELLED
    ]
    keep, merged, into_staff, refiled = plain[:4]
    assert seeded.dogs[keep] != seeded.dogs[merged]
    staff_before = _animals(shelter)[seeded.staff_dog]
    engine = shelter.engine()
    with engine.begin() as conn:
        delete_animal(conn, deleted)
        merge_animals(conn, keep, merged)
        merge_animals(conn, seeded.staff_dog, into_staff)
        refile_species(conn, refiled, CAT)
    engine.dispose()

    model.seen.clear()
    summary = service.run_pass()
    assert summary.status == "finished" and summary.processed == 0
    assert model.seen == [], "photos already labelled are never read again"
    groups, queue, animals = _groups(service), _queue(service), _animals(shelter)
    for animal in (deleted, merged, into_staff, refiled):
        assert groups[animal]["status"] == GONE and groups[animal]["last_error"], animal
        assert animal not in queue
    assert {deleted, merged, into_staff} & set(animals) == set()
    with service.engine.connect() as conn:
        photos = {int(r.photo_id): r for r in conn.execute(select(photo))}
    assert {photos[m].status for m in seeded.photos[deleted] + seeded.photos[refiled]} == {GONE}
    # The merged photos follow the animal that stays, with their answers (not read again).
    assert {photos[m].group_id for m in seeded.photos[merged]} == {str(keep)}
    assert {photos[m].status for m in seeded.photos[merged]} == {LABELLED}
    assert {photos[m].group_id for m in seeded.photos[into_staff]} == {str(seeded.staff_dog)}
    # The survivor is decided again from all its photos: two breeds disagree, so it goes to
    # review and labeler takes its own breed back off the record.
    survivor = groups[keep]
    assert survivor["status"] == NEEDS_REVIEW and keep in queue
    assert survivor["photos_used"] == len(seeded.photos[keep]) + len(seeded.photos[merged])
    undecided = {"BreedID": MIXED_BREED_ID, "BreedName": MIXED_BREED_NAME}
    assert animals[keep] == undecided
    # Re-filed as a cat: labeler's breed is taken back off the record.
    assert animals[refiled] == undecided
    # Staff's decision stands, whatever photos join the animal.
    assert groups[seeded.staff_dog]["status"] == REVIEWED
    assert animals[seeded.staff_dog] == staff_before

    # Re-filed back as a dog: its photos are back, labelled again, and the record follows.
    engine = shelter.engine()
    with engine.begin() as conn:
        refile_species(conn, refiled, DOG)
    engine.dispose()
    summary = service.run_pass()
    assert summary.status == "finished"
    assert sorted(model.seen) == sorted(seeded.photo_files[m] for m in seeded.photos[refiled])
    assert _groups(service)[refiled]["status"] == LABELLED
    expected = _expected_values(breed_map, seeded.dogs[refiled])
    assert expected is not None
    assert _animals(shelter)[refiled] == {
        "BreedID": int(expected["BreedID"]),
        "BreedName": expected["BreedName"],
    }


# --- ASM3's own breed-name recalculation ----------------------------------------------------
#
# ASM3 keeps the breed twice: as ids (BreedID, Breed2ID, CrossBreed) and as the text BreedName
# that its lists, reports and publishers show. Its maintenance task "Recalculate ALL animal
# breed names" (``update_animal_breeds`` in sheltermanager/asm3 src/asm3/animal.py) rebuilds
# BreedName from the ids of every animal. A record labeler wrote must come out of it unchanged,
# or the rebuilt name reads to labeler as a breed staff chose.

ASM3_UNKNOWN_BREED = "Invalid"  # what update_animal_breeds names an id missing from `breed`


def _asm3_breed_name(names: dict[int, str], breed_id: Any, breed2_id: Any) -> str:
    """The BreedName ASM3's recalculation gives an animal (our emulation, not ASM3's code).

    It mirrors ``update_animal_breeds`` (src/asm3/animal.py): one breed's name when Breed2ID
    equals BreedID or is 0, otherwise both names joined by " / "; an id ``breed`` does not have
    reads "Invalid". CrossBreed plays no part. ASM3's animal screen saves a single breed with
    Breed2ID = BreedID (with "Crossbreed" unticked the form copies the first breed into the
    hidden second one: ``enable_widgets`` in src/static/js/animal.js) and the one name
    (``get_breedname``), so such a record keeps its name here; a record with Breed2ID left at
    another id does not."""

    def name(breed: Any) -> str:
        return ASM3_UNKNOWN_BREED if breed is None else names.get(int(breed), ASM3_UNKNOWN_BREED)

    if breed2_id == breed_id or breed2_id == 0:
        return name(breed_id)
    return f"{name(breed_id)} / {name(breed2_id)}"


def _asm3_recalculates_breed_names(shelter: Asm3Shelter) -> dict[int, tuple[str, str]]:
    """Run the recalculation on every animal as ASM3 does (one ``UPDATE animal SET BreedName``
    per animal, nothing else: no stamp, no RecordVersion); returns {animal: (old, new)} of the
    names it changed."""
    names = _breed_names(shelter)
    engine = shelter.engine()
    try:
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT ID, BreedID, Breed2ID, BreedName FROM animal")).all()
            new = {int(r[0]): _asm3_breed_name(names, r[1], r[2]) for r in rows}
            conn.execute(
                text("UPDATE animal SET BreedName = :name WHERE ID = :id"),
                [{"id": a, "name": n} for a, n in sorted(new.items())],
            )
    finally:
        engine.dispose()
    return {int(r[0]): (r[3], new[int(r[0])]) for r in rows if r[3] != new[int(r[0])]}


def _breed_names(shelter: Asm3Shelter) -> dict[int, str]:
    """The shelter's breed table: id -> BreedName."""
    engine = shelter.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT ID, BreedName FROM breed")).all()
    finally:
        engine.dispose()
    return {int(r[0]): str(r[1]) for r in rows}


def _animal_rows(shelter: Asm3Shelter) -> dict[int, dict[str, Any]]:
    """Every column of every animal record, by animal id."""
    engine = shelter.engine()
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM animal")).mappings().all()
    finally:
        engine.dispose()
    return {int(r[next(k for k in r if k.lower() == "id")]): dict(r) for r in rows}


def _column(row: dict[str, Any], name: str) -> Any:
    """An animal column by its ASM3 name, whatever case the server reports."""
    return next(v for k, v in row.items() if k.lower() == name.lower())


def test_asm3_breed_name_emulation() -> None:
    names = {19: "Beagle", 442: "Mixed Breed"}
    assert _asm3_breed_name(names, 19, 19) == "Beagle"
    assert _asm3_breed_name(names, 19, 0) == "Beagle"
    assert _asm3_breed_name(names, 19, 442) == "Beagle / Mixed Breed"
    assert _asm3_breed_name(names, 442, 19) == "Mixed Breed / Beagle"
    assert _asm3_breed_name(names, 7, 7) == ASM3_UNKNOWN_BREED


def test_a_labelled_record_survives_asm3_recalculating_breed_names(
    asm3: tuple[Asm3Shelter, Service, Path],
) -> None:
    """What labeler writes is a record ASM3 itself would save: its breed-name recalculation
    changes nothing, and the next pass finds no staff decision in it."""
    shelter, service, breed_map = asm3
    seeded = shelter.seeded
    ScriptedModel(service.classifier, seeded.photo_files.values())
    assert service.run_pass().status == "finished"
    groups = _groups(service)
    labelled = sorted(d for d, g in groups.items() if g["status"] == LABELLED)
    assert len(labelled) >= 5
    staff_before = {d: g["staff_values"] for d, g in groups.items()}
    assert [d for d, v in staff_before.items() if v] == [seeded.staff_dog]
    before = _animal_rows(shelter)
    names = _breed_names(shelter)
    for dog in labelled:
        want = _expected_values(breed_map, seeded.dogs[dog])
        assert want is not None
        row = before[dog]
        # A single breed, saved the way ASM3's animal screen saves one.
        assert _column(row, "BreedID") == int(want["BreedID"])
        assert _column(row, "Breed2ID") == _column(row, "BreedID")
        assert _column(row, "CrossBreed") == 0
        assert _column(row, "BreedName") == names[_column(row, "BreedID")]
        assert _column(row, "LastChangedBy") == "labeler"

    changed = _asm3_recalculates_breed_names(shelter)
    assert changed == {}, "ASM3 would rename these records"
    assert _animal_rows(shelter) == before, "every column of every animal is as it was"

    again = service.run_pass()
    assert again.status == "finished"
    groups = _groups(service)
    assert {d: g["staff_values"] for d, g in groups.items()} == staff_before
    assert sorted(d for d, g in groups.items() if g["status"] == LABELLED) == labelled
    assert _animal_rows(shelter) == before, "nothing was written again"


def _map_without_second_breed(tmp_path: Path, breed_map: Path) -> Path:
    """The breed map as it was before it set Breed2ID and CrossBreed: label,BreedID,BreedName."""
    lines = [
        line if line.startswith("#") or not line.strip() else ",".join(line.split(",")[:3])
        for line in breed_map.read_text().splitlines()
    ]
    assert "label,BreedID,BreedName" in lines
    path = tmp_path / "asm3-map-one-breed-column.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_record_written_without_breed2_is_renamed_by_asm3(
    asm3: tuple[Asm3Shelter, Service, Path], tmp_path: Path, tiny_artifact: Path
) -> None:
    """The check above can fail: a map that sets only BreedID and BreedName leaves Breed2ID at
    intake's Mixed Breed (442), ASM3's recalculation renames every such dog "<breed> / Mixed
    Breed", and the next pass takes that for a breed staff set."""
    shelter, _unused, breed_map = asm3
    seeded = shelter.seeded
    service = _service(shelter, tiny_artifact, _map_without_second_breed(tmp_path, breed_map))
    try:
        ScriptedModel(service.classifier, seeded.photo_files.values())
        assert service.run_pass().status == "finished"
        groups = _groups(service)
        labelled = sorted(d for d, g in groups.items() if g["status"] == LABELLED)
        assert len(labelled) >= 5
        before = _animal_rows(shelter)
        for dog in labelled:
            assert _column(before[dog], "Breed2ID") == MIXED_BREED_ID

        changed = _asm3_recalculates_breed_names(shelter)
        assert set(changed) == set(labelled)
        for dog in labelled:
            name = _column(before[dog], "BreedName")
            assert changed[dog] == (name, f"{name} / {MIXED_BREED_NAME}")

        assert service.run_pass().status == "finished"
        groups = _groups(service)
        for dog in labelled:
            assert groups[dog]["status"] == REVIEWED and groups[dog]["staff_values"], dog
            assert f"/ {MIXED_BREED_NAME}" in groups[dog]["staff_values"]
    finally:
        service.engine.dispose()


@pytest.mark.parametrize(
    ("intake_breed2", "written_before_0007"),
    [(MIXED_BREED_ID, False), (0, False), (MIXED_BREED_ID, True)],
    ids=["breed2-mixed", "breed2-zero", "written-before-replaced-values-were-kept"],
)
def test_a_withdrawn_answer_survives_asm3_recalculating_breed_names(
    db_url: str,
    tmp_path: Path,
    tiny_artifact: Path,
    intake_breed2: int,
    written_before_0007: bool,
) -> None:
    """A relabel that withdraws labeler's answer gives the record back what it held before
    labeler's first write, with the documented settings: BreedID and BreedName from
    LABELER_TARGET_UNDECIDED, Breed2ID and CrossBreed as they were (442, or 0 on records ASM3
    imported), so ASM3's recalculation renames nothing and no false staff decision follows."""
    shelter = build_asm3(db_url, tmp_path, storage="base64", per_breed=3, photos_per_dog=3)
    breed_map = _breed_map_without(tmp_path, UNMAPPED)
    engine = shelter.engine()
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE animal SET Breed2ID = :b2 WHERE BreedID = :mixed"),
                {"b2": intake_breed2, "mixed": MIXED_BREED_ID},
            )
    finally:
        engine.dispose()
    service = _service(shelter, tiny_artifact, breed_map)
    try:
        migrate.upgrade(service.engine)
        seeded = shelter.seeded
        model = ScriptedModel(service.classifier, seeded.photo_files.values())
        assert service.run_pass().status == "finished"
        groups = _groups(service)
        withdrawn = min(d for d, g in groups.items() if g["status"] == LABELLED)
        if written_before_0007:
            # A write from before labeler kept what it replaced: Breed2ID, which held the same
            # value as BreedID in labeler's write, goes back with it.
            with service.engine.begin() as conn:
                conn.execute(
                    update(group)
                    .where(group.c.group_id == str(withdrawn))
                    .values(replaced_values=None)
                )
        for media in seeded.photos[withdrawn]:
            model.script[seeded.photo_files[media]] = sure(seeded.dogs[withdrawn], 0.05)
        with session_factory(service.engine).begin() as session:
            results.relabel(session, results.RelabelSelection(everything=True), utc_now())
        assert service.run_pass().status == "finished"
        group_row = _groups(service)[withdrawn]
        assert group_row["status"] == NEEDS_REVIEW and group_row["written_values"] is None
        row = _animal_rows(shelter)[withdrawn]
        assert (_column(row, "BreedID"), _column(row, "BreedName")) == (
            MIXED_BREED_ID,
            MIXED_BREED_NAME,
        )

        assert _column(row, "Breed2ID") == intake_breed2
        assert _asm3_recalculates_breed_names(shelter) == {}
        assert service.run_pass().status == "finished"
        assert _groups(service)[withdrawn]["staff_values"] is None
    finally:
        service.engine.dispose()
