"""The ASM3-like fixture itself: schema, seeding and the photo view, on every server."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from labeler.config.settings import Settings
from labeler.demo import shelter as demo_shelter
from labeler.shelter.source import reflect_source
from tests.asm3_fixture import (
    ASM3_HOSTS,
    build_asm3,
    create_asm3_user,
    drop_asm3_user,
    sample_photos,
)


@pytest.mark.parametrize("storage", ["base64", "file"])
def test_fixture_builds_an_asm3_like_database(db_url: str, tmp_path: Path, storage: str) -> None:
    shelter = build_asm3(db_url, tmp_path, storage=storage, per_breed=4, photos_per_dog=3)
    seeded = shelter.seeded
    photos = sample_photos(4)
    breeds = {folder for folder, _ in photos}

    # Several photos per dog, as dealt: 4 photos per breed -> a dog with 3 and one with 1.
    assert len(seeded.dogs) == 2 * len(breeds)
    assert sorted(len(seeded.photos[d]) for d in seeded.dogs)[-1] == 3
    assert {"golden_retriever", "beagle", "dingo"} <= set(seeded.dogs.values())

    engine = shelter.engine()
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("animal")}
        want = {"ID", "BreedID", "BreedName", "Breed2ID", "AnimalName", "ShelterCode"}
        if shelter.dialect == "postgresql":
            want = {c.lower() for c in want}
        assert want <= columns

        placeholder = conn.execute(
            text("SELECT BreedName, SpeciesID FROM breed WHERE ID = :id"),
            {"id": demo_shelter.MIXED_BREED_ID},
        ).one()
        assert tuple(placeholder) == ("Mixed Breed", 1)
        dog_breeds = conn.execute(text("SELECT COUNT(*) FROM breed WHERE SpeciesID = 1")).scalar()
        assert dog_breeds == 221  # ASM3's 220 dog breeds + Mixed Breed

        # Intake's placeholder everywhere, except the breed staff set.
        for animal_id in seeded.dogs:
            assert shelter.animal(conn, animal_id)["BreedID"] == demo_shelter.MIXED_BREED_ID
        assert seeded.staff_dog is not None
        assert shelter.animal(conn, seeded.staff_dog) == {
            "BreedID": 96,
            "BreedName": "Golden Retriever",
            "Breed2ID": 96,
        }

        rows = conn.execute(
            text(
                "SELECT photo_id, animal_id, photo, species, animal_name, shelter_code "
                f"FROM {demo_shelter.PHOTO_VIEW}"
            )
        ).all()
        dog_rows = conn.execute(
            text(f"SELECT photo_id FROM {demo_shelter.PHOTO_VIEW} WHERE species = :s"),
            {"s": "Dog"},
        ).scalars()
        assert sorted(dog_rows) == seeded.dog_photo_ids
    engine.dispose()

    # The view holds every animal photo and nothing else (no PDF, video link, owner photo).
    by_id = {r.photo_id: r for r in rows}
    all_photos = {m: a for a, ms in seeded.photos.items() for m in ms}
    assert set(by_id) == set(all_photos)
    assert not set(by_id) & set(seeded.document_media)
    assert seeded.no_photo_dog not in {r.animal_id for r in rows}
    assert {by_id[m].species for m in seeded.photos[seeded.cats[0]]} == {"Cat"}
    for media_id, row in by_id.items():
        assert row.animal_id == all_photos[media_id]
        assert row.animal_name and row.shelter_code
        original = seeded.photo_files[media_id].read_bytes()
        if storage == "base64":
            assert base64.b64decode(row.photo) == original
        else:
            assert shelter.file_root is not None
            assert (shelter.file_root / row.photo).read_bytes() == original

    # Labeler's own settings and source reflection accept what the fixture hands out.
    known = {k: v for k, v in shelter.settings.items() if k.lower()[8:] in Settings.model_fields}
    settings = Settings(**{k.lower()[8:]: v for k, v in known.items()})  # type: ignore[arg-type]
    engine = shelter.engine()
    with engine.connect() as conn:
        source = reflect_source(conn, settings)
    engine.dispose()
    assert source.filter_values == ("Dog",)
    assert shelter.settings["LABELER_TARGET_KEY_COLUMN"] in columns
    assert shelter.settings["LABELER_SOURCE_GROUP_COLUMN"] in source.table.c
    for column in shelter.settings["LABELER_CONTEXT_COLUMNS"].split(","):
        assert column in source.table.c
    assert Path(shelter.settings["LABELER_BREED_MAP"]).name == "asm3.csv"


def test_fixture_refuses_file_storage_without_a_folder() -> None:
    with pytest.raises(ValueError, match="file_root"):
        demo_shelter.labeler_settings("sqlite://", "file", "sqlite")


def test_staff_actions_change_the_shelter_as_asm3_would(db_url: str, tmp_path: Path) -> None:
    shelter = build_asm3(db_url, tmp_path, storage="base64", per_breed=3)
    seeded = shelter.seeded
    dog, other = sorted(seeded.dogs)[:2]
    doomed = seeded.photos[other][0]
    engine = shelter.engine()
    with engine.begin() as conn:
        demo_shelter.staff_sets_breed(conn, dog, 19)
        demo_shelter.refile_species(conn, other, demo_shelter.CAT)
        demo_shelter.delete_media(conn, doomed)
    with engine.connect() as conn:
        assert shelter.animal(conn, dog) == {"BreedID": 19, "BreedName": "Beagle", "Breed2ID": 19}
        dogs = set(
            conn.execute(
                text(f"SELECT photo_id FROM {demo_shelter.PHOTO_VIEW} WHERE species = 'Dog'")
            ).scalars()
        )
        left = set(conn.execute(text(f"SELECT photo_id FROM {demo_shelter.PHOTO_VIEW}")).scalars())
        dbfs = conn.execute(text("SELECT COUNT(*) FROM dbfs WHERE ID = :i"), {"i": doomed}).scalar()
    engine.dispose()
    assert not set(seeded.photos[other]) & dogs, "a re-filed dog's photos stop matching the filter"
    assert doomed not in left and dbfs == 0
    assert set(seeded.photos[other]) - {doomed} <= left


def test_asm3_user_is_made_as_an_asm3_install_makes_it(server_db_url: str, tmp_path: Path) -> None:
    """ASM3's user owns the schema ASM3 creates through it (PostgreSQL) or has every privilege on
    ASM3's database at both hosts an install gives it (MariaDB), and is no administrator."""
    admin = create_engine(server_db_url, poolclass=NullPool)
    user = f"a3_{uuid.uuid4().hex[:8]}"
    try:
        engine = create_engine(create_asm3_user(admin, user, "pw"), poolclass=NullPool)
        with engine.begin() as conn:
            demo_shelter.create_schema(conn)
            conn.execute(text("CREATE VIEW asm3_probe AS SELECT ID FROM animal"))
        with engine.connect() as conn:
            if admin.dialect.name == "postgresql":
                owners = conn.execute(
                    text(
                        "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename IN "
                        "('animal', 'media', 'dbfs', 'breed', 'species')"
                    )
                ).scalars()
                assert list(owners) == [user]
                with pytest.raises(DBAPIError, match="permission denied to create role"):
                    conn.execute(text(f"CREATE ROLE {user}_x"))
            else:
                with admin.connect() as root:
                    hosts = root.execute(
                        text("SELECT Host FROM mysql.user WHERE User = :u"), {"u": user}
                    ).scalars()
                    assert sorted(hosts) == sorted(ASM3_HOSTS)
                with pytest.raises(DBAPIError):
                    conn.execute(text(f"CREATE USER '{user}_x'@'%'"))
        engine.dispose()
    finally:
        drop_asm3_user(admin, user)
        admin.dispose()
