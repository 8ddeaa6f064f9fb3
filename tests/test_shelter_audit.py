"""Audits per animal: a confident answer drawn as an audit goes to staff, is never written to
the animal's record before a human decides, and staff's decision (on labeler's side or in the
shelter's own UI) measures the precision of what labeler writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labeler.core.domain import PhotoScores
from labeler.decide.decision import AUDIT_REASON, Thresholds
from labeler.decide.grouping import decide_group
from labeler.decide.thresholds import GroupVerdict, group_version_counts, version_quality
from labeler.store import migrate
from labeler.store.schema import NEEDS_REVIEW
from tests.asm3_fixture import Asm3Shelter, build_asm3
from tests.test_shelter_asm3 import _animals, _breed_map_without, _groups, _service, _set_breed
from tests.test_shelter_helpers import ScriptedModel


def _photo(pid: str, label: str, p: float) -> PhotoScores:
    import math

    return PhotoScores(pid, {label: math.log(p), "other": math.log(1 - p)}, math.log(1e-9))


def test_an_audited_animal_goes_to_review_with_its_values_withheld() -> None:
    photos = [_photo("1", "beagle", 0.95), _photo("2", "beagle", 0.9)]
    rule = Thresholds(review_threshold=0.5)
    plain = decide_group(photos, rule, 0.5, lambda label: {"BreedID": "19"})
    assert plain.status == "labelled" and plain.values == {"BreedID": "19"} and not plain.audit
    audited = decide_group(photos, rule, 0.5, lambda label: {"BreedID": "19"}, audit=True)
    assert audited.status == NEEDS_REVIEW and audited.audit
    assert audited.reason == AUDIT_REASON and audited.values is None
    # An answer the rules already send to review is not an audit: audits sample only what
    # labeler would have written.
    strict = Thresholds(review_threshold=0.8)
    doubtful = decide_group([_photo("1", "beagle", 0.7)], strict, 0.5, None, audit=True)
    assert doubtful.status == NEEDS_REVIEW and not doubtful.audit


def test_group_counts_use_audits_for_precision() -> None:
    verdicts = [
        GroupVerdict("m1", auto=True, audit=False, doubtful=False, staff_agrees=None),
        GroupVerdict("m1", auto=False, audit=True, doubtful=False, staff_agrees=True),
        GroupVerdict("m1", auto=False, audit=True, doubtful=False, staff_agrees=False),
        GroupVerdict("m1", auto=False, audit=True, doubtful=False, staff_agrees=None),
        GroupVerdict("m1", auto=False, audit=False, doubtful=True, staff_agrees=True),
        GroupVerdict("m2", auto=True, audit=False, doubtful=False, staff_agrees=False),
    ]
    m1, m2 = group_version_counts(verdicts)
    assert (m1.model_version, m1.decided, m1.auto, m1.audit, m1.doubtful) == ("m1", 5, 1, 3, 1)
    assert (m1.audit_reviewed, m1.audit_correct) == (2, 1)
    assert (m1.doubtful_reviewed, m1.doubtful_correct) == (1, 1)
    # A staff correction of an auto-label is no audit (staff catch the wrong ones), but it is
    # a certain mistake among the auto-labels: precision can be no higher than what is left.
    assert (m2.audit_reviewed, m2.audit_correct) == (0, 0)
    assert (m1.auto_corrected, m2.auto_corrected) == (0, 1)
    assert version_quality(m2).precision_at_most == 0.0
    assert version_quality(m1).precision_at_most is None


def test_corrected_auto_labels_cap_the_measured_precision() -> None:
    audits = [GroupVerdict("m", auto=False, audit=True, doubtful=False, staff_agrees=True)] * 10
    autos = [GroupVerdict("m", auto=True, audit=False, doubtful=False, staff_agrees=None)] * 8
    corrected = [GroupVerdict("m", auto=True, audit=False, doubtful=False, staff_agrees=False)]
    (counts,) = group_version_counts([*audits, *autos, *corrected, *corrected])
    assert (counts.auto, counts.auto_corrected) == (10, 2)
    quality = version_quality(counts)
    assert quality.precision is not None
    # All ten audits were right, yet two of ten auto-labels were corrected: at most 80%.
    assert quality.precision.estimate == quality.precision.high == 0.8
    assert quality.precision.low <= 0.8
    assert any("staff corrected 2 of 10 auto-labels" in line for line in quality.lines())


def test_audited_animals_are_never_written_back(
    db_url: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    shelter: Asm3Shelter = build_asm3(
        db_url, tmp_path, storage="base64", per_breed=2, photos_per_dog=2
    )
    breed_map = _breed_map_without(tmp_path, "Samoyed")
    service = _service(shelter, tiny_artifact, breed_map, audit_share=1.0)
    try:
        migrate.upgrade(service.engine)
        ScriptedModel(service.classifier, shelter.seeded.photo_files.values())
        before = _animals(shelter)
        assert service.run_pass().status == "finished"
        groups = _groups(service)
        audited = sorted(d for d, g in groups.items() if g["audit"])
        assert len(audited) >= 3
        for dog in audited:
            g = groups[dog]
            assert g["status"] == NEEDS_REVIEW and g["review_reason"] == AUDIT_REASON
            assert g["written_values"] is None
            assert _animals(shelter)[dog] == before[dog], "an audit never reaches the record"
        # A second pass, with nothing new, still writes nothing.
        service.run_pass()
        assert all(_animals(shelter)[d] == before[d] for d in audited)

        # Staff confirm one audited dog in the shelter's own UI with labeler's answer.
        from labeler.shelter.breedmap import load_breed_map

        dog = audited[0]
        want = load_breed_map(breed_map).lookup(str(groups[dog]["breed"]))
        assert want is not None
        _set_breed(shelter, dog, int(want["BreedID"]), want["BreedName"])
        service.run_pass()  # syncs the staff decision
        assert _groups(service)[dog]["staff_values"]

        env = {k: str(v) for k, v in shelter.settings.items()}
        env.update(LABELER_BREED_MAP=str(breed_map), LABELER_MODEL_DIR=str(tiny_artifact))
        out = subprocess.run(
            [sys.executable, "-m", "labeler", "status", "--json"],
            env={**env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout)
        (animals,) = report["animal_quality"]
        assert animals["precision"]["n"] == 1 and animals["precision"]["estimate"] == 1.0
        assert animals["audit_rate"] > 0
    finally:
        service.engine.dispose()
