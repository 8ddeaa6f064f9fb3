"""Combining an animal's photos, and the small pure pieces of the shelter fit."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError, OperationalError

from labeler.config.settings import Settings, load_settings
from labeler.core.textsafe import id_list, storable
from labeler.decide.decision import Thresholds
from labeler.decide.grouping import combine, decide_group, disagreements, parse_scores, scores_json
from labeler.model.classifier import Prediction
from labeler.store import migrate
from labeler.store.engine import is_transient, make_engine
from labeler.store.schema import GONE, LABELLED, NEEDS_REVIEW, photo


def scores(pid: str, *pairs: tuple[str, float]) -> object:
    parsed = parse_scores(pid, scores_json(Prediction(tuple(pairs))))
    assert parsed is not None
    return parsed


def test_one_photo_keeps_its_own_probabilities() -> None:
    one = scores("1", ("beagle", 0.7), ("basset", 0.2), ("pug", 0.05))
    combined = combine([one])  # type: ignore[list-item]
    assert combined.label == "beagle"
    assert combined.confidence == pytest.approx(0.7, abs=1e-4)
    assert combined.candidates[1] == ("basset", pytest.approx(0.2, abs=1e-4))


def test_agreeing_photos_strengthen_and_a_dissenter_is_named() -> None:
    a = scores("1", ("beagle", 0.6), ("basset", 0.3))
    b = scores("2", ("beagle", 0.7), ("basset", 0.2))
    c = scores("3", ("pug", 0.95), ("beagle", 0.01))
    assert combine([a, b]).confidence > 0.6  # type: ignore[list-item]
    assert disagreements([a, b], "beagle", 0.5) == []  # type: ignore[list-item]
    found = disagreements([a, b, c], "beagle", 0.5)  # type: ignore[list-item]
    assert len(found) == 1 and "photo 3 says pug" in found[0]
    decision = decide_group([a, b, c], Thresholds(0.1), 0.5)  # type: ignore[list-item]
    assert decision.status == NEEDS_REVIEW and "disagree" in (decision.reason or "")
    assert decide_group([a, b, c], Thresholds(0.1), 1.0).status in (LABELLED, NEEDS_REVIEW)  # type: ignore[list-item]


def test_not_breeds_and_unmapped_labels_go_to_review() -> None:
    dingo = scores("1", ("dingo", 0.99))
    assert "not a dog breed" in (decide_group([dingo], Thresholds(0.1), 0.5).reason or "")  # type: ignore[list-item]
    beagle = scores("1", ("beagle", 0.99))
    unmapped = decide_group([beagle], Thresholds(0.1), 0.5, lambda label: None)  # type: ignore[list-item]
    assert unmapped.status == NEEDS_REVIEW and "breed map" in (unmapped.reason or "")
    mapped = decide_group([beagle], Thresholds(0.1), 0.5, lambda label: {"BreedID": "19"})  # type: ignore[list-item]
    assert mapped.status == LABELLED and mapped.values == {"BreedID": "19"}


def test_unreadable_scores_are_skipped() -> None:
    assert parse_scores("1", None) is None
    assert parse_scores("1", "{not json") is None
    assert parse_scores("1", '{"top": [["a", NaN]], "rest": 0}') is None
    rest = parse_scores("1", scores_json(Prediction((("a", 1.0),))))
    assert rest is not None and math.isfinite(rest.rest)


def test_storable_text() -> None:
    assert storable("bad\x00reason\x1b[31m", 100) == "bad reason [31m"
    assert storable("x" * 50, 10) == "x" * 7 + "..."  # cut as every stored reason is
    assert storable("line\nnext\ttab", 100) == "line\nnext\ttab"
    assert storable("a\r\n\u2028b", 100) == "a \n b"
    assert storable(None, 100) is None


def test_an_animals_photo_list_is_never_cut_inside_an_id() -> None:
    ids = [f"media-{i:05d}" for i in range(300)]  # 300 ids of 11 characters: 3,599 in all
    listed = id_list(ids, 1000)
    assert len(listed) <= 1000
    head, _, more = listed.rpartition(",... (+")
    assert all(part in ids for part in head.split(","))
    assert more == f"{300 - len(head.split(','))} more)"
    assert id_list(ids[:3], 1000) == "media-00000,media-00001,media-00002"
    assert id_list(["x" * 50], 20) == "... (+1 more)"


def test_undecided_setting_is_parsed_and_checked() -> None:
    s = Settings(
        target_table="animal",
        target_key_column="ID",
        breed_map="map.csv",
        source_group_column="animal_id",
        target_undecided="BreedID=442, BreedName=Mixed Breed",
    )
    assert s.target_undecided == {"BreedID": "442", "BreedName": "Mixed Breed"}
    for bad, words in (
        ({"target_table": "animal"}, "LABELER_TARGET_KEY_COLUMN"),
        ({"target_undecided": "BreedID"}, "Column=value"),
        ({"context_columns": "name;drop"}, "not a plain SQL identifier"),
        ({"target_table": "animal\n"}, "not a plain SQL identifier"),
    ):
        with pytest.raises(Exception, match=words):
            load_settings(**bad)


def test_gone_is_a_status_and_nonsense_is_not(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    migrate.upgrade(engine)
    row = {
        "photo_id": "1",
        "discovered_at": text("CURRENT_TIMESTAMP"),
        "updated_at": text("CURRENT_TIMESTAMP"),
    }
    with engine.begin() as conn:
        conn.execute(insert(photo).values(**row, status=GONE))
    # MariaDB reports a failed CHECK as an "operational" error (4025): still not an outage.
    with pytest.raises((IntegrityError, OperationalError)) as failed, engine.begin() as conn:
        conn.execute(insert(photo).values(**{**row, "photo_id": "2"}, status="bogus"))
    assert not is_transient(failed.value)
    engine.dispose()


def test_text_from_outside_is_stored_on_every_server(db_url: str) -> None:
    """Issue 10: a NUL in an error (say, an HTTP reason phrase) must not sink the batch."""
    from datetime import datetime, timedelta

    from labeler.core import domain
    from labeler.shelter.source import reflect_source
    from labeler.store import claims, discovery, results, runs
    from labeler.store.engine import session_factory
    from tests.helpers import create_photos, png_bytes

    settings = Settings(database_url=db_url, source_table="animals", source_image_column="photo")
    engine = make_engine(settings)
    create_photos(engine, "bytes", [{"id": i, "photo": png_bytes((i, i, i))} for i in (1, 2)])
    migrate.upgrade(engine)
    with engine.connect() as conn:
        source = reflect_source(conn, settings)
    now = datetime(2026, 1, 1)
    with session_factory(engine).begin() as session:
        run_id = runs.start_run(session, command="t", worker="w", model_version="m", now=now)
        discovery.discover(session, source, now)
        ids = claims.claim(
            session,
            "tok",
            now=now,
            ttl=timedelta(minutes=5),
            limit=5,
            max_attempts=3,
            run_id=run_id,
        )
        counts = results.save_outcomes(
            session,
            source,
            "tok",
            run_id,
            "m",
            [
                domain.Outcome(ids[0], "failed", error="502 Bad\x00Gateway\x1b" + "x" * 5000),
                domain.Outcome(ids[1], "failed", error="fine", photo_ref="a\x00b"),
            ],
            now,
        )
    assert counts.failed == 2
    with engine.connect() as conn:
        errors = dict(conn.execute(text("SELECT photo_id, last_error FROM labeler_photo")).all())
    assert errors[ids[0]].startswith("502 Bad Gateway ") and len(errors[ids[0]]) == 1000
    engine.dispose()
