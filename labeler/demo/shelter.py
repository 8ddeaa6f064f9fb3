"""An ASM3-like shelter database (Animal Shelter Manager 3), for the demo and the tests.

Written from the documented facts of ASM3's schema, not from its code:

* ``animal(ID, AnimalName, ShelterCode, SpeciesID, BreedID NOT NULL, Breed2ID, BreedName,
  CrossBreed, Sex, Archived)``: the breed lives on the animal, as an id into ``breed`` plus the
  text ``BreedName``. Intake sets the placeholder ``Mixed Breed`` (:data:`MIXED_BREED_ID`) when
  nobody knows the breed: there is no NULL breed.
* ``species(ID, SpeciesName)``; ``breed(ID, BreedName, SpeciesID)`` with ASM3's default list
  (``labeler/data/asm3/breeds.csv``).
* ``media(ID, LinkTypeID, LinkID, MediaType, MediaMimeType, MediaName, MediaNotes, DBFSID)``:
  ``LinkTypeID = 0`` links to an animal; photos are ``image/jpeg``; documents and video links
  live in the same table.
* ``dbfs(ID, Name, Path, URL, Content)``: ``URL = 'base64:'`` with the file as base64 text in
  ``Content`` (ASM3's default), or ``URL = 'file:<name>'`` and an empty ``Content`` when the
  installation keeps files on disk (``<name>`` is relative to the storage folder).

The DDL uses unquoted names, as ASM3 does: PostgreSQL folds them to lower case, MariaDB and
SQLite keep ``CamelCase`` (MariaDB then compares text case-insensitively).

API::

    create_schema(conn)                         # the five tables, empty, plus species and breeds
    seed(conn, photos, storage=..., file_root=...) -> Seeded   # animals, media, dbfs rows
    create_photo_view(conn, storage)            # the read-only view labeler reads (PHOTO_VIEW)
    labeler_settings(url, storage, dialect, file_root=..., breed_map=...) -> dict[str, str]
    snapshot(conn) -> dict[str, list[tuple]]    # every row of the shelter's tables, to compare
    target_columns(dialect) -> dict             # the animal table's column names on that server
    animals(conn) -> list[dict]                 # id, name, code, species, breeds, stamps
    staff_sets_breed(conn, animal_id, breed_id) # what ASM3's animal screen does on save
    refile_species(conn, animal_id, species_id) # e.g. a "dog" that is a cat (CAT)
    delete_media(conn, media_id)                # staff delete a photo (media + dbfs rows)
    delete_animal(conn, animal_id)              # staff delete an animal with its photos
    merge_animals(conn, keep_id, merged_id)     # a duplicate's photos move to keep_id

``photos`` is a list of ``(breed folder, photo path)``; the folder name ends in the model's label
(``n02099601-golden_retriever`` -> ``golden_retriever``).
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

PHOTO_VIEW = "animal_photo"
MIXED_BREED_ID = 442
MIXED_BREED_NAME = "Mixed Breed"
DOG, CAT = 1, 2
# ASM3's default species (a subset: the ids are ASM3's own).
SPECIES = {1: "Dog", 2: "Cat", 3: "Bird", 7: "Rabbit", 20: "Guinea Pig"}
STAFF_BREED_ID, STAFF_BREED_NAME = 96, "Golden Retriever"
DOMESTIC_SHORT_HAIR = 261
LINK_ANIMAL, LINK_OWNER = 0, 3
MEDIA_FILE, MEDIA_VIDEO_LINK = 0, 2
STORAGES = ("base64", "file")
# The stamps intake left on every record, and the RecordVersion a staff save sets (ASM3 writes
# the time of day as hhmmss).
INTAKE_DATE = datetime(2026, 11, 2, 9, 30)
INTAKE_VERSION, STAFF_VERSION = 93000, 143015

# Smallest well-formed PDF: a document attached to an animal must never be read as a photo.
_PDF = (
    b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
_NAMES = (
    *("Bella", "Max", "Luna", "Charlie", "Daisy", "Rocky", "Molly", "Buddy", "Sadie", "Duke"),
    *("Maggie", "Bear", "Sophie", "Tucker", "Chloe", "Jack", "Lola", "Toby", "Penny", "Zeus"),
    *("Ruby", "Milo", "Rosie", "Bruno", "Stella", "Oscar", "Lucy", "Finn", "Nala", "Murphy"),
)


def asm3_breeds() -> list[tuple[int, str, int]]:
    """ASM3's default breeds as ``(ID, BreedName, SpeciesID)``."""
    source = resources.files("labeler") / "data" / "asm3" / "breeds.csv"
    lines = [line for line in source.read_text("utf-8").splitlines() if not line.startswith("#")]
    return [(int(r["ID"]), r["BreedName"], int(r["SpeciesID"])) for r in csv.DictReader(lines)]


