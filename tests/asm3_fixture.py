"""An ASM3-like shelter database with the real sample photos, on SQLite, PostgreSQL or MariaDB.

The schema and seeding live in :mod:`labeler.demo.shelter` (the demo uses them too); this module
picks the real photos from the shared data and builds a whole database in one call.

API::

    shelter = build_asm3(db_url, tmp_path, storage="base64" | "file", per_breed=6,
                         photos_per_dog=3)
    shelter.url, shelter.dialect, shelter.storage, shelter.file_root (file storage only)
    shelter.seeded.dogs            # {animal id: true label of its photos}, e.g. "beagle"
    shelter.seeded.photos          # {animal id: [media ids of its photos]}
    shelter.seeded.dog_photo_ids   # media ids labeler should read (every dog's photos)
    shelter.seeded.cats            # cat animal ids (their photos are dog pictures!)
    shelter.seeded.mixed_dog       # a dog with photos of two breeds (should disagree)
    shelter.seeded.staff_dog       # BreedID 96 / "Golden Retriever" set by staff: never touched
    shelter.seeded.no_photo_dog    # a dog without any photo
    shelter.seeded.document_media  # media ids that are not animal photos (PDF, video, owner)
    shelter.settings               # {"LABELER_...": value} pointing labeler at the view
    shelter.engine()               # a new engine on the database (dispose it)
    shelter.snapshot()             # {table: sorted rows} of species/breed/animal/media/dbfs
    shelter.animal(conn, animal_id)  # {"BreedID": ..., "BreedName": ...} whatever the server

Staff actions, on a connection (labeler.demo.shelter): staff_sets_breed(conn, animal_id,
breed_id) (as ASM3's animal screen saves it), refile_species(conn, animal_id, CAT),
delete_media(conn, media_id) (media + dbfs rows), rotate_photo(conn, media_id, content) (new
bytes under the same media id, media.Date set to now), delete_animal(conn, animal_id) (the
record with its photos), merge_animals(conn, keep_id, merged_id) (the duplicate's photos move
to keep_id, the duplicate is deleted).

Settings (see labeler.demo.shelter.labeler_settings; the same as docs/shelters/asm3.md, which
tests/test_asm3_recipe.py checks): source view ``animal_photo`` (photo_id, animal_id, photo,
species, animal_name, shelter_code, media_name, media_date), filter species = Dog, group by
animal_id, context animal_name,shelter_code, change marker media_date, target table
``animal`` keyed by ``ID`` (``id`` on PostgreSQL, which folds names to lower case), undecided
``BreedID=442,BreedName=Mixed Breed`` (lower-case names on PostgreSQL), breed map
``labeler/data/breedmaps/asm3.csv`` checked against table ``breed``. With storage "file",
``LABELER_PHOTO_ROOT`` is ``shelter.file_root``.

``sample_photos(per_breed)`` gives the ``(breed folder, path)`` list used for seeding.

ASM3's own database user, as an administrator sets it up before ASM3's installer creates the
schema through it (PostgreSQL and MariaDB only)::

    url = create_asm3_user(admin, "asm3_app", password)  # URL that connects as that user
    drop_asm3_user(admin, "asm3_app")

On PostgreSQL the user owns the database, so the tables its installer creates are its own; on
MariaDB it exists at ``ASM3_HOSTS`` (``localhost`` and ``127.0.0.1``) with all privileges on the
database and no ``GRANT OPTION``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from labeler.demo import shelter as demo_shelter
from labeler.demo.shelter import Seeded
from tests.helpers import FULLFRAME, require

ASM3_USER = "asm3_app"
# The hosts an ASM3 install gives its MariaDB account: the application connects to the server on
# the same machine, by socket (localhost) or by TCP (127.0.0.1).
ASM3_HOSTS = ("localhost", "127.0.0.1")


def create_asm3_user(admin: Engine, user: str, password: str) -> str:
    """Create ASM3's database user on the admin engine's database; return a URL for it."""
    database = admin.url.database
    with admin.begin() as conn:
        if admin.dialect.name == "postgresql":
            conn.execute(text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
            # createdb -O: the database, and with it the public schema (PostgreSQL 15+), is
            # ASM3's user's, so the schema ASM3 creates through it belongs to it.
            conn.execute(text(f"ALTER DATABASE {database} OWNER TO {user}"))
        else:
            for host in ASM3_HOSTS:
                conn.execute(text(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'"))
                conn.execute(text(f"GRANT ALL PRIVILEGES ON {database}.* TO '{user}'@'{host}'"))
    url = admin.url.set(username=user, password=password)
    return url.render_as_string(hide_password=False)


def drop_asm3_user(admin: Engine, user: str) -> None:
    """Drop what :func:`create_asm3_user` made (what the user owns goes to the admin)."""
    with admin.begin() as conn:
        if admin.dialect.name == "postgresql":
            exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": user}
            ).first()
            if exists:
                conn.execute(text(f"REASSIGN OWNED BY {user} TO CURRENT_USER"))
                conn.execute(text(f"DROP OWNED BY {user}"))
                conn.execute(text(f"DROP ROLE {user}"))
        else:
            for host in ASM3_HOSTS:
                conn.execute(text(f"DROP USER IF EXISTS '{user}'@'{host}'"))


def sample_photos(per_breed: int | None = 6) -> list[tuple[str, Path]]:
    """``(breed folder, photo)`` pairs from the full-frame sample, ``per_breed`` of each."""
    require(FULLFRAME)
    pairs: list[tuple[str, Path]] = []
    for folder in sorted(p for p in FULLFRAME.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.JPEG"))
        pairs += [(folder.name, f) for f in files[:per_breed]]
    if not pairs:
        raise FileNotFoundError(f"no sample photos under {FULLFRAME}")
    return pairs


@dataclass
class Asm3Shelter:
    url: str
    dialect: str
    storage: str
    file_root: Path | None
    seeded: Seeded
    settings: dict[str, str]

    def engine(self) -> Engine:
        return create_engine(self.url, poolclass=NullPool)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return demo_shelter.snapshot(conn)
        finally:
            engine.dispose()

    def animal(self, conn: Connection, animal_id: int) -> dict[str, Any]:
        """The animal's breed columns under their ASM3 names, whatever case the server uses."""
        row = conn.execute(
            text("SELECT BreedID, BreedName, Breed2ID FROM animal WHERE ID = :id"),
            {"id": animal_id},
        ).one()
        return {"BreedID": row[0], "BreedName": row[1], "Breed2ID": row[2]}


def build_asm3(
    db_url: str,
    tmp_path: Path,
    *,
    storage: str = "base64",
    per_breed: int | None = 6,
    photos_per_dog: int = 3,
    photos: list[tuple[str, Path]] | None = None,
) -> Asm3Shelter:
    """Create the ASM3-like schema, seed it with real photos and create the photo view."""
    file_root = tmp_path / "asm3-files" if storage == "file" else None
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            demo_shelter.create_schema(conn)
            seeded = demo_shelter.seed(
                conn,
                photos or sample_photos(per_breed),
                storage=storage,
                file_root=file_root,
                photos_per_dog=photos_per_dog,
            )
            demo_shelter.create_photo_view(conn, storage)
        dialect = engine.dialect.name
    finally:
        engine.dispose()
    dialect = "mariadb" if dialect == "mysql" else dialect
    url = make_url(db_url).render_as_string(hide_password=False)
    settings = demo_shelter.labeler_settings(url, storage, dialect, file_root=file_root)
    return Asm3Shelter(url, dialect, storage, file_root, seeded, settings)
