"""docs/shelters/asm3.md, run as written: its checks, views, settings, grants and report, on
PostgreSQL and MariaDB, each block as the role the recipe names, on a database made the way
ASM3's installer makes one, with a whole per-animal pass under exactly the documented
privileges."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from labeler.config.settings import Settings
from labeler.demo import shelter as demo_shelter
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.shelter.breedmap import load_breed_map
from labeler.store import migrate
from labeler.store.schema import LABELLED, NEEDS_REVIEW, REVIEWED, group
from tests.asm3_fixture import ASM3_USER, create_asm3_user, drop_asm3_user, sample_photos
from tests.helpers import REPO

DOC = REPO / "docs" / "shelters" / "asm3.md"


def doc_blocks() -> dict[str, str]:
    """Fenced SQL blocks of the recipe, by their first line (`-- PostgreSQL, base64`, ...)."""
    blocks = {}
    for body in re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("-- "):
            blocks[first[3:].strip()] = rest
    return blocks


def doc_env(server: str) -> dict[str, str]:
    """The `.env` block of the recipe for ``server``."""
    for body in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S):
        pairs = dict(
            line.split("=", 1) for line in body.splitlines() if line.startswith("LABELER_")
        )
        if server in pairs.get("LABELER_DATABASE_URL", ""):
            return pairs
    raise AssertionError(f"no .env block for {server} in {DOC}")


def statements(block: str) -> list[str]:
    body = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _normal(sql: str) -> str:
    return " ".join(sql.replace(";", " ").split()).lower()


BLOCKS = {
    "PostgreSQL": ("base64", "file", "mixed", "roles", "grants", "labeler tables", "ASM3 user"),
    "MariaDB": ("base64", "file", "mixed", "grants", "labeler tables", "ASM3 user"),
}


def test_the_recipe_has_every_block() -> None:
    blocks = doc_blocks()
    assert "Facts, both servers" in blocks
    for server, whats in BLOCKS.items():
        for what in (*whats, "report"):
            assert f"{server}, {what}" in blocks, (server, what)
    # The grants name the user ASM3 itself connects with, at the hosts an install gives it.
    assert "TO asm3_app" in blocks["PostgreSQL, ASM3 user"]
    assert "'asm3_app'@'localhost', 'asm3_app'@'127.0.0.1'" in blocks["MariaDB, ASM3 user"]
    assert "'asm3'@" not in DOC.read_text()


@pytest.mark.parametrize("storage", ["base64", "file"])
@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_the_documented_views_are_the_fixture_views(server: str, storage: str) -> None:
    """The fixture every ASM3 test uses reads through exactly the view the recipe documents."""
    block = doc_blocks()[f"{'PostgreSQL' if server == 'postgresql' else 'MariaDB'}, {storage}"]
    assert _normal(block) == _normal(demo_shelter.photo_view_sql(server, storage))


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_the_documented_settings_are_the_fixture_settings(server: str) -> None:
    env = doc_env("postgresql" if server == "postgresql" else "mysql")
    storage = "base64" if env["LABELER_IMAGE_KIND"] == "base64" else "file"
    fixture = demo_shelter.labeler_settings(
        env["LABELER_DATABASE_URL"],
        storage,
        server,
        file_root=Path(env.get("LABELER_PHOTO_ROOT", "/")),
        breed_map=Path(env["LABELER_BREED_MAP"]),
    )
    assert env == fixture
    # And labeler accepts them as they are.
    Settings(**{k.removeprefix("LABELER_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


class Roles:
    """The recipe's roles under unique names, with the blocks rewritten to use them."""

    def __init__(self, server: str, admin_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.server, self.admin_url = server, admin_url
        self.database = make_url(admin_url).database or ""
        # labeler_owner, labeler_app and ASM3's user asm3_app, under names no other run uses.
        self.owner, self.app, self.asm3 = f"lo_{tag}", f"la_{tag}", f"a3_{tag}"
        self.passwords = {name: uuid.uuid4().hex for name in (self.owner, self.app, self.asm3)}

    def rewrite(self, block: str) -> str:
        block = re.sub(r"\blabeler_owner\b", self.owner, block)
        block = re.sub(r"\blabeler_app\b", self.app, block)
        block = re.sub(rf"\b{ASM3_USER}\b", self.asm3, block)
        block = block.replace("'change-me-too'", f"'{self.passwords[self.app]}'")
        block = block.replace("'change-me'", f"'{self.passwords[self.owner]}'")
        return re.sub(r"\basm\.", f"{self.database}.", block)

    def url(self, role: str) -> str:
        url = make_url(self.admin_url).set(username=role, password=self.passwords[role])
        return url.render_as_string(hide_password=False)

    def drop(self, admin: Engine) -> None:
        drop_asm3_user(admin, self.asm3)
        with admin.begin() as conn:
            for role in (self.app, self.owner):
                if self.server == "postgresql":
                    exists = conn.execute(
                        text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
                    ).first()
                    if not exists:
                        continue
                    conn.execute(text(f"REASSIGN OWNED BY {role} TO CURRENT_USER"))
                    conn.execute(text(f"DROP OWNED BY {role}"))
                    conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
                else:
                    conn.execute(text(f"DROP USER IF EXISTS '{role}'@'%'"))


def _run(engine: Engine, block: str) -> None:
    with engine.begin() as conn:
        for statement in statements(block):
            conn.execute(text(statement))


@pytest.fixture
def asm3_server(server_db_url: str, tmp_path: Path) -> Iterator[tuple[str, Roles, Engine]]:
    server = "postgresql" if server_db_url.startswith("postgresql") else "mariadb"
    roles = Roles(server, server_db_url)
    admin = create_engine(server_db_url, poolclass=NullPool)
    try:
        yield server, roles, admin
    finally:
        roles.drop(admin)
        admin.dispose()


def test_a_pass_under_the_documented_grants(
    asm3_server: tuple[str, Roles, Engine],
    tmp_path: Path,
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, roles, admin = asm3_server
    name = "PostgreSQL" if server == "postgresql" else "MariaDB"
    blocks = {k: roles.rewrite(v) for k, v in doc_blocks().items()}
    # PostgreSQL with photos on disk, MariaDB with photos in the database: both kinds covered.
    storage = "file" if server == "postgresql" else "base64"
    file_root = tmp_path / "asm3-files"

    # ASM3's own database, as its installer makes it: the administrator creates ASM3's user,
    # ASM3 creates its schema through that user; ASM3's saves go through it too.
    asm3 = create_engine(
        create_asm3_user(admin, roles.asm3, roles.passwords[roles.asm3]), poolclass=NullPool
    )
    with asm3.begin() as conn:
        demo_shelter.create_schema(conn)
        seeded = demo_shelter.seed(
            conn, sample_photos(3), storage=storage, file_root=file_root, photos_per_dog=3
        )
    # Then the recipe, step by step, each block as the role it names. Section 1's check and
    # section 2's view: ASM3's user.
    assert _storage_kinds(asm3, blocks["Facts, both servers"]) == {f"{storage}:"}
    _run(asm3, blocks[f"{name}, {storage}"])
    if server == "postgresql":
        # Creating roles needs the administrator: ASM3's user, owner of the database, may not.
        with pytest.raises(DBAPIError, match="permission denied to create role"):
            _run(asm3, blocks[f"{name}, roles"])
        _run(admin, blocks[f"{name}, roles"])
        # ASM3's user owns ASM3's tables and the view: it grants on them.
        _run(asm3, blocks[f"{name}, grants"])
    else:
        _run(admin, blocks[f"{name}, grants"])
    owner = create_engine(roles.url(roles.owner), poolclass=NullPool)
    migrate.upgrade(owner)
    # PostgreSQL: the owner of labeler's tables grants on them; MariaDB: the administrator.
    _run(owner if server == "postgresql" else admin, blocks[f"{name}, labeler tables"])
    _run(owner if server == "postgresql" else admin, blocks[f"{name}, ASM3 user"])
    owner.dispose()
    with admin.connect() as conn:
        before = demo_shelter.snapshot(conn)

    # The recipe's settings (test_the_documented_settings_are_the_fixture_settings), as the
    # service role, for this storage kind.
    env = demo_shelter.labeler_settings(roles.url(roles.app), storage, server, file_root=file_root)
    assert {k for k in env} >= {"LABELER_TARGET_TABLE", "LABELER_BREED_TABLE"}
    settings = Settings(
        **{k.removeprefix("LABELER_").lower(): v for k, v in env.items()},  # type: ignore[arg-type]
        model_dir=tiny_artifact,
        batch_size=16,
        # The tiny stand-in model is confident about nearly everything: a strict threshold
        # sends part of the animals to the review queue the report shows.
        review_threshold=0.9,
    )
    # `labeler check`, as the recipe says to run it first, passes under these grants.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tiny_artifact))
    assert main(["check"]) == 0, capsys.readouterr().out
    assert "ok    breed map: 114 labels mapped" in capsys.readouterr().out

    service = Service.build(settings)
    assert "readable" in service.probe()
    summary = service.run_pass()
    assert summary.status == "finished", summary.line()
    assert summary.failed == 0, summary.line()

    breed_map = load_breed_map(demo_shelter.default_breed_map())
    with admin.connect() as conn:
        after = demo_shelter.snapshot(conn)
        animals = {a["id"]: a for a in demo_shelter.animals(conn)}
        groups = {r.group_id: r for r in conn.execute(select(group))}
    _only_breeds_changed(before, after)
    assert seeded.staff_dog is not None
    assert animals[seeded.staff_dog]["breed_name"] == "Golden Retriever"
    assert groups[str(seeded.staff_dog)].status == REVIEWED
    labelled = [g for g in groups.values() if g.status == LABELLED]
    assert labelled, "the tiny model labels some animals confidently"
    for g in labelled:
        values = breed_map.lookup(g.breed)
        record = animals[int(g.group_id)]
        assert values == {
            "BreedID": str(record["breed_id"]),
            "BreedName": record["breed_name"],
            "Breed2ID": str(record["breed2_id"]),
            "CrossBreed": str(record["cross_breed"]),
        }
        # Stamped as ASM3 stamps a save: by whom, when, and a RecordVersion that changed.
        assert record["changed_by"] == "labeler" and record["changed_date"] is not None
        assert record["record_version"] == demo_shelter.INTAKE_VERSION + 1
    for a in animals.values():
        if str(a["id"]) not in {g.group_id for g in labelled}:
            assert (a["changed_by"], a["record_version"]) == ("intake", demo_shelter.INTAKE_VERSION)

    # Staff read the queue with the documented report, as ASM3's own user.
    with asm3.connect() as conn:
        report = [dict(r) for r in conn.execute(text(blocks[f"{name}, report"])).mappings()]
    queue = {g for g, r in groups.items() if r.status == NEEDS_REVIEW}
    assert queue, "the strict threshold sends some animals to review"
    assert {str(r["animalid"]) for r in report} == queue
    for row in report:
        answer = groups[str(row["animalid"])]
        # ASM3's own breed name, the model's label beside it, and a whole percentage.
        assert row["breed1"] == (breed_map.name_of(answer.breed) or "not in the breed map")
        assert row["label1"] == answer.breed
        assert isinstance(row["pct1"], int) and abs(row["pct1"] - answer.confidence * 100) <= 0.5
        if answer.breed_2 is not None:
            assert row["breed2"] == (breed_map.name_of(answer.breed_2) or "not in the breed map")
        assert row["animalname"] == animals[row["animalid"]]["name"]
        assert row["mediaids"] == ",".join(str(m) for m in seeded.photos[row["animalid"]])

    # A decision on labeler's side, recorded as the recipe says, reaches the record next pass.
    # Two decisions, recorded the two ways the recipe describes: on labeler's side (the SQL
    # Interface, as ASM3's user) and in ASM3's own animal screen.
    assert len(queue) >= 2
    chosen, in_asm3 = sorted(queue)[:2]
    with asm3.begin() as conn:
        conn.execute(
            text(
                "UPDATE labeler_group SET reviewed_breed = 'beagle', reviewed_by = 'anna', "
                "reviewed_at = CURRENT_TIMESTAMP WHERE group_id = :g"
            ),
            {"g": chosen},
        )
    with asm3.begin() as conn:
        demo_shelter.staff_sets_breed(conn, int(in_asm3), 163)  # Poodle
    service.run_pass()
    with admin.connect() as conn:
        records = {a["id"]: a for a in demo_shelter.animals(conn)}
        settled = {r.group_id: r for r in conn.execute(select(group))}
    with asm3.connect() as conn:
        still_queued = {str(r[0]) for r in conn.execute(text(blocks[f"{name}, report"]))}
    asm3.dispose()
    service.engine.dispose()
    record = records[int(chosen)]
    assert (record["breed_id"], record["breed_name"]) == (19, "Beagle")
    assert (record["changed_by"], record["record_version"]) == (
        "labeler",
        demo_shelter.INTAKE_VERSION + 1,
    )
    assert settled[chosen].status == REVIEWED
    record = records[int(in_asm3)]
    assert (record["breed_id"], record["breed_name"]) == (163, "Poodle"), "staff's breed stays"
    assert settled[in_asm3].status == REVIEWED and settled[in_asm3].staff_values
    assert still_queued == queue - {chosen, in_asm3}


def _storage_kinds(engine: Engine, facts: str) -> set[str]:
    """What section 1's storage check prints (its last statement)."""
    with engine.connect() as conn:
        return set(conn.execute(text(statements(facts)[-1])).scalars())


def _only_breeds_changed(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> None:
    """Labeler changed nothing of the shelter's but the breed columns of ``animal`` (BreedID,
    Breed2ID, BreedName, CrossBreed: a single breed as ASM3 saves one)."""
    for table in demo_shelter.SHELTER_TABLES:
        if table != "animal":
            assert after[table] == before[table], table
    # animal: ID, AnimalName, ShelterCode, SpeciesID, BreedID, Breed2ID, BreedName, ...
    keep = (0, 1, 2, 3, 8, 9)

    def kept(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(r[i] for i in keep) for r in rows)

    assert kept(after["animal"]) == kept(before["animal"])


def test_photo_values_through_the_documented_view(server_db_url: str, tmp_path: Path) -> None:
    """Each documented view gives the photo exactly as stored (base64 text or the file name), the
    mixed view on a database holding both kinds, and section 1's check names what it holds."""
    server = "postgresql" if server_db_url.startswith("postgresql") else "mariadb"
    name = "PostgreSQL" if server == "postgresql" else "MariaDB"
    blocks = doc_blocks()
    admin = create_engine(server_db_url, poolclass=NullPool)
    for storage in ("base64", "file", "mixed"):
        root = tmp_path / storage
        with admin.begin() as conn:
            for table in ("animal_photo", *demo_shelter.SHELTER_TABLES):
                kind = "VIEW" if table == "animal_photo" else "TABLE"
                conn.execute(text(f"DROP {kind} IF EXISTS {table}"))
            demo_shelter.create_schema(conn)
            seeded = demo_shelter.seed(
                conn,
                sample_photos(2),
                storage="base64" if storage == "base64" else "file",
                file_root=root,
            )
            in_database: set[int] = set()
            if storage == "mixed":
                # A database that moved to file storage half-way: every other photo is still
                # stored in the database, as ASM3 stores one there.
                in_database = set(sorted(seeded.photo_files)[::2])
                for media_id in in_database:
                    content = base64.b64encode(seeded.photo_files[media_id].read_bytes())
                    conn.execute(
                        text(
                            "UPDATE dbfs SET URL = 'base64:', Content = :c "
                            "WHERE ID = (SELECT DBFSID FROM media WHERE ID = :m)"
                        ),
                        {"c": content.decode("ascii"), "m": media_id},
                    )
        kinds = {"base64": {"base64:"}, "file": {"file:"}, "mixed": {"base64:", "file:"}}
        assert _storage_kinds(admin, blocks["Facts, both servers"]) == kinds[storage]
        _run(admin, blocks[f"{name}, {storage}"])
        with admin.connect() as conn:
            rows = conn.execute(text("SELECT photo_id, photo FROM animal_photo")).all()
        assert {r.photo_id for r in rows} == {m for ms in seeded.photos.values() for m in ms}
        for r in rows:
            stored = storage == "base64" or r.photo_id in in_database
            data = base64.b64decode(r.photo) if stored else (root / r.photo).read_bytes()
            assert data == seeded.photo_files[r.photo_id].read_bytes()
    admin.dispose()
