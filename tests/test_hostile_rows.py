"""A whole pass over a shelter table that mixes good photos with hostile and broken rows.

Every good row must be labelled, every hostile row must fail with its own reason, and nothing in
the shelter's tables may change except the write-back columns of the rows that were labelled.
"""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select, text

from labeler.config.settings import Settings
from labeler.decide.audit import is_audit
from labeler.decide.decision import decide_with_audit
from labeler.photos.decoding import decode_image
from labeler.service.app import Service
from labeler.store import migrate
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, photo, run
from tests.helpers import create_photos, png_bytes


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _jpeg(color: tuple[int, int, int], **options: Any) -> bytes:
    return _encode(
        Image.open(io.BytesIO(png_bytes(color, (48, 36)))), "JPEG", quality=90, **options
    )


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("rex.jpg", b"x" * 100)
    return buf.getvalue()


def _good_photos() -> dict[int, bytes]:
    rotated = Image.Exif()
    rotated[0x0112] = 6
    palette = Image.open(io.BytesIO(png_bytes((200, 60, 30)))).convert("P")
    frames = [Image.new("RGB", (24, 16), c) for c in ((30, 90, 200), (0, 255, 0))]
    grey16 = (np.linspace(0, 65535, 24 * 16).reshape(16, 24)).astype(np.uint16)
    shared = png_bytes((90, 140, 60))
    return {
        1: png_bytes((200, 40, 40)),
        2: png_bytes((40, 200, 40)),
        3: png_bytes((40, 40, 200)),
        4: _jpeg((230, 220, 200)),
        5: _jpeg((30, 30, 30)),
        6: _jpeg((120, 80, 40), exif=rotated),
        7: _encode(palette, "PNG", transparency=0),
        8: _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        9: _encode(Image.fromarray(grey16), "PNG"),
        10: _encode(Image.new("CMYK", (24, 16), (0, 200, 200, 20)), "JPEG"),
        11: shared,  # the same image value in two rows: each row is labelled
        12: shared,
    }


HTML = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

# id: (stored BLOB, the start of the recorded reason)
HOSTILE: dict[int, tuple[bytes | None, str]] = {
    101: (
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "not an image Pillow can read (it starts like a JPEG file but is corrupt or truncated)",
    ),
    102: (png_bytes((10, 20, 30), (64, 64))[:300], "image data is corrupt or truncated"),
    103: (HTML, "not an image Pillow can read (it looks like an HTML page)"),
    104: (b"", "the image column is empty"),
    105: (None, "the image column is NULL"),
    106: (_png_header(100_000, 100_000), "image is too large to decode safely"),
    107: (_png_header(10_000, 6_000), "image declares 10000x6000 pixels, over the limit"),
    108: (b"data:image/png;base64,@@not base64@@", "base64 text cannot be decoded"),
    109: (
        base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 40),
        "image data is corrupt or truncated",
    ),
    110: (
        b'{"error": "photo not found", "code": 404}',
        "not an image Pillow can read (it looks like JSON",
    ),
    111: (_zip(), "not an image Pillow can read (it looks like a ZIP archive)"),
    112: (b"  \r\n ", "the image column is empty (only whitespace)"),
    113: (b"'); DROP TABLE animals; --", "not an image Pillow can read (it looks like plain text)"),
    114: (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", "not an image Pillow can read"),
}


def _rows(good: dict[int, bytes]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"id": pid, "name": f"dog {pid}", "species": "dog", "photo": data}
        for pid, data in good.items()
    ]
    rows += [
        {"id": pid, "name": f"hostile {pid}", "species": "dog", "photo": value}
        for pid, (value, _) in HOSTILE.items()
    ]
    return rows


def _snapshot(conn: Any, table: str) -> dict[int, tuple[Any, ...]]:
    rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY id")).mappings()
    return {
        int(r["id"]): tuple(bytes(v) if isinstance(v, memoryview) else v for v in r.values())
        for r in rows
    }


def _objects(engine: Any) -> set[str]:
    found = inspect(engine)
    return set(found.get_table_names()) | set(found.get_view_names())


