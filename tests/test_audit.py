"""Audit sampling: the pure draw, and audit rows in a real pass on every database: sent to
staff, marked as audits, never written back, and measured by `labeler status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from labeler.config.settings import Settings
from labeler.decide.audit import audit_draw, is_audit, should_audit
from labeler.decide.decision import AUDIT_REASON, Thresholds, decide
from labeler.decide.thresholds import Interval, wilson_interval
from labeler.model.artifact import load_artifact
from labeler.model.classifier import Prediction
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, REVIEW_VIEW, photo
from tests.helpers import create_photos, png_bytes

# --- the draw ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draw", "share", "expected"),
    [(0.0, 0.02, True), (0.0199, 0.02, True), (0.02, 0.02, False), (0.5, 0.02, False)],
)
def test_should_audit_takes_draws_below_the_share(
    draw: float, share: float, expected: bool
) -> None:
    assert should_audit(draw, share) is expected


def test_share_zero_disables_and_one_audits_everything() -> None:
    assert not any(should_audit(d / 100, 0.0) for d in range(100))
    assert all(should_audit(d / 100, 1.0) for d in range(100))
    assert not is_audit("1", "v1", 0.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        should_audit(0.5, 1.5)


def test_draw_is_reproducible_per_photo_and_fresh_per_model_version() -> None:
    draws = [audit_draw(str(i), "v1") for i in range(2000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert draws == [audit_draw(str(i), "v1") for i in range(2000)]  # retries agree
    other = [audit_draw(str(i), "v2") for i in range(2000)]
    assert sum(a == b for a, b in zip(draws, other, strict=True)) == 0


def test_draw_gives_the_configured_share() -> None:
    # 20,000 ids: the binomial standard deviation of the share is 0.001, so 0.004 is 4 of them.
    n = 20_000
    for share in (0.02, 0.1):
        audited = sum(is_audit(f"photo-{i}", "model-7", share) for i in range(n))
        assert abs(audited / n - share) < 0.004


# --- a pass on a real database ------------------------------------------------------------------

SHARE = 0.5  # high, so that a 40-photo pass has audits


@pytest.fixture
def shelter(db_url: str, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = make_engine(Settings(database_url=db_url))
    rows = [
        {"id": i, "photo": png_bytes(((i * 41) % 256, (i * 13) % 256, (i * 97) % 256))}
        for i in range(1, 41)
    ]
    create_photos(engine, "bytes", rows)
    migrate.upgrade(engine)
    engine.dispose()
    for key, value in {
        "DATABASE_URL": db_url,
        "SOURCE_TABLE": "animals",
        "SOURCE_IMAGE_COLUMN": "photo",
        "MODEL_DIR": str(tiny_artifact),
        "BATCH_SIZE": "8",
        "WRITEBACK_BREED_COLUMN": "breed",
        "WRITEBACK_CONFIDENCE_COLUMN": "breed_confidence",
        "AUDIT_SHARE": str(SHARE),
    }.items():
        monkeypatch.setenv(f"LABELER_{key}", value)
    return db_url


def _state(url: str) -> tuple[dict[str, Any], dict[int, Any], set[str], set[str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {r.photo_id: r for r in conn.execute(select(photo))}
        source = {r.id: r for r in conn.execute(text("SELECT id, breed FROM animals"))}
        queue = conn.execute(text(f"SELECT photo_id, audit FROM {REVIEW_VIEW}")).all()
    engine.dispose()
    audits_in_view = {str(pid) for pid, audit in queue if audit == 1}
    return rows, source, {str(pid) for pid, _ in queue}, audits_in_view


def _stored_prediction(row: Any) -> Prediction:
    pairs = [
        (getattr(row, b), getattr(row, c))
        for b, c in (
            ("breed", "confidence"),
            ("breed_2", "confidence_2"),
            ("breed_3", "confidence_3"),
        )
        if getattr(row, b) is not None
    ]
    return Prediction(tuple(pairs))


def test_audit_rows_go_to_staff_and_are_never_written_back(
    shelter: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = load_artifact(tiny_artifact)
    rule = Thresholds(
        artifact.decision.review_threshold or 0.5, artifact.decision.review_margin or 0
    )
    assert main(["run-once"]) == 0

    for attempt in ("first pass", "pass again", "relabel everything"):
        if attempt == "pass again":
            assert main(["run-once"]) == 0
        elif attempt == "relabel everything":
            assert main(["relabel", "--all", "--run"]) == 0
        rows, source, queue, audits_in_view = _state(shelter)
        expected_audits, expected_labelled = set(), set()
        for pid, row in rows.items():
            assert row.status != FAILED, pid
            confident = decide(_stored_prediction(row), rule).status == LABELLED
            if confident and is_audit(pid, artifact.version, SHARE):
                expected_audits.add(pid)
            elif confident:
                expected_labelled.add(pid)
        assert expected_audits and expected_labelled, "the sample must contain both kinds"
        audits = {pid for pid, r in rows.items() if r.audit == 1}
        assert audits == expected_audits, attempt
        for pid in audits:
            r = rows[pid]
            assert r.status == NEEDS_REVIEW and r.review_reason == AUDIT_REASON
            assert source[int(pid)].breed is None, f"audit row {pid} written back ({attempt})"
        for pid in expected_labelled:
            assert rows[pid].status == LABELLED
            assert source[int(pid)].breed == rows[pid].breed
        assert audits_in_view == audits and audits <= queue

    # Staff decide one audit; the labeler still never writes an answer for it.
    pid = sorted(audits)[0]
    engine = create_engine(shelter)
    with engine.begin() as conn:
        conn.execute(update(photo).where(photo.c.photo_id == pid).values(reviewed_breed="Pekinese"))
    engine.dispose()
    assert main(["run-once"]) == 0
    assert main(["relabel", "--all", "--run"]) == 0
    rows, source, queue, _ = _state(shelter)
    assert source[int(pid)].breed is None
    assert rows[pid].reviewed_breed == "Pekinese" and pid not in queue


def test_status_measures_precision_from_reviewed_audits(
    shelter: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run-once"]) == 0
    rows, _, _, _ = _state(shelter)
    audits = sorted(pid for pid, r in rows.items() if r.audit == 1)
    doubtful = sorted(pid for pid, r in rows.items() if r.audit == 0 and r.status == NEEDS_REVIEW)
    auto = sorted(pid for pid, r in rows.items() if r.audit == 0 and r.status == LABELLED)
    assert len(audits) >= 3 and doubtful and len(auto) >= 2
    # Staff confirm all audits but one, and contradict every doubtful row; typing in another
    # case or with spaces is the same breed. Of the auto-labels, staff correct one (a certain
    # mistake, counted against precision) and confirm another.
    wrong = audits[0]
    engine = create_engine(shelter)
    with engine.begin() as conn:
        conn.execute(
            update(photo).where(photo.c.photo_id == auto[0]).values(reviewed_breed="Pekinese")
        )
        conn.execute(
            update(photo)
            .where(photo.c.photo_id == auto[1])
            .values(reviewed_breed=rows[auto[1]].breed)
        )
        for pid in audits:
            breed = rows[pid].breed
            answer = "Pekinese-not-a-label" if pid == wrong else f" {breed.upper()} "
            conn.execute(update(photo).where(photo.c.photo_id == pid).values(reviewed_breed=answer))
        for pid in doubtful:
            conn.execute(
                update(photo)
                .where(photo.c.photo_id == pid)
                .values(reviewed_breed="Pekinese-not-a-label", status="reviewed")
            )
    engine.dispose()
    capsys.readouterr()

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    version = load_artifact(tiny_artifact).version
    measured = wilson_interval(len(audits) - 1, len(audits))
    assert measured is not None
    # The corrected auto-label caps every part of the interval at the uncorrected share.
    at_most = (len(auto) - 1) / len(auto)
    expected = Interval(
        min(measured.estimate, at_most),
        min(measured.low, at_most),
        min(measured.high, at_most),
        measured.n,
    )
    assert f"precision of auto-labels (from {len(audits)} reviewed audits): " in out
    assert expected.describe() in out
    assert f"model {version}: {len(rows)} rows decided" in out
    assert f"staff corrected 1 of {len(auto)} auto-labels: precision at most" in out
    review_rate = (len(audits) + len(doubtful)) / len(rows)
    assert f"{review_rate:.1%} sent to review ({len(audits) / len(rows):.1%} as audits)" in out
    assert "decision: review below 0.2000 (model artifact)" in out
    assert f"audits {SHARE:.1%} of confident results" in out

    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (quality,) = report["quality"]
    assert quality["model_version"] == version
    assert quality["auto"] == len(auto) and quality["auto_corrected"] == 1
    assert quality["precision_at_most"] == pytest.approx(at_most)
    from_audits = (len(audits) - 1) / len(audits)
    assert quality["precision"]["estimate"] == pytest.approx(min(from_audits, at_most))
    assert quality["doubtful_agreement"]["estimate"] == 0.0
    assert report["threshold"]["source"] == "model artifact"
