"""Fitting an existing database: a view as the source, text ids, photos behind URLs."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, Text, create_engine, select, text
from sqlalchemy.dialects import mysql

from labeler.config.settings import Settings
from labeler.decide.audit import is_audit
from labeler.decide.decision import decide_with_audit
from labeler.photos.decoding import decode_image
from labeler.service.app import Service
from labeler.shelter.source import SourceError
from labeler.store import migrate
from labeler.store.schema import FAILED, photo
from tests.helpers import FULLFRAME, create_photos, encode, fullframe_photos


def states(url: str) -> dict[str, object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {r.photo_id: r for r in conn.execute(select(photo))}
    engine.dispose()
    return rows


def expected_for(service: Service, path: Path, photo_id: str) -> tuple[str, str]:
    prediction = service.classifier.classify_images(
        [
            decode_image(
                path.read_bytes(), target_size=service.classifier.artifact.preprocessing.image_size
            )
        ]
    )[0]
    t = service.thresholds
    audit = is_audit(photo_id, service.classifier.version, t.audit_share)
    return prediction.label, decide_with_audit(prediction, t, audit).status


def test_view_joining_the_associations_tables(db_url: str, tiny_artifact: Path) -> None:
    photos = fullframe_photos()[:12]
    settings = Settings(
        database_url=db_url,
        source_table="dog_photos",
        source_id_column="photo_id",
        source_image_column="picture",
        model_dir=tiny_artifact,
        batch_size=5,
    )
    service = Service.build(settings)
    rows = [
        {"id": i, "species": "dog" if i % 3 else "cat", "photo": encode(p.read_bytes(), "bytes")}
        for i, p in enumerate(photos, start=1)
    ]
    create_photos(service.engine, "bytes", rows)
    with service.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE VIEW dog_photos AS SELECT id AS photo_id, photo AS picture FROM animals "
                "WHERE species = 'dog'"
            )
        )
    migrate.upgrade(service.engine)
    summary = service.run_pass()
    got = states(db_url)
    dogs = {str(r["id"]): photos[int(r["id"]) - 1] for r in rows if r["species"] == "dog"}
    assert set(got) == set(dogs) and summary.processed == len(dogs)
    for pid, path in dogs.items():
        assert (got[pid].breed, got[pid].status) == expected_for(service, path, pid)  # type: ignore[attr-defined]
    service.engine.dispose()


def test_text_ids(db_url: str, tiny_artifact: Path) -> None:
    photos = fullframe_photos()[:6]
    settings = Settings(
        database_url=db_url,
        source_table="pictures",
        source_id_column="uuid",
        source_image_column="data",
        image_kind="base64",
        model_dir=tiny_artifact,
    )
    service = Service.build(settings)
    metadata = MetaData()
    table = Table(
        "pictures",
        metadata,
        Column("uuid", String(36), primary_key=True),
        Column("data", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")),
    )
    metadata.create_all(service.engine)
    ids = [f"0b7c{i:04d}-aaaa-bbbb-cccc-{i:012d}" for i in range(len(photos))]
    with service.engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"uuid": pid, "data": encode(p.read_bytes(), "datauri")}
                for pid, p in zip(ids, photos, strict=True)
            ],
        )
    migrate.upgrade(service.engine)
    service.run_pass()
    got = states(db_url)
    assert set(got) == set(ids)
    for pid, path in zip(ids, photos, strict=True):
        assert (got[pid].breed, got[pid].status) == expected_for(service, path, pid)  # type: ignore[attr-defined]
    service.engine.dispose()


@pytest.fixture
def photo_server() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FULLFRAME))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_photos_behind_urls(db_url: str, tiny_artifact: Path, photo_server: str) -> None:
    photos = fullframe_photos()[:8]
    settings = Settings(
        database_url=db_url,
        source_table="animals",
        source_image_column="photo",
        url_allowed_hosts=["127.0.0.1"],
        url_timeout_seconds=5,
        model_dir=tiny_artifact,
    )
    service = Service.build(settings)
    rows = [
        {"id": i, "photo": f"{photo_server}/{p.relative_to(FULLFRAME)}"}
        for i, p in enumerate(photos, start=1)
    ]
    rows.append({"id": 100, "photo": f"{photo_server}/no/such/photo.jpg"})
    rows.append({"id": 101, "photo": "http://example.invalid/dog.jpg"})
    rows.append({"id": 102, "photo": "file:///etc/passwd"})
    create_photos(service.engine, "url", rows)
    migrate.upgrade(service.engine)
    service.run_pass()
    got = states(db_url)
    for i, path in enumerate(photos, start=1):
        row = got[str(i)]
        assert (row.breed, row.status) == expected_for(service, path, str(i))  # type: ignore[attr-defined]
        assert row.photo_ref == rows[i - 1]["photo"]  # type: ignore[attr-defined]
    reasons = {pid: got[pid].last_error for pid in ("100", "101", "102")}  # type: ignore[attr-defined]
    assert all(got[pid].status == FAILED for pid in reasons)  # type: ignore[attr-defined]
    assert "HTTP 404" in reasons["100"]
    assert "not in the allow-list" in reasons["101"]
    assert "scheme 'file' is not allowed" in reasons["102"]
    service.engine.dispose()


def test_missing_source_and_columns_are_clear_errors(db_url: str, tiny_artifact: Path) -> None:
    service = Service.build(
        Settings(database_url=db_url, source_table="nope", model_dir=tiny_artifact)
    )
    with pytest.raises(SourceError, match="'nope' does not exist"):
        service.source()
    create_photos(service.engine, "bytes", [])
    service = Service.build(
        Settings(
            database_url=db_url,
            source_table="animals",
            source_image_column="picture",
            model_dir=tiny_artifact,
        )
    )
    with pytest.raises(SourceError, match="LABELER_SOURCE_IMAGE_COLUMN='picture': no such column"):
        service.source()
    service.engine.dispose()