def test_hostile_rows_fail_alone(db_url: str, tiny_artifact: Path) -> None:
    settings = Settings(
        database_url=db_url,
        source_table="animals",
        source_image_column="photo",
        image_kind="auto",
        writeback_breed_column="breed",
        writeback_confidence_column="breed_confidence",
        model_dir=tiny_artifact,
        batch_size=5,  # batches mixing good and hostile rows
    )
    service = Service.build(settings)
    engine = service.engine
    good = _good_photos()
    create_photos(engine, "bytes", _rows(good))
    decoy = Table(
        "adoptions",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("note", String(64)),
    )
    decoy.create(engine)
    with engine.begin() as conn:
        conn.execute(decoy.insert(), [{"id": 1, "note": "Rex went home"}, {"id": 2, "note": "x"}])
        source_before = _snapshot(conn, "animals")
        decoy_before = _snapshot(conn, "adoptions")
    objects_before = _objects(engine)
    migrate.upgrade(engine)

    summary = service.run_pass()

    expected = {}
    for pid, data in good.items():
        prediction = service.classifier.classify_images(
            [decode_image(data, target_size=service.classifier.artifact.preprocessing.image_size)]
        )[0]
        t = service.thresholds
        audit = is_audit(str(pid), service.classifier.version, t.audit_share)
        expected[str(pid)] = (prediction, decide_with_audit(prediction, t, audit))
    with engine.connect() as conn:
        state = {r.photo_id: r for r in conn.execute(select(photo))}
        run_row = conn.execute(select(run)).one()
        source_after = _snapshot(conn, "animals")
        decoy_after = _snapshot(conn, "adoptions")
    objects_after = _objects(engine)

    assert set(state) == {str(p) for p in good} | {str(p) for p in HOSTILE}
    for pid, (prediction, decision) in expected.items():
        row = state[pid]
        assert row.status == decision.status and row.status in (LABELLED, NEEDS_REVIEW), pid
        assert row.breed == prediction.label, pid
        assert row.confidence == pytest.approx(prediction.confidence, abs=1e-5)
        assert row.last_error is None and row.attempts == 0
    # The same image in two rows: the same answer. Only the audit (drawn per photo id and
    # model version, so it may pick one of the two) can send one of them to staff.
    twins = state["11"], state["12"]
    assert twins[0].breed == twins[1].breed
    assert twins[0].confidence == pytest.approx(twins[1].confidence, abs=1e-5)
    assert twins[0].status == twins[1].status or any(t.audit for t in twins)
    for pid, (_, reason) in HOSTILE.items():
        row = state[str(pid)]
        assert row.status == FAILED and row.attempts >= 1, pid  # == 1: checked at the end
        assert row.last_error.startswith(reason), (pid, row.last_error)
        assert row.breed is None and row.confidence is None
        assert row.photo_ref is None  # stored bytes have no reference
    statuses = [r.status for r in state.values()]
    assert statuses.count(LABELLED) > 0, "the write-back needs at least one labelled row"
    attempts = {pid: state[str(pid)].attempts for pid in HOSTILE}
    assert (run_row.labelled, run_row.needs_review, run_row.failed) == (
        statuses.count(LABELLED),
        statuses.count(NEEDS_REVIEW),
        sum(attempts.values()),
    )
    assert run_row.status == "finished"
    assert summary.processed == len(good) + sum(attempts.values())

    # The shelter's data: only breed and breed_confidence of labelled rows changed.
    assert set(source_after) == set(source_before)
    with engine.connect() as conn:
        columns = list(conn.execute(text("SELECT * FROM animals WHERE 1 = 0")).keys())
    breed_at, confidence_at = columns.index("breed"), columns.index("breed_confidence")
    for pid, before in source_before.items():
        after = source_after[pid]
        row = state[str(pid)]
        if row.status == LABELLED:
            assert before[breed_at] is None and before[confidence_at] is None
            assert after[breed_at] == row.breed
            assert after[confidence_at] == pytest.approx(row.confidence)
            keep = [i for i in range(len(columns)) if i not in (breed_at, confidence_at)]
            assert [after[i] for i in keep] == [before[i] for i in keep], pid
        else:
            assert after == before, pid
    assert source_after[11][columns.index("photo")] == good[11]
    assert decoy_after == decoy_before
    assert objects_before <= objects_after
    assert {
        name for name in objects_after - objects_before if not name.startswith("labeler_")
    } == set()
    engine.dispose()

    # A row that failed must wait for the next pass, not use up its retries in this one.
    retried = {pid: n for pid, n in attempts.items() if n != 1}
    assert retried == {}, "hostile rows were retried within a single pass"
