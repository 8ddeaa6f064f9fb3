"""`labeler status` on an ASM3-like shelter, on every server: staff's decisions in ASM3's own
screen and on labeler's side move the counts staff would expect, and the summary accounts for
every animal in review."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text, update

from labeler.service.app import Service
from labeler.service.cli import cmd_status
from labeler.shelter.breedmap import load_breed_map
from labeler.store import migrate
from labeler.store.schema import GROUP_REVIEW_VIEW, LABELLED, NEEDS_REVIEW, REVIEWED, group
from tests.asm3_fixture import Asm3Shelter, build_asm3
from tests.test_shelter_asm3 import UNMAPPED, _breed_map_without, _groups, _service, _set_breed
from tests.test_shelter_helpers import ScriptedModel


@pytest.fixture
def shelter(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> Iterator[tuple[Asm3Shelter, Service]]:
    built = build_asm3(db_url, tmp_path, storage="base64", per_breed=2, photos_per_dog=2)
    service = _service(built, tiny_artifact, _breed_map_without(tmp_path, UNMAPPED))
    migrate.upgrade(service.engine)
    ScriptedModel(service.classifier, built.seeded.photo_files.values())
    yield built, service
    service.engine.dispose()


def _status(service: Service, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    capsys.readouterr()
    assert cmd_status(service.settings, argparse.Namespace(json=True, runs=3)) == 0
    report = json.loads(capsys.readouterr().out)
    assert cmd_status(service.settings, argparse.Namespace(json=False, runs=3)) == 0
    return report, capsys.readouterr().out


def _review(service: Service, animal: int, breed: str) -> None:
    with service.engine.begin() as conn:
        conn.execute(
            update(group)
            .where(group.c.group_id == str(animal))
            .values(reviewed_breed=breed, reviewed_by="anna")
        )


def test_status_counts_what_staff_decided(
    shelter: tuple[Asm3Shelter, Service], capsys: pytest.CaptureFixture[str]
) -> None:
    asm3, service = shelter
    seeded = asm3.seeded
    assert service.run_pass().status == "finished"
    groups = _groups(service)
    labelled = sorted(d for d, g in groups.items() if g["status"] == LABELLED)
    in_review = sorted(d for d, g in groups.items() if g["status"] == NEEDS_REVIEW)
    assert len(labelled) >= 2 and len(in_review) >= 3, groups

    # The queue shows the breeds in ASM3's names, the label beside them, a whole percentage.
    with service.engine.connect() as conn:
        queue = {
            int(r["group_id"]): r
            for r in conn.execute(text(f"SELECT * FROM {GROUP_REVIEW_VIEW}")).mappings()
        }
    assert set(queue) == set(in_review)
    assert any(r["breed_name"] for r in queue.values()), "some queued guess is an ASM3 breed"
    assert any(r["breed"] in ("dingo", UNMAPPED) for r in queue.values())
    assert service.settings.breed_map is not None
    names = load_breed_map(service.settings.breed_map)
    for row in queue.values():
        for suffix in ("", "_2", "_3"):
            # ASM3's BreedName; a label the map leaves out (dingo, Samoyed) has none.
            assert row[f"breed_name{suffix}"] == names.name_of(row[f"breed{suffix}"])
        assert isinstance(row["confidence_pct"], int)
        assert abs(row["confidence_pct"] - row["confidence"] * 100) <= 0.5

    # Staff correct an auto-label in ASM3's own screen, and give one animal in
    # review a reviewed breed labeler refuses.
    corrected = labelled[0]
    other = (19, "Beagle") if seeded.dogs[corrected] != "beagle" else (188, "Shih Tzu")
    _set_breed(asm3, corrected, *other)
    refused, pending_review = in_review[0], in_review[1]
    _review(service, refused, "dingo")
    # Animals decided before labeler kept the names get them at the next pass.
    with service.engine.begin() as conn:
        conn.execute(update(group).values(breed_name=None, breed_name_2=None, breed_name_3=None))
    assert service.run_pass().status == "finished"
    with service.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {GROUP_REVIEW_VIEW}")).mappings().all()
    assert {int(r["group_id"]) for r in rows} == set(in_review)
    for row in rows:
        assert row["breed_name"] == names.name_of(row["breed"])
        assert row["breed_name_3"] == names.name_of(row["breed_3"])
    groups = _groups(service)
    assert groups[corrected]["status"] == REVIEWED and groups[corrected]["staff_values"]
    assert groups[refused]["refused_breed"] == "dingo"

    # A reviewed breed staff set since the last pass: out of the queue, still in review.
    _review(service, pending_review, "beagle")
    report, out = _status(service, capsys)
    animals_in_review = report["animals"][NEEDS_REVIEW]
    assert animals_in_review == len(in_review)
    detail = report["review_detail"]
    assert detail["reviewed_waiting"] == 1 and detail["refused"] == 1
    assert report["review_queue"] == detail["animals"] + detail["photos"]
    assert detail["animals"] + detail["reviewed_waiting"] == animals_in_review
    queue_line = next(line for line in out.splitlines() if line.startswith("review queue:"))
    assert f"review queue: {animals_in_review - 1}: {animals_in_review - 1} animals" in queue_line
    assert "1 with a reviewed breed labeler refused" in queue_line
    assert "not in it: 1 animals in review that staff gave a reviewed_breed" in queue_line

    # The photos of the animals staff decided (in ASM3, before or after labeler's write) no
    # longer count as labelled or waiting.
    decided = [d for d, g in groups.items() if g["status"] == REVIEWED]
    assert corrected in decided and seeded.staff_dog in decided
    assert report["counts"][REVIEWED] == sum(len(seeded.photos[d]) for d in decided)

    # The correction counts against the auto-labels, not as a doubtful animal; the refused
    # "dingo" is no verdict at all.
    (quality,) = report["animal_quality"]
    auto = len(labelled)
    assert quality["auto"] == auto and quality["auto_corrected"] == 1
    assert quality["precision_at_most"] == pytest.approx((auto - 1) / auto)
    # Only the reviewed "beagle" on a doubtful animal is a verdict (it disagrees).
    assert quality["doubtful_agreement"]["n"] == 1
    assert quality["doubtful_agreement"]["estimate"] == 0.0
    assert any("staff corrected 1 of" in line for line in quality["summary"])
