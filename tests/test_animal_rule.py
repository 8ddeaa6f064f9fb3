"""The per-animal rule: serving's combination and training's fit, on constructed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeler.core.domain import LABELLED, NEEDS_REVIEW, PhotoScores
from labeler.decide.decision import Thresholds
from labeler.decide.grouping import combine, decide_group
from training import animal_rule


def photo(pid: str, label: str, p: float) -> PhotoScores:
    return PhotoScores(pid, {label: math.log(p), "other": math.log(1 - p - 1e-6)}, math.log(1e-6))


def test_geometric_mean_adds_nothing_for_agreeing_photos() -> None:
    one = combine([photo("1", "beagle", 0.8)])
    two = combine([photo("1", "beagle", 0.8), photo("2", "beagle", 0.8)])
    assert two.confidence == pytest.approx(one.confidence, abs=1e-9)


def test_lower_evidence_lets_agreeing_photos_add_confidence() -> None:
    photos = [photo("1", "beagle", 0.8), photo("2", "beagle", 0.8)]
    half = combine(photos, evidence=0.5).confidence
    product = combine(photos, evidence=0.0).confidence
    # Product of two 0.8 vs 0.2 photos: 0.64 / (0.64 + 0.04) = 0.941.
    assert product == pytest.approx(0.64 / 0.68, abs=1e-4)
    assert 0.8 < half < product


def test_evidence_has_no_effect_on_one_photo() -> None:
    only = [photo("1", "beagle", 0.7)]
    assert combine(only, evidence=0.0).confidence == pytest.approx(combine(only).confidence)


@pytest.mark.parametrize("evidence", [-0.1, 1.5, math.nan])
def test_evidence_outside_zero_one_is_refused(evidence: float) -> None:
    with pytest.raises(ValueError, match="evidence"):
        combine([photo("1", "beagle", 0.7)], evidence=evidence)


def test_decide_group_uses_the_artifacts_evidence() -> None:
    photos = [photo("1", "beagle", 0.85), photo("2", "beagle", 0.85)]
    strict = Thresholds(review_threshold=0.9, animal_evidence=1.0)
    pooled = Thresholds(review_threshold=0.9, animal_evidence=0.0)
    assert decide_group(photos, strict, margin=1.0).status == NEEDS_REVIEW
    assert decide_group(photos, pooled, margin=1.0).status == LABELLED


def test_a_no_dog_animal_goes_to_review_with_that_reason() -> None:
    photos = [photo("1", "not_a_dog", 0.99)]
    decision = decide_group(photos, Thresholds(review_threshold=0.5), margin=1.0)
    assert decision.status == NEEDS_REVIEW
    assert decision.reason is not None and "no dog found" in decision.reason


def test_independent_groups_are_disjoint_and_of_one_class() -> None:
    labels = np.array([0] * 7 + [1] * 4)
    groups = animal_rule.independent_groups(labels, 3, seed=1)
    assert groups.shape == (3, 3)  # 7 // 3 + 4 // 3
    assert len(set(groups.ravel())) == groups.size
    assert all(len(set(labels[g])) == 1 for g in groups)


def test_combine_groups_matches_serving_combine() -> None:
    logp = np.log(np.array([[0.8, 0.15, 0.05], [0.6, 0.3, 0.1]]))
    for evidence in (0.0, 0.4, 1.0):
        ours = animal_rule.combine_groups(logp, np.array([[0, 1]]), evidence)[0]
        photos = [
            PhotoScores(str(i), {"a": row[0], "b": row[1], "c": row[2]}, math.log(1e-12))
            for i, row in enumerate(logp)
        ]
        served = combine(photos, evidence=evidence)
        assert served.confidence == pytest.approx(ours.max(), abs=1e-6)


def _world(correlated_errors: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 photos of 2 classes: 36 right at 0.9, 4 wrong at 0.8 (under the 0.85 threshold
    alone). Views repeat each photo: a wrong photo stays wrong in every view (correlated) or
    its other views are right."""
    labels = np.array([0] * 20 + [1] * 20)
    probs = np.full((40, 2), 0.1)
    probs[np.arange(40), labels] = 0.9
    wrong = [0, 1, 20, 21]
    probs[wrong] = [[0.2, 0.8]] * 2 + [[0.8, 0.2]] * 2
    views = np.stack([probs] * 4)
    if not correlated_errors:
        views[1:, wrong] = probs[[2, 3, 22, 23]]
    return np.log(probs), np.log(views), labels