def _types(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        return {
            "int": "INTEGER",
            "short": "VARCHAR(255)",
            "long": "TEXT",
            "date": "TIMESTAMP",
            "tail": "",
        }
    if dialect in ("mysql", "mariadb"):
        # ASM3 on MySQL/MariaDB: InnoDB, utf8mb4, the server's default (case-insensitive)
        # collation.
        return {
            "int": "INTEGER",
            "short": "VARCHAR(255)",
            "long": "LONGTEXT",
            "date": "DATETIME",
            "tail": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        }
    return {"int": "INTEGER", "short": "TEXT", "long": "TEXT", "date": "TIMESTAMP", "tail": ""}


def create_schema(conn: Connection) -> None:
    """Create ``species``, ``breed``, ``animal``, ``media`` and ``dbfs`` with ASM3's lookups."""
    t = _types(conn.dialect.name)
    ddl = [
        f"CREATE TABLE species (ID {t['int']} NOT NULL PRIMARY KEY, "
        f"SpeciesName {t['short']} NOT NULL){t['tail']}",
        f"CREATE TABLE breed (ID {t['int']} NOT NULL PRIMARY KEY, BreedName {t['short']} NOT NULL, "
        f"SpeciesID {t['int']} NOT NULL){t['tail']}",
        f"CREATE TABLE animal (ID {t['int']} NOT NULL PRIMARY KEY, "
        f"AnimalName {t['short']} NOT NULL, ShelterCode {t['short']}, "
        f"SpeciesID {t['int']} NOT NULL, BreedID {t['int']} NOT NULL, Breed2ID {t['int']}, "
        f"BreedName {t['short']}, CrossBreed {t['int']} NOT NULL DEFAULT 0, Sex {t['int']}, "
        f"Archived {t['int']} NOT NULL DEFAULT 0, "
        # What ASM3 sets on every save: who, when, and the version its screens compare to
        # refuse a save over someone else's change.
        f"LastChangedBy {t['short']}, LastChangedDate {t['date']}, "
        f"RecordVersion {t['int']}){t['tail']}",
        f"CREATE TABLE dbfs (ID {t['int']} NOT NULL PRIMARY KEY, Name {t['short']}, "
        f"Path {t['short']}, URL {t['short']}, Content {t['long']}){t['tail']}",
        f"CREATE TABLE media (ID {t['int']} NOT NULL PRIMARY KEY, LinkTypeID {t['int']} NOT NULL, "
        f"LinkID {t['int']} NOT NULL, MediaType {t['int']} NOT NULL DEFAULT 0, "
        f"MediaMimeType {t['short']}, MediaName {t['short']}, MediaNotes {t['long']}, "
        # ASM3 sets Date again when staff rotate the photo (the file changes, the ID stays).
        f"DBFSID {t['int']}, Date {t['date']}){t['tail']}",
    ]
    for statement in ddl:
        conn.execute(text(statement))
    conn.execute(
        text("INSERT INTO species (ID, SpeciesName) VALUES (:id, :name)"),
        [{"id": k, "name": v} for k, v in SPECIES.items()],
    )
    conn.execute(
        text("INSERT INTO breed (ID, BreedName, SpeciesID) VALUES (:id, :name, :species)"),
        [{"id": i, "name": n, "species": s} for i, n, s in asm3_breeds()],
    )


@dataclass
class Seeded:
    """What :func:`seed` put in the database (ids are the shelter's own)."""

    storage: str
    dogs: dict[int, str] = field(default_factory=dict)  # animal id -> true label of its photos
    photos: dict[int, list[int]] = field(default_factory=dict)  # animal id -> photo media ids
    cats: list[int] = field(default_factory=list)
    mixed_dog: int | None = None  # a dog whose photos show two different breeds
    staff_dog: int | None = None  # breed set by staff before labeler ever ran
    no_photo_dog: int | None = None
    document_media: list[int] = field(default_factory=list)  # PDF, video link, owner photo
    photo_files: dict[int, Path] = field(default_factory=dict)  # media id -> original photo

    @property
    def dog_photo_ids(self) -> list[int]:
        """Media ids of every dog photo labeler should read (staff dog included)."""
        cats = set(self.cats)
        return sorted(m for a, ms in self.photos.items() if a not in cats for m in ms)


def label_of(breed_folder: str) -> str:
    """The model's label for a ``<synset>-<label>`` folder name."""
    return breed_folder.split("-", 1)[1] if breed_folder.startswith("n0") else breed_folder


def seed(
    conn: Connection,
    photos: Sequence[tuple[str, Path]],
    *,
    storage: str = "base64",
    file_root: Path | None = None,
    photos_per_dog: int = 3,
    cats: int = 2,
) -> Seeded:
    """Fill ``animal``, ``media`` and ``dbfs`` from ``(breed folder, photo path)`` pairs.

    Each breed's photos are dealt to dogs ``photos_per_dog`` at a time (the last dog of a breed
    may get fewer). Then: one dog with photos of two breeds, cats (with dog pictures: only the
    species filter keeps them out), a dog without photos, one dog whose breed staff already set
    (Golden Retriever), and media rows that are not animal photos (a PDF, a video link and an
    owner's photo).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
    if storage == "file":
        if file_root is None:
            raise ValueError("storage='file' needs file_root (the folder the files go to)")
        file_root.mkdir(parents=True, exist_ok=True)
    if not photos:
        raise ValueError("seed needs at least one photo")
    by_breed: dict[str, list[Path]] = {}
    for folder, path in photos:
        by_breed.setdefault(folder, []).append(path)

    out = Seeded(storage=storage)
    animals: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    dbfs: list[dict[str, Any]] = []

    def add_animal(species: int, breed_id: int = MIXED_BREED_ID, name: str | None = None) -> int:
        animal_id = len(animals) + 1
        breed_name = {MIXED_BREED_ID: MIXED_BREED_NAME, STAFF_BREED_ID: STAFF_BREED_NAME}.get(
            breed_id, "Domestic Short Hair"
        )
        animals.append(
            {
                "id": animal_id,
                "name": name or _NAMES[(animal_id - 1) % len(_NAMES)],
                "code": f"{'D' if species == DOG else 'C'}2026{animal_id:03d}",
                "species": species,
                "breed": breed_id,
                "breed2": breed_id,
                "breed_name": breed_name,
                "sex": animal_id % 2,
            }
        )
        out.photos[animal_id] = []
        return animal_id

    def add_file(animal_id: int, content: bytes, mime: str, name: str) -> int:
        dbfs_id = media_id = len(media) + 1
        stored = f"{dbfs_id}{Path(name).suffix.lower() or '.jpg'}"
        if storage == "file":
            assert file_root is not None
            (file_root / stored).write_bytes(content)
            url, body = f"file:{stored}", ""
        else:
            url, body = "base64:", base64.b64encode(content).decode("ascii")
        dbfs.append(
            {"id": dbfs_id, "name": stored, "path": f"/animal/{animal_id}", "url": url, "c": body}
        )
        media.append(
            {
                "id": media_id,
                "link_type": LINK_ANIMAL,
                "link": animal_id,
                "type": MEDIA_FILE,
                "mime": mime,
                "name": stored,
                "notes": name,
                "dbfs": dbfs_id,
            }
        )
        return media_id

    def add_photo(animal_id: int, path: Path) -> int:
        media_id = add_file(animal_id, path.read_bytes(), "image/jpeg", path.name)
        out.photos[animal_id].append(media_id)
        out.photo_files[media_id] = path
        return media_id

    for folder in sorted(by_breed):
        files = by_breed[folder]
        for start in range(0, len(files), photos_per_dog):
            dog = add_animal(DOG)
            out.dogs[dog] = label_of(folder)
            for path in files[start : start + photos_per_dog]:
                add_photo(dog, path)

    breeds = sorted(by_breed)
    first, second = by_breed[breeds[0]][0], by_breed[breeds[len(breeds) // 2]][-1]
    out.mixed_dog = add_animal(DOG, name="Patch")
    for path in (first, second):
        add_photo(out.mixed_dog, path)
    for i in range(cats):
        cat = add_animal(CAT, DOMESTIC_SHORT_HAIR, name=f"Whiskers {i + 1}")
        out.cats.append(cat)
        add_photo(cat, by_breed[breeds[i % len(breeds)]][0])
    out.no_photo_dog = add_animal(DOG, name="Shadow")
    out.staff_dog = add_animal(DOG, STAFF_BREED_ID, name="Goldie")
    add_photo(out.staff_dog, by_breed[breeds[0]][-1])
    out.document_media.append(
        add_file(out.staff_dog, _PDF, "application/pdf", "vaccination-record.pdf")
    )
    # A video link (no file behind it) and a photo linked to a person, not an animal.
    media.append(
        {
            "id": len(media) + 1,
            "link_type": LINK_ANIMAL,
            "link": out.staff_dog,
            "type": MEDIA_VIDEO_LINK,
            "mime": "text/url",
            "name": "https://video.example.org/goldie",
            "notes": "video",
            "dbfs": 0,
        }
    )
    out.document_media.append(len(media))
    owner_photo = add_file(out.staff_dog, first.read_bytes(), "image/jpeg", "owner.jpg")
    media[-1]["link_type"] = LINK_OWNER
    out.document_media.append(owner_photo)

    conn.execute(
        text(
            "INSERT INTO animal (ID, AnimalName, ShelterCode, SpeciesID, BreedID, Breed2ID, "
            "BreedName, CrossBreed, Sex, Archived, LastChangedBy, LastChangedDate, "
            "RecordVersion) VALUES (:id, :name, :code, :species, :breed, :breed2, :breed_name, "
            "0, :sex, 0, 'intake', :changed, :version)"
        ),
        [{**a, "changed": INTAKE_DATE, "version": INTAKE_VERSION} for a in animals],
    )
    conn.execute(
        text(
            "INSERT INTO dbfs (ID, Name, Path, URL, Content) VALUES (:id, :name, :path, :url, :c)"
        ),
        dbfs,
    )
    conn.execute(
        text(
            "INSERT INTO media (ID, LinkTypeID, LinkID, MediaType, MediaMimeType, MediaName, "
            "MediaNotes, DBFSID, Date) VALUES (:id, :link_type, :link, :type, :mime, :name, "
            ":notes, :dbfs, :date)"
        ),
        [{**m, "date": INTAKE_DATE} for m in media],
    )
    return out


def photo_view_sql(dialect: str, storage: str) -> str:
    """``CREATE VIEW`` for what labeler reads: one row per animal photo.

    Columns: ``photo_id`` (media id), ``animal_id`` (the group), ``photo`` (base64 text, or the
    file name under the storage folder), ``species``, ``animal_name``, ``shelter_code``,
    ``media_name`` (context for staff) and ``media_date`` (media.Date, which ASM3 sets again
    when the photo is rotated: labeler's change marker). Lower-case aliases, so the names are
    the same on every server. A plain join: nothing in it can be updated through the view.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
    if storage == "base64":
        photo = "d.Content"
        # ASM3 reads a missing URL as base64 too (rows from before storage URLs existed).
        stored = "COALESCE(d.URL, '') IN ('', 'base64:')"
    elif dialect in ("mysql", "mariadb"):
        photo = "SUBSTRING(d.URL, 6)"
        stored = "d.URL LIKE 'file:%'"
    else:
        photo = "substr(d.URL, 6)"
        stored = "d.URL LIKE 'file:%'"
    # Only constants of this module go into the text: no value comes from outside.
    return (
        f"CREATE VIEW {PHOTO_VIEW} AS "  # noqa: S608
        f"SELECT m.ID AS photo_id, a.ID AS animal_id, {photo} AS photo, "
        "s.SpeciesName AS species, a.AnimalName AS animal_name, a.ShelterCode AS shelter_code, "
        "m.MediaName AS media_name, m.Date AS media_date "
        "FROM media m "
        "JOIN dbfs d ON d.ID = m.DBFSID "
        "JOIN animal a ON a.ID = m.LinkID "
        "JOIN species s ON s.ID = a.SpeciesID "
        "WHERE m.LinkTypeID = 0 AND m.MediaType = 0 AND m.MediaMimeType = 'image/jpeg' "
        f"AND {stored}"
    )


def create_photo_view(conn: Connection, storage: str) -> None:
    conn.execute(text(photo_view_sql(conn.dialect.name, storage)))


def target_columns(dialect: str) -> dict[str, str]:
    """The animal table's column names as that server reports them (PostgreSQL: lower case)."""
    names = {
        "key": "ID",
        "breed_id": "BreedID",
        "breed_name": "BreedName",
        "changed_by": "LastChangedBy",
        "changed_date": "LastChangedDate",
        "version": "RecordVersion",
    }
    if dialect == "postgresql":
        return {k: v.lower() for k, v in names.items()}
    return names


def labeler_settings(
    url: str,
    storage: str,
    dialect: str,
    *,
    file_root: Path | None = None,
    breed_map: Path | None = None,
) -> dict[str, str]:
    """The ``LABELER_*`` settings that point labeler at this database."""
    cols = target_columns(dialect)
    settings = {
        "LABELER_DATABASE_URL": url,
        "LABELER_SOURCE_TABLE": PHOTO_VIEW,
        "LABELER_SOURCE_ID_COLUMN": "photo_id",
        "LABELER_SOURCE_IMAGE_COLUMN": "photo",
        "LABELER_IMAGE_KIND": "base64" if storage == "base64" else "path",
        "LABELER_SOURCE_FILTER_COLUMN": "species",
        "LABELER_SOURCE_FILTER_VALUES": "Dog",
        "LABELER_SOURCE_GROUP_COLUMN": "animal_id",
        "LABELER_CONTEXT_COLUMNS": "animal_name,shelter_code",
        "LABELER_SOURCE_CHANGE_COLUMN": "media_date",
        "LABELER_TARGET_TABLE": "animal",
        "LABELER_TARGET_KEY_COLUMN": cols["key"],
        "LABELER_TARGET_UNDECIDED": (
            f"{cols['breed_id']}={MIXED_BREED_ID},{cols['breed_name']}={MIXED_BREED_NAME}"
        ),
        "LABELER_TARGET_STAMP": (
            f"{cols['changed_by']}=labeler,{cols['changed_date']}=now,{cols['version']}=increment"
        ),
        "LABELER_BREED_MAP": str(breed_map or default_breed_map()),
        "LABELER_BREED_TABLE": "breed",
        "LABELER_BREED_TABLE_COLUMNS": f"BreedID={cols['key']},BreedName={cols['breed_name']}",
    }
    if storage == "file":
        if file_root is None:
            raise ValueError("storage='file' needs file_root")
        settings["LABELER_PHOTO_ROOT"] = str(file_root)
    return settings


def default_breed_map() -> Path:
    """The shipped map from the model's labels to ASM3's default breeds."""
    return Path(str(resources.files("labeler") / "data" / "breedmaps" / "asm3.csv"))


SHELTER_TABLES = ("species", "breed", "animal", "media", "dbfs")


def snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the shelter's own tables, sorted, to compare before and after a pass."""
    return {
        table: sorted(
            (tuple(r) for r in conn.execute(text(f"SELECT * FROM {table}"))),  # noqa: S608
            key=repr,
        )
        for table in SHELTER_TABLES
    }


def animals(conn: Connection) -> list[dict[str, Any]]:
    """Every animal with its species and breed, as staff see them in ASM3."""
    rows = conn.execute(
        text(
            "SELECT a.ID AS id, a.AnimalName AS name, a.ShelterCode AS code, "
            "s.SpeciesName AS species, a.BreedID AS breed_id, a.BreedName AS breed_name, "
            "a.Breed2ID AS breed2_id, a.CrossBreed AS cross_breed, "
            "a.LastChangedBy AS changed_by, a.LastChangedDate AS changed_date, "
            "a.RecordVersion AS record_version "
            "FROM animal a JOIN species s ON s.ID = a.SpeciesID ORDER BY a.ID"
        )
    )
    return [dict(r) for r in rows.mappings()]


# --- what staff do in ASM3's own screens, for tests that change the shelter mid-pass ----------


def staff_sets_breed(conn: Connection, animal_id: int, breed_id: int) -> None:
    """Staff pick a breed on the animal's details screen: ASM3 saves the id and its name,
    and stamps the record as every save does."""
    conn.execute(
        text(
            "UPDATE animal SET BreedID = :b, Breed2ID = :b, "
            "BreedName = (SELECT BreedName FROM breed WHERE ID = :b), LastChangedBy = 'staff', "
            "LastChangedDate = CURRENT_TIMESTAMP, RecordVersion = :v WHERE ID = :a"
        ),
        {"a": animal_id, "b": breed_id, "v": STAFF_VERSION},
    )


def refile_species(conn: Connection, animal_id: int, species_id: int) -> None:
    """Staff correct the species (a 'dog' that is really a cat)."""
    conn.execute(
        text("UPDATE animal SET SpeciesID = :s WHERE ID = :a"), {"a": animal_id, "s": species_id}
    )


def delete_media(conn: Connection, media_id: int) -> None:
    """Staff delete a photo: ASM3 removes the media row and its stored file."""
    conn.execute(
        text("DELETE FROM dbfs WHERE ID = (SELECT DBFSID FROM media WHERE ID = :m)"),
        {"m": media_id},
    )
    conn.execute(text("DELETE FROM media WHERE ID = :m"), {"m": media_id})


def rotate_photo(conn: Connection, media_id: int, content: bytes) -> None:
    """Staff rotate a stored (base64) photo: ASM3 writes the new image under the same media id
    and sets media.Date to now (``asm3.media.rotate_media``)."""
    conn.execute(
        text("UPDATE dbfs SET Content = :c WHERE ID = (SELECT DBFSID FROM media WHERE ID = :m)"),
        {"c": base64.b64encode(content).decode("ascii"), "m": media_id},
    )
    conn.execute(text("UPDATE media SET Date = CURRENT_TIMESTAMP WHERE ID = :m"), {"m": media_id})


def delete_animal(conn: Connection, animal_id: int) -> None:
    """Staff delete an animal: ASM3 removes the record with its photos (media + dbfs rows)."""
    media = [
        int(m)
        for m in conn.scalars(
            text("SELECT ID FROM media WHERE LinkTypeID = :t AND LinkID = :a"),
            {"t": LINK_ANIMAL, "a": animal_id},
        )
    ]
    for media_id in media:
        delete_media(conn, media_id)
    conn.execute(text("DELETE FROM animal WHERE ID = :a"), {"a": animal_id})


def merge_animals(conn: Connection, keep_id: int, merged_id: int) -> None:
    """Staff merge a duplicate record into another (``asm3.animal.merge_animal``): the
    duplicate's photos move to the animal that stays (media.LinkID), then the duplicate is
    deleted. The photos keep their media ids."""
    conn.execute(
        text("UPDATE media SET LinkID = :k WHERE LinkTypeID = :t AND LinkID = :m"),
        {"k": keep_id, "t": LINK_ANIMAL, "m": merged_id},
    )
    conn.execute(text("DELETE FROM animal WHERE ID = :m"), {"m": merged_id})
