"""Test helpers: fresh databases on the real servers, a shelter-like source table, a tiny model."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    """The shared data folder: LABELER_TEST_SHARED, else ``shared/`` beside the project (or
    beside one of its parent folders, for a clone made deeper)."""
    if "LABELER_TEST_SHARED" in os.environ:
        return Path(os.environ["LABELER_TEST_SHARED"])
    for candidate in (p / "shared" for p in REPO.parents):
        if (candidate / "data").is_dir():
            return candidate
    return REPO.parent / "shared"


SHARED = _find_shared()
FULLFRAME = SHARED / "data" / "fullframe-sample"
BREEDS_TSV = SHARED / "data" / "breeds.tsv"

SERVER_URLS = {
    "postgresql": os.environ.get(
        "LABELER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "LABELER_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
BACKENDS = ("sqlite", "postgresql", "mariadb")

# In CI a missing database server or data folder is a failure, never a skip. A developer
# without them may opt into skipping with LABELER_TEST_SKIP_UNAVAILABLE=1.
ALLOW_SKIP = os.environ.get("LABELER_TEST_SKIP_UNAVAILABLE") == "1" and not os.environ.get("CI")


def require(path: Path) -> Path:
    """``path`` from the shared data folder, or fail the test (skip only when allowed)."""
    if not path.exists():
        message = f"{path} is missing: put the shared data beside the project or set "
        message += "LABELER_TEST_SHARED"
        if ALLOW_SKIP:
            pytest.skip(message)
        pytest.fail(message)
    return path


class ServerUnavailable(Exception):
    pass


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database on ``backend``; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'shelter.db'}"
        return
    admin_url = make_url(SERVER_URLS[backend])
    name = f"labeler_t_{uuid.uuid4().hex[:10]}"
    # No pool: a test may restart the server in between.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        raise ServerUnavailable(f"{backend} at {admin_url.host}:{admin_url.port}: {exc}") from exc
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                # MariaDB has no FORCE: a connection left open (a killed labeler, a failing
                # test's traceback) would hold a metadata lock and hang the DROP forever.
                leftover = conn.execute(
                    text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                    {"db": name},
                ).scalars()
                for session_id in list(leftover):
                    with contextlib.suppress(Exception):  # it may have ended meanwhile
                        conn.execute(text(f"KILL {int(session_id)}"))
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def photos_table(metadata: MetaData, kind: str, name: str = "animals") -> Table:
    """A shelter's own table: the image column type depends on how photos are stored."""
    if kind == "bytes":
        image_type: Any = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    elif kind == "base64":
        image_type = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    else:
        image_type = String(1024)
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(64)),
        Column("species", String(16)),
        Column("photo", image_type),
        Column("breed", String(128)),
        Column("breed_confidence", Float(precision=53)),
    )


def create_photos(
    engine: Engine, kind: str, rows: Iterable[dict[str, Any]], name: str = "animals"
) -> Table:
    metadata = MetaData()
    table = photos_table(metadata, kind, name)
    metadata.create_all(engine)
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for row in rows:
            # executemany takes its columns from the first row: give every row every column.
            batch.append({c.name: row.get(c.name) for c in table.columns})
            if len(batch) >= 200:
                conn.execute(table.insert(), batch)
                batch = []
        if batch:
            conn.execute(table.insert(), batch)
    return table


def encode(value: bytes, kind: str, relative_path: str | None = None) -> Any:
    if kind == "bytes":
        return value
    if kind == "base64":
        return base64.b64encode(value).decode("ascii")
    if kind == "datauri":
        return "data:image/jpeg;base64," + base64.b64encode(value).decode("ascii")
    return relative_path


def png_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (40, 30), mode: str = "RGB"
) -> bytes:
    rng = np.random.default_rng(sum(color))
    arr = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    image = Image.fromarray(arr.astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fullframe_photos() -> list[Path]:
    photos = sorted(FULLFRAME.glob("*/*.JPEG"))
    if not photos:
        raise FileNotFoundError(f"no sample photos under {FULLFRAME}")
    return photos


def breed_names() -> list[str]:
    lines = BREEDS_TSV.read_text().splitlines()[1:]
    return [line.split("\t")[2] for line in lines]


def build_tiny_artifact(directory: Path, labels: list[str] | None = None, size: int = 16) -> Path:
    """A deterministic stand-in for a trained model, in the real artifact format.

    Its logits are fixed linear functions of the photo's mean colour, so different photos get
    different, sometimes confident, sometimes doubtful predictions.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from labeler.model.artifact import save_artifact
    from labeler.model.preprocessing import PreprocessingConfig

    labels = labels or breed_names()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(len(labels), activation="softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(7)
    weights = [rng.normal(0, 6.0, (3, len(labels))), rng.normal(0, 0.5, len(labels))]
    dense.set_weights(weights)
    # The version from what the model is, not from the saved file's bytes (a zip with times in
    # it): the audit draw depends on the version, so every run of the suite audits the same rows.
    digest = hashlib.sha256(
        json.dumps([labels, size]).encode() + b"".join(w.tobytes() for w in weights)
    ).hexdigest()[:10]
    save_artifact(
        directory,
        model,
        labels,
        PreprocessingConfig(image_size=(size, size)),
        name="tiny-test",
        version=f"tiny-test-{digest}",
        kind="test",
        decision={"review_threshold": 0.2, "review_margin": 0.0},
        quality_note="a test stand-in: its labels are meaningless",
    )
    return directory


@contextmanager
def serving_in_thread(server: Any) -> Iterator[Any]:
    """Run a test HTTP server (with a ``stopping`` event) on a thread; stop it for sure."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


def without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the test server on 127.0.0.1 must not go to a proxy from the environment."""
    for key in list(os.environ):
        if key.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(key)


def with_animals_in_a_shelter_record(
    url: str, animals: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    """Store ``animals`` (labeler_group rows) and configure one answer per animal, written to
    a shelter record through a beagle/pug breed map (BreedID 19 and 5; 0 is undecided), as
    labeler's settings would; returns the breed map's path."""
    from labeler.store.schema import group

    breed_map = tmp_path / "map.csv"
    breed_map.write_text("label,BreedID,BreedName\nbeagle,19,Beagle\npug,5,Pug\n")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(group.insert(), animals)
    engine.dispose()
    for key, value in {
        "SOURCE_GROUP_COLUMN": "id",
        "TARGET_TABLE": "animals",
        "TARGET_KEY_COLUMN": "id",
        "BREED_MAP": str(breed_map),
        "TARGET_UNDECIDED": "BreedID=0",
    }.items():
        monkeypatch.setenv(f"LABELER_{key}", value)
    return breed_map
