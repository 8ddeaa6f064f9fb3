"""The decision rule and the ranking in front of it: pure functions on tiny inputs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from labeler.decide.decision import (
    AUDIT_REASON,
    SOURCE_ARTIFACT,
    SOURCE_SETTING,
    CalibratedThreshold,
    Thresholds,
    decide,
    decide_with_audit,
    resolve_thresholds,
)
from labeler.model.artifact import load_artifact
from labeler.model.classifier import Prediction, calibrate, top_k
from labeler.store.schema import LABELLED, NEEDS_REVIEW


def prediction(*pairs: tuple[str, float]) -> Prediction:
    return Prediction(tuple(pairs))


@pytest.mark.parametrize(
    ("candidates", "thresholds", "status", "reason_part"),
    [
        ((("beagle", 0.9), ("pug", 0.05)), Thresholds(0.6, 0.1), LABELLED, None),
        ((("beagle", 0.59), ("pug", 0.3)), Thresholds(0.6, 0.0), NEEDS_REVIEW, "confidence 0.59"),
        ((("beagle", 0.6), ("pug", 0.4)), Thresholds(0.6, 0.0), LABELLED, None),  # at threshold
        ((("beagle", 0.7), ("pug", 0.65)), Thresholds(0.6, 0.1), NEEDS_REVIEW, "margin 0.05"),
        ((("beagle", 0.7),), Thresholds(0.6, 0.5), LABELLED, None),  # one class: margin 0.7
        (
            (("not_a_dog", 0.99), ("pug", 0.01)),
            Thresholds(0.6, 0.0, frozenset({"not_a_dog"})),
            NEEDS_REVIEW,
            "no dog found",
        ),
    ],
)
def test_decide(candidates, thresholds, status, reason_part) -> None:  # type: ignore[no-untyped-def]
    decision = decide(prediction(*candidates), thresholds)
    assert decision.status == status
    if reason_part is None:
        assert decision.reason is None
    else:
        assert reason_part in (decision.reason or "")


def test_a_look_alike_label_goes_to_review_however_confident() -> None:
    rule = Thresholds(0.6, 0.0, look_alikes=(("pug", "'Pit Bull Terrier' 9 times"),))
    decision = decide(prediction(("pug", 0.99), ("beagle", 0.01)), rule)
    assert decision.status == NEEDS_REVIEW
    assert "'pug' stands here for breeds the model does not know" in (decision.reason or "")
    assert "'Pit Bull Terrier' 9 times" in (decision.reason or "")
    assert decide(prediction(("beagle", 0.99), ("pug", 0.01)), rule).status == LABELLED
    assert rule.look_alike_of("beagle") is None


@pytest.mark.parametrize(
    "candidates",
    [
        (("beagle", float("nan")), ("pug", 0.1)),
        (("beagle", float("inf")), ("pug", 0.1)),
        (("beagle", 0.9), ("pug", float("nan"))),  # a NaN margin passes `margin < x` too
        (("beagle", 0.9), ("pug", float("-inf"))),
        (("beagle", float("nan")),),
    ],
)
def test_non_finite_confidence_goes_to_review(candidates: tuple[tuple[str, float], ...]) -> None:
    decision = decide(prediction(*candidates), Thresholds(0.0, 0.0))
    assert decision.status == NEEDS_REVIEW
    assert "not a finite number" in (decision.reason or "")
    assert decide_with_audit(prediction(*candidates), Thresholds(0.0, 0.0), True).audit is False


def test_audit_turns_only_confident_results_into_audits() -> None:
    t = Thresholds(0.6, 0.1)
    confident = prediction(("beagle", 0.9), ("pug", 0.05))
    doubtful = prediction(("beagle", 0.5), ("pug", 0.3))
    audited = decide_with_audit(confident, t, True)
    assert (audited.status, audited.reason, audited.audit) == (NEEDS_REVIEW, AUDIT_REASON, True)
    assert (audited.reason or "").startswith("audit")
    assert decide_with_audit(confident, t, False) == decide(confident, t)
    # A doubtful result keeps its own reason: it is not part of the audit sample.
    assert decide_with_audit(doubtful, t, True) == decide(doubtful, t)
    assert decide_with_audit(doubtful, t, True).audit is False


def test_threshold_precedence(tiny_artifact: Path) -> None:
    artifact = load_artifact(tiny_artifact)  # recommends threshold 0.2, margin 0.0
    calibrated = CalibratedThreshold(
        model_version=artifact.version,
        review_threshold=0.73,
        review_margin=0.05,
        target_precision=0.95,
        rows_used=120,
        created_at=datetime(2026, 11, 20, 8, 30),
    )
    t = resolve_thresholds(artifact, None, None)
    assert (t.review_threshold, t.review_margin, t.source) == (0.2, 0.0, SOURCE_ARTIFACT)
    t = resolve_thresholds(artifact, None, None, calibrated=calibrated, audit_share=0.02)
    assert (t.review_threshold, t.review_margin, t.audit_share) == (0.73, 0.05, 0.02)
    assert "calibrated on 2026-11-20 from 120 reviewed rows" in t.source
    t = resolve_thresholds(artifact, 0.4, None, calibrated=calibrated)
    assert (t.review_threshold, t.review_margin, t.source) == (0.4, 0.05, SOURCE_SETTING)
    t = resolve_thresholds(artifact, None, 0.2, calibrated=calibrated)
    assert (t.review_threshold, t.review_margin) == (0.73, 0.2)


def test_top_k_ranks_best_first_and_keeps_ties_stable() -> None:
    probs = np.array([[0.1, 0.6, 0.3], [0.4, 0.4, 0.2]])
    ranked = top_k(probs, ("a", "b", "c"), k=2)
    assert [c[0] for c in ranked[0].candidates] == ["b", "c"]
    assert [c[0] for c in ranked[1].candidates] == ["a", "b"]
    assert ranked[0].margin == pytest.approx(0.3)
    assert len(top_k(probs, ("a", "b", "c"), k=10)[0].candidates) == 3


def test_temperature_scaling_keeps_order_and_softens() -> None:
    probs = np.array([[0.7, 0.2, 0.1]])
    soft = calibrate(probs, 2.0)
    sharp = calibrate(probs, 0.5)
    assert soft.sum() == pytest.approx(1.0) and sharp.sum() == pytest.approx(1.0)
    assert np.argsort(soft[0]).tolist() == np.argsort(probs[0]).tolist()
    assert soft[0, 0] < 0.7 < sharp[0, 0]
    assert calibrate(probs, 1.0) is probs
