"""A whole pass on each database, with the real sample photos stored as paths, BLOBs and base64."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text

from labeler.config.settings import Settings
from labeler.decide.audit import is_audit
from labeler.decide.decision import decide_with_audit
from labeler.photos.decoding import decode_image
from labeler.service.app import Service
from labeler.store import migrate
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, REVIEW_VIEW, photo, run
from tests.helpers import FULLFRAME, create_photos, encode, fullframe_photos

# Rows that must fail, with a word their recorded reason must contain.
BROKEN = {
    9001: (b"\xff\xd8\xff\xe0 this is not really a jpeg", "corrupt"),
    9002: (None, "NULL"),
    9003: (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>" * 3, "not an image"),
}


def _rows(kind: str, photos: list[Path]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i, path in enumerate(photos, start=1):
        rel = str(path.relative_to(FULLFRAME))
        rows.append(
            {
                "id": i,
                "name": f"dog {i}",
                "species": "dog",
                "photo": encode(path.read_bytes(), kind, rel),
            }
        )
    for pid, (value, _) in BROKEN.items():
        if value is not None and kind == "path":
            value = None if pid == 9002 else f"missing/{pid}.jpg"
        elif value is not None and kind == "base64":
            value = encode(value, "base64")
        rows.append({"id": pid, "name": "broken", "species": "dog", "photo": value})
    # A cat must never get a breed: the filter keeps it out of the labeler entirely.
    rows.append(
        {
            "id": 9100,
            "name": "Tom",
            "species": "cat",
            "photo": encode(photos[0].read_bytes(), kind, str(photos[0].relative_to(FULLFRAME))),
        }
    )
    # A breed a volunteer already typed is a human decision: not labelled again.
    rows.append(
        {
            "id": 9200,
            "name": "Typed",
            "species": "dog",
            "photo": encode(photos[1].read_bytes(), kind, str(photos[1].relative_to(FULLFRAME))),
            "breed": "beagle",
        }
    )
    return rows


@pytest.mark.parametrize("kind", ["path", "bytes", "base64"])
def test_pass_labels_every_photo(db_url: str, kind: str, tiny_artifact: Path) -> None:
    photos = fullframe_photos()
    settings = Settings(
        database_url=db_url,
        source_table="animals",
        source_image_column="photo",
        image_kind="auto",
        photo_root=FULLFRAME,
        source_filter_column="species",
        source_filter_values=["dog"],
        writeback_breed_column="breed",
        writeback_confidence_column="breed_confidence",
        model_dir=tiny_artifact,
        batch_size=16,
    )
    service = Service.build(settings)
    engine = service.engine
    create_photos(engine, kind, _rows(kind, photos))
    migrate.upgrade(engine)

    summary = service.run_pass()

    # What each photo should get, computed photo by photo without the database or batching.
    expected = {}
    for i, path in enumerate(photos, start=1):
        prediction = service.classifier.classify_images(
            [
                decode_image(
                    path.read_bytes(),
                    target_size=service.classifier.artifact.preprocessing.image_size,
                )
            ]
        )[0]
        t = service.thresholds
        audit = is_audit(str(i), service.classifier.version, t.audit_share)
        expected[str(i)] = (prediction, decide_with_audit(prediction, t, audit))

    with engine.connect() as conn:
        state = {r.photo_id: r for r in conn.execute(select(photo))}
        source = {
            r.id: r for r in conn.execute(text("SELECT id, breed, breed_confidence FROM animals"))
        }
        run_row = conn.execute(select(run)).one()
        queue = {r.photo_id for r in conn.execute(text(f"SELECT photo_id FROM {REVIEW_VIEW}"))}

    assert set(state) == set(expected) | {str(p) for p in BROKEN}, "cat and typed rows stay out"
    for pid, (prediction, decision) in expected.items():
        row = state[pid]
        assert row.status == decision.status, pid
        assert row.breed == prediction.label
        assert row.confidence == pytest.approx(prediction.confidence, abs=1e-5)
        assert (row.breed_2, row.breed_3) == (
            prediction.candidates[1][0],
            prediction.candidates[2][0],
        )
        assert row.confidence >= row.confidence_2 >= row.confidence_3
        assert row.model_version == service.classifier.version
        assert row.claimed_by is None and row.claim_expires_at is None
        assert row.run_id == run_row.id
        assert row.photo_ref == (
            str(photos[int(pid) - 1].relative_to(FULLFRAME)) if kind == "path" else None
        )
        if row.status == LABELLED:
            assert source[int(pid)].breed == row.breed
            assert source[int(pid)].breed_confidence == pytest.approx(row.confidence)
        else:
            assert source[int(pid)].breed is None
            assert row.review_reason
    for pid, (_, reason) in BROKEN.items():
        row = state[str(pid)]
        assert row.status == FAILED and row.attempts == 1
        want = "does not exist" if kind == "path" and pid != 9002 else reason
        assert want in row.last_error, row.last_error
        assert source[pid].breed is None
    assert source[9100].breed is None and source[9200].breed == "beagle"

    statuses = [r.status for r in state.values()]
    assert queue == {pid for pid, r in state.items() if r.status == NEEDS_REVIEW}
    assert statuses.count(LABELLED) > 0 and statuses.count(NEEDS_REVIEW) > 0
    assert (run_row.labelled, run_row.needs_review, run_row.failed) == (
        statuses.count(LABELLED),
        statuses.count(NEEDS_REVIEW),
        len(BROKEN),
    )
    assert run_row.discovered == len(photos) + len(BROKEN) and run_row.status == "finished"
    assert summary.processed == len(state)

    # A second pass finds nothing new and only retries the failures.
    second = service.run_pass()
    assert (second.discovered, second.labelled, second.needs_review, second.failed) == (
        0,
        0,
        0,
        len(BROKEN),
    )
    with engine.connect() as conn:
        again = {r.photo_id: r for r in conn.execute(select(photo))}
    for pid, row in state.items():
        if row.status != FAILED:
            assert again[pid] == row
        else:
            assert again[pid].attempts == 2
    engine.dispose()
