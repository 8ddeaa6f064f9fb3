"""LABELER_MAX_IMAGE_BYTES is checked by the database before an image value is read: a row
over the limit fails with its size, its value never reaches labeler's
memory, and the rest of the batch is labelled - on every server."""

from __future__ import annotations

import base64
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import select

from labeler.config.settings import Settings
from labeler.core.domain import SourceRow
from labeler.labelling.batches import read_rows
from labeler.photos.decoding import ImageError
from labeler.photos.fetching import LoaderConfig, load_bytes
from labeler.service.app import Service
from labeler.shelter.source import reflect_source
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, photo
from labeler.store.seam import SqlStore
from labeler.store.source_rows import ImageLimit
from tests.helpers import create_photos, png_bytes

LIMIT = 100_000
SMALL = {1: (200, 40, 40), 2: (40, 200, 40), 3: (40, 40, 200)}
BIG = (11, 12, 13)


def _big_value(size: int, seed: int) -> bytes:
    head = png_bytes((9, 9, 9), (4, 4))
    return head + bytes([seed]) * (size - len(head))


def test_rows_over_the_limit_fail_with_their_size_and_the_rest_is_labelled(
    db_url: str, tiny_artifact: Path
) -> None:
    settings = Settings(
        database_url=db_url,
        source_table="animals",
        source_image_column="photo",
        model_dir=tiny_artifact,
        max_image_bytes=LIMIT,
        batch_size=8,  # one batch mixing small and big rows
        audit_share=0.0,
    )
    service = Service.build(settings)
    engine = service.engine
    rows = [{"id": i, "species": "dog", "photo": png_bytes(c)} for i, c in SMALL.items()]
    rows += [{"id": i, "species": "dog", "photo": _big_value(300_000, i)} for i in BIG]
    create_photos(engine, "bytes", rows)
    migrate.upgrade(engine)

    summary = service.run_pass()

    assert summary.status == "finished"
    with engine.connect() as conn:
        state = {r.photo_id: r for r in conn.execute(select(photo))}
    for pid in SMALL:
        assert state[str(pid)].status in (LABELLED, NEEDS_REVIEW), state[str(pid)].last_error
    for pid in BIG:
        row = state[str(pid)]
        assert row.status == FAILED and row.attempts == 1
        assert row.last_error.startswith("photo value is 0.3 MB as stored, over the limit of "), (
            row.last_error
        )
        assert "0.1 MB (LABELER_MAX_IMAGE_BYTES)" in row.last_error
    engine.dispose()


@pytest.mark.parametrize("kind", ["bytes", "base64"])
def test_values_over_the_limit_are_never_read(db_url: str, kind: str) -> None:
    """Unit level, against the real server: the big values do not reach Python at all."""
    big = 3_000_000
    engine = make_engine(Settings(database_url=db_url))
    small = {i: png_bytes(c) for i, c in SMALL.items()}
    rows = [{"id": i, "photo": _encoded(v, kind)} for i, v in small.items()]
    rows += [{"id": i, "photo": _encoded(_big_value(big, i), kind)} for i in BIG]
    create_photos(engine, kind, rows)
    settings = Settings(database_url=db_url, source_table="animals", source_image_column="photo")
    with engine.connect() as conn:
        source = reflect_source(conn, settings)
    store = SqlStore(engine, source, image_limit=ImageLimit(LIMIT, kind))
    ids = [str(i) for i in [*SMALL, *BIG]]
    store.fetch_rows(ids[:1])  # warm up: compiled statements and connections are not photos

    tracemalloc.start()
    try:
        read, unreadable = read_rows(store.fetch_rows, ids)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < big // 3, f"{peak} bytes allocated while reading: a big value was read"
    assert {pid: _decoded(r.image, kind) for pid, r in read.items() if pid in unreadable} == {
        str(i): None for i in BIG
    }
    for i, value in small.items():
        assert _decoded(read[str(i)].image, kind) == value
    for i in BIG:
        reason = unreadable[str(i)]
        if kind == "bytes":
            assert reason == "photo is 3.0 MB, over the limit of 0.1 MB (LABELER_MAX_IMAGE_BYTES)"
        else:
            assert reason.startswith("photo is about 3.0 MB (4.0 MB of base64 text), over the")
    assert set(unreadable) == {str(i) for i in BIG}
    engine.dispose()


def _encoded(value: bytes, kind: str) -> bytes | str:
    return value if kind == "bytes" else base64.b64encode(value).decode("ascii")


def _decoded(value: object, kind: str) -> bytes | None:
    if value is None:
        return None
    if kind == "bytes":
        return bytes(value)  # type: ignore[call-overload]
    return base64.b64decode(str(value))


@pytest.mark.parametrize("kind", ["base64", "hex", "auto"])
@pytest.mark.parametrize("photo_size", [LIMIT - 4, LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 4])
def test_the_database_check_never_refuses_what_the_loader_accepts(
    kind: str, photo_size: int
) -> None:
    """Text forms count by decoded size, as labeler.photos.fetching does (MIME line breaks too)."""
    data = png_bytes((1, 2, 3), (2, 2)).ljust(photo_size, b"\0")
    texts = {
        "base64": base64.encodebytes(data).decode("ascii"),  # 76-character lines
        "hex": data.hex(),
        "auto": base64.b64encode(data).decode("ascii"),
    }
    stored = texts[kind].encode("ascii")
    config = LoaderConfig(kind="base64" if kind == "auto" else kind, max_bytes=LIMIT)
    try:
        load_bytes(stored, config)
        loader_accepts = True
    except ImageError as exc:
        loader_accepts = "limit" not in str(exc)
    if loader_accepts:
        assert len(stored) <= ImageLimit(LIMIT, kind).stored_max()
    assert ImageLimit(LIMIT, "bytes").stored_max() == LIMIT


def test_read_rows_keeps_narrowing_and_adds_size_failures() -> None:
    """A row the fetch refuses is narrowed down to; a row that came back with an error
    (over the limit) fails with it; the others are read."""
    from labeler.store.seam import Refused

    def fetch(ids: list[str]) -> dict[str, SourceRow]:
        if "boom" in ids:
            raise Refused("the view raised")
        return {
            i: SourceRow(None, error="photo is 3.0 MB") if i == "big" else SourceRow(b"x")
            for i in ids
        }

    rows, bad = read_rows(fetch, ["a", "boom", "big", "b"])
    assert bad == {
        "boom": "the source cannot read this row: the view raised",
        "big": "photo is 3.0 MB",
    }
    assert {i: r.image for i, r in rows.items()} == {"a": b"x", "big": None, "b": b"x"}
