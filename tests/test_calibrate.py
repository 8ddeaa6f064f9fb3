"""The review threshold learned from staff: the pure statistics on constructed numbers, and
`labeler calibrate` / `status` / `check` / a pass on every database."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from labeler.config.settings import Settings
from labeler.decide.thresholds import (
    CONFIDENT,
    DOUBTFUL,
    CalibrationRefused,
    DecidedRow,
    calibrate,
    measure_at,
    sequence_start_size,
    wilson_interval,
)
from labeler.model.artifact import load_artifact
from labeler.service.app import Service
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import LABELLED, NEEDS_REVIEW, REVIEWED, photo, threshold
from labeler.store.writeback import STAFF_REASON
from tests.helpers import create_photos, png_bytes, with_animals_in_a_shelter_record

# --- statistics -------------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook() -> None:
    interval = wilson_interval(8, 10)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) is None
    none_right, all_right = wilson_interval(0, 10), wilson_interval(10, 10)
    assert none_right is not None and none_right.low == 0.0 and 0 < none_right.high < 0.35
    assert all_right is not None and all_right.high == 1.0 and 0.65 < all_right.low < 1.0


def band(confidence: float, n: int, correct: int, stratum: str = CONFIDENT) -> list[DecidedRow]:
    return [DecidedRow(confidence, confidence, stratum, correct=i < correct) for i in range(n)]


def test_reviewed_audits_stand_for_all_confident_rows() -> None:
    # 1000 confident rows of which 100 audited (95 right), 200 doubtful rows all reviewed
    # (120 right). Unweighted that is 215/300 = 72%; the 900 unaudited confident rows make the
    # population's precision (1000 * 0.95 + 200 * 0.6) / 1200.
    rows = band(0.9, 100, 95) + [DecidedRow(0.9, 0.9, CONFIDENT)] * 900
    rows += band(0.6, 200, 120, DOUBTFUL) + [DecidedRow(0.3, 0.3, DOUBTFUL)] * 300
    point = measure_at(rows, 0.5)
    assert point is not None
    assert point.precision.estimate == pytest.approx((950 + 120) / 1200)
    assert point.precision.n == pytest.approx(1200**2 / (1000**2 / 100 + 200**2 / 200))
    assert point.coverage == pytest.approx(1200 / 1500)
    assert point.reviewed_above == 300
    # Staff corrections of auto-labels are no evidence: unreviewed confident rows everywhere.
    assert measure_at([DecidedRow(0.9, 0.9, CONFIDENT)] * 10, 0.5) is None


def fully_reviewed() -> list[DecidedRow]:
    # Every row audited, so weights are 1 and precision above t is a plain proportion.
    return (
        band(0.95, 200, 199)
        + band(0.85, 200, 190)
        + band(0.75, 200, 150)  # cumulative 539/600: under 90%
        + band(0.70, 300, 300)  # cumulative 839/900 (93%) would pass again, but is never tested
        + band(0.65, 100, 50)
    )


def test_calibrate_picks_the_lowest_threshold_of_the_unbroken_sequence() -> None:
    rows = fully_reviewed()
    result = calibrate(rows, 0.9, current_threshold=0.7)
    assert result.threshold == 0.85
    assert result.point.precision.estimate == pytest.approx(389 / 400)
    expected = wilson_interval(389, 400)
    assert expected is not None and result.point.precision.low == pytest.approx(expected.low)
    assert result.point.precision.low >= 0.9
    assert result.point.coverage == pytest.approx(400 / 1000)
    assert result.rows_used == 1000
    assert [p.threshold for p in result.tried] == [0.95, 0.85, 0.75]  # stopped at the failure
    assert result.current is not None
    assert result.current.precision.estimate == pytest.approx(839 / 900)
    text = result.evidence(0.7)
    assert "1000 reviewed rows" in text and "proposed threshold 0.8500" in text
    assert "threshold in force 0.7000" in text


def test_margin_rule_is_kept() -> None:
    rows = [DecidedRow(r.confidence, 0.01, r.stratum, r.correct) for r in band(0.99, 50, 50)]
    rows += fully_reviewed()
    result = calibrate(rows, 0.9, margin=0.05)
    assert result.threshold == 0.85  # the 50 rows under the margin are never auto-labelled
    assert result.point.coverage == pytest.approx(400 / 1050)


def test_testing_starts_where_the_sample_is_large_enough() -> None:
    start = sequence_start_size(0.9)
    assert 40 < start < 100
    # A few very confident rows with errors sit above the start and cannot stop the sequence.
    rows = band(0.99, 10, 5) + fully_reviewed()
    result = calibrate(rows, 0.9)
    assert result.tried[0].precision.n >= start
    assert result.threshold == 0.85


def test_refuses_with_too_few_rows() -> None:
    rows = band(0.9, 49, 49) + [DecidedRow(0.9, 0.9, CONFIDENT)] * 500
    with pytest.raises(CalibrationRefused, match=r"only 49 usable reviewed rows.*at least 50"):
        calibrate(rows, 0.95)


def test_refuses_without_audits() -> None:
    rows = band(0.4, 300, 200, DOUBTFUL) + [DecidedRow(0.9, 0.9, CONFIDENT)] * 500
    with pytest.raises(CalibrationRefused, match="no reviewed audit rows"):
        calibrate(rows, 0.95)


def test_refuses_when_no_threshold_reaches_the_target() -> None:
    rows = band(0.9, 300, 240) + band(0.5, 300, 150)
    with pytest.raises(CalibrationRefused, match=r"no threshold reaches a lower bound of 95\.0%"):
        calibrate(rows, 0.95)


def test_rejects_nonsense_targets() -> None:
    with pytest.raises(ValueError, match="target precision"):
        calibrate(fully_reviewed(), 1.0)


# --- on the databases -------------------------------------------------------------------------


def synthetic_rows(version: str, seed: int = 3) -> tuple[list[dict[str, object]], list[DecidedRow]]:
    """Rows a model version decided at threshold 0.5 with a 20% audit share; a row is right
    with probability sqrt(confidence). Returned as database rows and as calibration input."""
    rng = random.Random(seed)
    now = datetime(2026, 11, 1, 3, 0)
    db_rows: list[dict[str, object]] = []
    evidence: list[DecidedRow] = []
    for i in range(2500):
        confidence = round(rng.uniform(0.2, 1.0), 4)
        second = round(rng.uniform(0.0, min(confidence, 1.0 - confidence)), 4)
        right = rng.random() < confidence**0.5
        confident = confidence >= 0.5
        audit = confident and rng.random() < 0.2
        reviewed = audit or not confident
        status = LABELLED if confident and not audit else NEEDS_REVIEW
        if reviewed and rng.random() < 0.3:
            status = REVIEWED  # staff may mark what they reviewed
        db_rows.append(
            {
                "photo_id": f"c{i}",
                "status": status,
                "breed": "Beagle",
                "confidence": confidence,
                "breed_2": "Pug",
                "confidence_2": second,
                "model_version": version,
                "review_reason": "audit: x" if audit else (None if confident else "unsure"),
                "audit": int(audit),
                "reviewed_breed": ("beagle" if right else "Pug") if reviewed else None,
                "discovered_at": now,
                "updated_at": now,
                "labelled_at": now,
            }
        )
        evidence.append(
            DecidedRow(
                confidence,
                confidence - second,
                CONFIDENT if confident else DOUBTFUL,
                correct=right if reviewed else None,
            )
        )
    # An auto-label staff corrected, and rows of another model version: never evidence here.
    corrected = next(r for r in db_rows if r["status"] == LABELLED)
    corrected["reviewed_breed"] = "Pug"
    db_rows.append({**db_rows[1], "photo_id": "old-1", "model_version": "older", "audit": 1})
    return db_rows, evidence


@pytest.fixture
def decided(db_url: str, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = make_engine(Settings(database_url=db_url))
    create_photos(
        engine, "bytes", [{"id": i, "photo": png_bytes((i, 9 * i, 50))} for i in range(1, 13)]
    )
    migrate.upgrade(engine)
    engine.dispose()
    for key, value in {
        "DATABASE_URL": db_url,
        "SOURCE_TABLE": "animals",
        "SOURCE_IMAGE_COLUMN": "photo",
        "MODEL_DIR": str(tiny_artifact),
        "AUDIT_SHARE": "0",
    }.items():
        monkeypatch.setenv(f"LABELER_{key}", value)
    return db_url


def insert(url: str, rows: list[dict[str, object]]) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(photo.insert(), rows)
    engine.dispose()


def stored(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(threshold)))
    engine.dispose()
    return rows


def test_calibrate_refuses_on_too_few_reviews(
    decided: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = load_artifact(tiny_artifact).version
    rows, _ = synthetic_rows(version)
    few = [r for r in rows if r["reviewed_breed"] is not None][:40]
    insert(decided, few + [r for r in rows if r["reviewed_breed"] is None])
    assert main(["calibrate", "--target-precision", "0.9", "--apply"]) == 1
    err = capsys.readouterr().err
    assert "at least 50" in err and f"model {version}" in err
    assert stored(decided) == []


def test_calibrate_shows_evidence_and_stores_only_with_apply(
    decided: str,
    tiny_artifact: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = load_artifact(tiny_artifact).version
    rows, evidence = synthetic_rows(version)
    insert(decided, rows)
    expected = calibrate(evidence, 0.9, margin=0.0, current_threshold=0.2)

    assert main(["calibrate", "--target-precision", "0.9"]) == 0
    out = capsys.readouterr().out
    assert f"proposed threshold {expected.threshold:.4f}" in out
    assert f"evidence: {expected.rows_used} reviewed rows" in out
    assert expected.point.precision.describe() in out
    assert f"coverage {expected.point.coverage:.1%}" in out
    assert "not applied" in out
    assert stored(decided) == []

    assert main(["calibrate", "--target-precision", "0.9", "--apply"]) == 0
    assert "applied" in capsys.readouterr().out
    (row,) = stored(decided)
    assert row.model_version == version
    assert row.review_threshold == pytest.approx(expected.threshold)
    assert row.rows_used == expected.rows_used
    assert row.precision_lower == pytest.approx(expected.point.precision.low)
    assert row.precision_lower >= 0.9

    # Applying again replaces the value instead of adding a second one.
    assert main(["calibrate", "--target-precision", "0.9", "--apply"]) == 0
    assert len(stored(decided)) == 1
    capsys.readouterr()

    day = f"{row.created_at:%Y-%m-%d}"
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert (
        f"review below {expected.threshold:.4f} (calibrated on {day} from {expected.rows_used}"
        in out
    )
    assert f"model {version}: 2500 rows decided" in out and "model older: 1 rows decided" in out
    main(["check"])
    check = capsys.readouterr().out
    assert (
        f"decision threshold: review below {expected.threshold:.4f} (calibrated on {day}" in check
    )

    # The next pass uses it: every auto-label is at or above it, every "unsure" row under it.
    assert main(["run-once"]) == 0
    engine = create_engine(decided)
    with engine.connect() as conn:
        fresh = conn.execute(
            select(photo).where(photo.c.photo_id.in_([str(i) for i in range(1, 13)]))
        ).all()
    engine.dispose()
    assert len(fresh) == 12
    for r in fresh:
        if r.status == LABELLED:
            assert r.confidence >= expected.threshold
        else:
            assert r.confidence < expected.threshold and "under" in r.review_reason

    # An explicit setting still wins, and says so.
    monkeypatch.setenv("LABELER_REVIEW_THRESHOLD", "0.3")
    assert main(["status"]) == 0
    assert "review below 0.3000 (setting LABELER_REVIEW_THRESHOLD)" in capsys.readouterr().out
    settings = Settings()
    assert Service.build(settings).thresholds_in_force().review_threshold == 0.3
    monkeypatch.delenv("LABELER_REVIEW_THRESHOLD")
    service = Service.build(Settings())
    assert service.thresholds_in_force().review_threshold == pytest.approx(expected.threshold)
    service.engine.dispose()


def test_other_model_versions_are_calibrated_separately(
    decided: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, evidence = synthetic_rows("v-next", seed=5)
    insert(decided, rows)
    assert main(["calibrate", "--target-precision", "0.9"]) == 1  # nothing for the tiny model
    expected = calibrate(evidence, 0.9)
    assert (
        main(["calibrate", "--target-precision", "0.9", "--model-version", "v-next", "--apply"])
        == 0
    )
    (row,) = stored(decided)
    assert row.model_version == "v-next"
    assert row.review_threshold == pytest.approx(expected.threshold)
    engine = create_engine(decided)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(photo)) == 2501
    engine.dispose()


def test_calibrate_per_animal_weighs_animals_and_breeds_staff_set_in_their_own_screens(
    decided: str,
    tiny_artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one answer per animal the evidence is animals: staff decide them with a reviewed
    breed on labeler's side or by setting the breed in the shelter's own screen, which counts
    through the breed map exactly like a review."""
    version = load_artifact(tiny_artifact).version
    rows, evidence = synthetic_rows(version)
    values = {
        "beagle": '{"BreedID": "19", "BreedName": "Beagle"}',
        "pug": '{"BreedID": "5", "BreedName": "Pug"}',
    }
    animals = []
    for i, r in enumerate(rows):
        if r["model_version"] != version:
            continue
        staff = r["reviewed_breed"]
        animal = {
            "group_id": f"a{i}",
            "status": r["status"],
            "breed": "beagle",
            "confidence": r["confidence"],
            "confidence_2": r["confidence_2"],
            "model_version": version,
            "review_reason": r["review_reason"],
            "audit": r["audit"],
            "discovered_at": r["discovered_at"],
            "updated_at": r["updated_at"],
            "reviewed_breed": None,
            "staff_values": None,
            "written_values": None,
        }
        auto_label = r["status"] == LABELLED and not r["audit"]
        if auto_label:
            animal["written_values"] = values["beagle"]
        if staff is not None and i % 2:
            # Set in the shelter's own screen: recorded as labeler records a staff decision.
            animal.update(
                status=REVIEWED,
                staff_values=values["beagle" if staff == "beagle" else "pug"],
                review_reason=STAFF_REASON,
            )
        elif staff is not None:
            animal["reviewed_breed"] = staff
        animals.append(animal)
    with_animals_in_a_shelter_record(decided, animals, monkeypatch, tmp_path)

    expected = calibrate(evidence, 0.9)
    assert main(["calibrate", "--target-precision", "0.9", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "one answer per animal" in out
    assert f"evidence: {expected.rows_used} reviewed rows" in out
    (row,) = stored(decided)
    assert row.review_threshold == pytest.approx(expected.threshold)
    assert row.rows_used == expected.rows_used

    # One answer per photo, the same database has no decided photo to learn from.
    for key in ("SOURCE_GROUP_COLUMN", "TARGET_TABLE", "TARGET_KEY_COLUMN", "BREED_MAP"):
        monkeypatch.delenv(f"LABELER_{key}")
    monkeypatch.delenv("LABELER_TARGET_UNDECIDED")
    assert main(["calibrate", "--target-precision", "0.9"]) == 1