def test_fit_evidence_stays_high_when_views_carry_the_same_error() -> None:
    logp, views, labels = _world(correlated_errors=True)
    # Four identical 0.8 views pass 0.85 once 4 ** (1 - evidence) >= 1.25, i.e. evidence
    # <= 0.838: every lower value auto-labels the wrong photos.
    assert animal_rule.fit_evidence(logp, views, labels, 0.85, 0.95, reject=[]) == 0.85


def test_fit_evidence_pools_photos_when_errors_are_not_shared() -> None:
    logp, views, labels = _world(correlated_errors=False)
    evidence = animal_rule.fit_evidence(logp, views, labels, 0.85, 0.95, reject=[])
    assert evidence < 0.85
    rows = animal_rule.outcomes(logp, views, labels, evidence, 0.85, reject=[])
    assert {(r.construction, r.size) for r in rows} >= {("independent", 2), ("views", 4)}
    assert all(r.outcome.auto == 0 or r.outcome.precision >= 0.95 for r in rows)


def test_nothing_qualifies_means_the_geometric_mean() -> None:
    logp, views, labels = _world(correlated_errors=True)
    # Single photos at 0.75 threshold are 90% right: no evidence reaches 0.99.
    assert animal_rule.fit_evidence(logp, views, labels, 0.75, 0.99, reject=[]) == 1.0


def test_photos_past_the_fitted_sizes_add_no_more_evidence() -> None:
    four = [photo(str(i), "beagle", 0.8) for i in range(4)]
    eight = [photo(str(i), "beagle", 0.8) for i in range(8)]
    assert combine(eight, evidence=0.0).confidence == pytest.approx(
        combine(four, evidence=0.0).confidence
    )


def test_each_animal_size_takes_its_own_evidence() -> None:
    rule = Thresholds(
        review_threshold=0.9, animal_evidence=1.0, animal_evidence_by_photos=(0.2, 0.5, 0.7)
    )
    assert [rule.evidence_for(n) for n in (1, 2, 3, 4, 9)] == [1.0, 0.2, 0.5, 0.7, 0.7]
    assert Thresholds(review_threshold=0.9, animal_evidence=0.6).evidence_for(3) == 0.6
    # Two photos at 0.85 pass 0.9 only with the strong pooling of the two-photo evidence.
    two = [photo("1", "beagle", 0.85), photo("2", "beagle", 0.85)]
    assert decide_group(two, rule, margin=1.0).status == LABELLED
    assert decide_group(two, Thresholds(review_threshold=0.9), margin=1.0).status == NEEDS_REVIEW


def test_fit_evidence_by_size_is_fit_evidence_one_size_at_a_time() -> None:
    logp, views, labels = _world(correlated_errors=False)
    by_size = animal_rule.fit_evidence_by_size(logp, views, labels, 0.85, 0.95, reject=[])
    assert len(by_size) == len(animal_rule.ANIMAL_SIZES)
    overall = animal_rule.fit_evidence(logp, views, labels, 0.85, 0.95, reject=[])
    # The overall fit needs every size to pass at once: no size needs more than that.
    assert all(e <= overall for e in by_size)
    for size, evidence in zip(animal_rule.ANIMAL_SIZES, by_size, strict=True):
        alone = animal_rule.fit_evidence(logp, views, labels, 0.85, 0.95, reject=[], sizes=(size,))
        assert evidence == alone
    rows = animal_rule.outcomes_by_size(logp, views, labels, by_size, 0.85, reject=[])
    assert {r.size for r in rows} == set(animal_rule.ANIMAL_SIZES)
    assert all(r.outcome.auto == 0 or r.outcome.precision >= 0.95 for r in rows)
    # Correlated errors: the four-view animal keeps the strict evidence on its own.
    logp, views, labels = _world(correlated_errors=True)
    assert animal_rule.fit_evidence_by_size(logp, views, labels, 0.85, 0.95, reject=[])[-1] == 0.85
