"""The decision rule and the ranking in front of it: pure functions on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.classifier import Prediction, calibrate, top_k
from labeler.decision import Thresholds, decide
from labeler.schema import LABELLED, NEEDS_REVIEW


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
            "not a dog",
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
