"""Refitting the head on stored records: the record format and the refit rule, on
constructed numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeler.decide.refit import (
    RecordDecision,
    Refit,
    fit_correction,
    offsets,
    probabilities,
    refit,
)
from labeler.model.features import (
    FeatureError,
    FeatureSpace,
    HeadCorrection,
    PhotoRecord,
    corrected,
    decode_record,
    encode_record,
)

SPACE = "0123456789abcdef"
LABELS = ("a", "b", "c")


def test_a_record_round_trips_and_a_damaged_one_reads_as_none() -> None:
    logp, projected = np.log([0.7, 0.2, 0.1]), np.array([1.5, -0.25])
    blob = encode_record(SPACE, logp, projected)
    record = decode_record(blob)
    assert record is not None and record.space == SPACE
    np.testing.assert_allclose(record.logp, logp, rtol=1e-3)
    np.testing.assert_allclose(record.projected, projected, rtol=1e-3)
    for damaged in (None, b"", b"XX1" + blob[3:], blob[:-2], blob[:15] + b"\x7e\x00" * 5):
        assert decode_record(damaged) is None


def test_a_correction_is_added_to_the_logits_and_checked_when_loaded(tmp_path: Path) -> None:
    p = np.array([[0.5, 0.3, 0.2]])
    assert corrected(p, None, None) is p
    correction = HeadCorrection(np.array([[0.0, 2.0, 0.0]]), np.zeros(3))
    out = corrected(p, correction, np.array([[1.0]]))
    assert out.sum() == pytest.approx(1.0) and out.argmax() == 1
    with pytest.raises(FeatureError):
        corrected(p, correction, None)
    correction.save(tmp_path / "c.npz")
    assert HeadCorrection.load(tmp_path / "c.npz", 1, 3).weights.shape == (1, 3)
    with pytest.raises(FeatureError, match="does not fit"):
        HeadCorrection.load(tmp_path / "c.npz", 2, 3)


def _shelter(n: int, informative: bool, seed: int = 0) -> list[RecordDecision]:
    """The network says nothing (uniform); the features tell the breeds apart, or not."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 3))
        x = 3.0 * np.eye(3)[label] if informative else np.zeros(3)
        record = PhotoRecord(SPACE, np.full(3, np.log(1 / 3)), x + rng.normal(0, 0.3, 3))
        rows.append(RecordDecision(f"photo-{i}", record, label))
    return rows


def _space() -> FeatureSpace:
    return FeatureSpace(
        SPACE,
        np.zeros(3),
        np.eye(3),
        np.full((3, 3), np.log(1 / 3)),
        3.0 * np.eye(3),
        np.arange(3),
    )


def _refit(rows: list[RecordDecision]) -> Refit | None:
    return refit(
        rows,
        _space(),
        LABELS,
        1.0,
        0.8,
        frozenset(),
        current_weights=None,
        current_correction=None,
        final_weights=[1.0, 1.0, 1.0],
    )


def test_the_refit_learns_what_the_features_say_and_is_judged_on_held_out_photos() -> None:
    result = _refit(_shelter(300, informative=True))
    assert result is not None and result.correction is not None
    assert result.after.top1_right > result.prior_only.top1_right
    assert result.after.top1_right > 0.9 * result.after.n
    assert ": applied" in result.evidence()


def test_too_few_or_foreign_records_are_not_refitted() -> None:
    assert _refit(_shelter(10, informative=True)) is None
    foreign = [
        RecordDecision(
            r.key, PhotoRecord("ffffffffffffffff", r.record.logp, r.record.projected), r.staff_label
        )
        for r in _shelter(300, informative=True)
    ]
    assert _refit(foreign) is None


def test_features_that_say_nothing_give_no_gain_and_a_heavy_penalty_no_correction() -> None:
    result = _refit(_shelter(300, informative=False))
    assert result is not None
    assert result.correction is None or result.after.top1_right >= result.prior_only.top1_right
    if result.correction is None:
        assert result.reason and "not applied" in result.evidence()
    rows = _shelter(200, informative=True)
    x = np.stack([r.record.projected for r in rows])
    y = np.array([r.staff_label for r in rows])
    offset = offsets(np.stack([r.record.logp for r in rows]), 1.0, None)
    assert np.abs(fit_correction(offset, x, y, l2=1e3).weights).max() < 1e-2
    learned = fit_correction(offset, x, y)
    assert (probabilities(offset, x, learned).argmax(axis=1) == y).mean() > 0.9
    # Rows the dog gate ruled out (their label at ~1e-12) teach nothing.
    gated = np.full_like(offset, np.log(1e-12))
    gated[:, 0] = 0.0
    others = y != 0
    assert not fit_correction(gated[others], x[others], y[others]).weights.any()
