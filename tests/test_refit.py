"""Refitting the head on stored records: the record format, the feature-space and correction
files, and the refit rule, all on small constructed numbers (no database, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeler.decide.adapt import held_out
from labeler.decide.refit import (
    RecordDecision,
    Refit,
    best_guesses,
    fit_correction,
    offsets,
    probabilities,
    refit,
)
from labeler.model.classifier import apply_class_weights, calibrate
from labeler.model.features import (
    FeatureError,
    FeatureSpace,
    HeadCorrection,
    PhotoRecord,
    corrected,
    decode_record,
    encode_record,
    space_id,
)

SPACE = "0123456789abcdef"
FOREIGN = "fedcba9876543210"
LABELS = ("a", "b", "c")
UNIFORM = np.full(3, np.log(1 / 3))


# --- the stored record -------------------------------------------------------------------


def test_a_record_round_trips_at_half_precision() -> None:
    logp = np.log([0.7, 0.2, 0.1, 1e-12])
    projected = np.array([1.5, -0.25, 3.125, -7.0])
    blob = encode_record(SPACE, logp, projected)
    record = decode_record(blob)
    assert record is not None
    assert record.space == SPACE
    assert record.logp.shape == (4,) and record.projected.shape == (4,)
    np.testing.assert_allclose(record.logp, logp, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(record.projected, projected, rtol=1e-2, atol=1e-2)
    # Header + 2 bytes a number: compact.
    assert len(blob) == 3 + 8 + 2 + 2 + 2 * 8


def test_a_missing_foreign_or_damaged_record_reads_as_none() -> None:
    blob = encode_record(SPACE, UNIFORM, np.array([0.5, -0.5]))
    assert decode_record(blob) is not None
    nan_body = blob[:15] + np.full(5, np.nan).astype(">f2").tobytes()
    inf_body = blob[:15] + np.full(5, np.inf).astype(">f2").tobytes()
    damaged: list[bytes | None] = [
        None,
        b"",
        b"LF",  # shorter than a header
        blob[:15],  # a header without a body
        b"XX1" + blob[3:],  # wrong magic
        blob[:-1],  # truncated body (odd length)
        blob[:-2],  # one number short
        blob + b"\x00\x00",  # one number too many
        nan_body,
        inf_body,
    ]
    for bad in damaged:
        assert decode_record(bad) is None, bad


# --- the feature space --------------------------------------------------------------------


def _space(anchor_labels: np.ndarray | None = None) -> FeatureSpace:
    labels = np.arange(3) if anchor_labels is None else anchor_labels
    return FeatureSpace(
        SPACE,
        np.zeros(3),
        np.eye(3),
        np.tile(UNIFORM, (3, 1)),
        3.0 * np.eye(3),
        labels,
    )


def test_a_feature_space_round_trips_through_its_file(tmp_path: Path) -> None:
    space = FeatureSpace(
        SPACE,
        np.array([0.5, -1.0, 2.0, 0.0]),
        np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]),
        np.log([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]),
        np.array([[1.25, -0.5], [0.0, 2.0]]),
        np.array([0, 2]),
    )
    path = tmp_path / "feature_space.npz"
    space.save(path)
    loaded = FeatureSpace.load(path, classes=3)
    assert loaded.space == SPACE
    assert (loaded.dims, loaded.source_dims) == (2, 4)
    np.testing.assert_allclose(loaded.mean, space.mean, rtol=1e-6)
    np.testing.assert_allclose(loaded.projection, space.projection, rtol=1e-6)
    np.testing.assert_allclose(loaded.anchor_logp, space.anchor_logp, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(
        loaded.anchor_projected, space.anchor_projected, rtol=1e-2, atol=1e-2
    )
    assert loaded.anchor_labels.tolist() == [0, 2]
    # Projecting is centring then the projection.
    np.testing.assert_allclose(loaded.project(np.array([1.5, 0.0, 2.0, 7.0])), [1.0, 0.5])


def test_a_feature_space_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "feature_space.npz"
    _space().save(path)
    assert FeatureSpace.load(path, classes=3).dims == 3
    with pytest.raises(FeatureError, match="do not fit"):
        FeatureSpace.load(path, classes=4)  # anchors have 3 log-probabilities, not 4

    _space(anchor_labels=np.array([0, 1, 3])).save(path)
    with pytest.raises(FeatureError, match="anchor names a label"):
        FeatureSpace.load(path, classes=3)
    _space(anchor_labels=np.array([0, -1, 2])).save(path)
    with pytest.raises(FeatureError, match="anchor names a label"):
        FeatureSpace.load(path, classes=3)

    np.savez(
        path,
        space=np.array(SPACE),
        mean=np.zeros(2),  # (D,) with D = 3 expected
        projection=np.eye(3),
        anchor_logp=np.zeros((0, 3)),
        anchor_projected=np.zeros((0, 3)),
        anchor_labels=np.zeros(0, np.int16),
    )
    with pytest.raises(FeatureError, match="do not fit"):
        FeatureSpace.load(path, classes=3)

    bad = _space()
    FeatureSpace(
        "abc", bad.mean, bad.projection, bad.anchor_logp, bad.anchor_projected, bad.anchor_labels
    ).save(path)
    with pytest.raises(FeatureError, match="do not fit"):
        FeatureSpace.load(path, classes=3)

    nan_mean = _space()
    nan_mean.mean[0] = np.nan
    nan_mean.save(path)
    with pytest.raises(FeatureError, match="non-finite"):
        FeatureSpace.load(path, classes=3)

    path.write_bytes(b"not an npz file")
    with pytest.raises(FeatureError, match="not a readable feature space"):
        FeatureSpace.load(path, classes=3)
    with pytest.raises(FeatureError, match="not a readable feature space"):
        FeatureSpace.load(tmp_path / "missing.npz", classes=3)


def test_the_space_id_names_the_network_and_the_projection() -> None:
    projection, mean = np.eye(2), np.zeros(2)
    sid = space_id(b"network", projection, mean)
    assert len(sid) == 16 and int(sid, 16) >= 0
    assert space_id(b"network", projection.copy(), mean.copy()) == sid
    assert space_id(b"another", projection, mean) != sid
    assert space_id(b"network", 2 * projection, mean) != sid
    assert space_id(b"network", projection, mean + 1) != sid
    # A record names its space exactly.
    record = decode_record(encode_record(sid, UNIFORM, np.zeros(2)))
    assert record is not None and record.space == sid


# --- the head correction ------------------------------------------------------------------


def test_a_head_correction_round_trips_and_must_fit(tmp_path: Path) -> None:
    correction = HeadCorrection(np.array([[0.5, -1.0, 0.0], [2.0, 0.25, -0.5]]), np.ones(3))
    path = tmp_path / "head_correction.npz"
    correction.save(path)
    loaded = HeadCorrection.load(path, dims=2, classes=3)
    np.testing.assert_allclose(loaded.weights, correction.weights, rtol=1e-6)
    np.testing.assert_allclose(loaded.bias, correction.bias, rtol=1e-6)
    np.testing.assert_allclose(loaded.logits(np.array([1.0, 1.0])), [3.5, 0.25, 0.5], rtol=1e-6)
    for dims, classes in ((3, 3), (2, 4), (3, 2)):
        with pytest.raises(FeatureError, match="does not fit"):
            HeadCorrection.load(path, dims=dims, classes=classes)
    HeadCorrection(np.full((2, 3), np.inf), np.zeros(3)).save(path)
    with pytest.raises(FeatureError, match="non-finite"):
        HeadCorrection.load(path, dims=2, classes=3)
    path.write_bytes(b"garbage")
    with pytest.raises(FeatureError, match="not a readable head correction"):
        HeadCorrection.load(path, dims=2, classes=3)


def test_corrected_adds_the_heads_logits() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert corrected(p, None, None) is p  # no correction: untouched
    correction = HeadCorrection(np.array([[0.0, 3.0, 0.0]]), np.zeros(3))
    out = corrected(p, correction, np.array([[1.0], [0.0]]))
    np.testing.assert_allclose(out.sum(axis=1), [1.0, 1.0])
    assert out[0].argmax() == 1  # the head moved the first photo to "b"
    np.testing.assert_allclose(out[1], p[1])  # zero features, zero bias: unchanged
    # Exactly softmax(log p + logits).
    expected = p[0] * np.exp([0.0, 3.0, 0.0])
    np.testing.assert_allclose(out[0], expected / expected.sum())
    with pytest.raises(FeatureError, match="no features"):
        corrected(p, correction, None)


def test_best_guesses_are_what_the_served_model_answers() -> None:
    """A record scored with weights and a correction gives the label and probability serving
    gives the same photo: temperature, class weights, then the head's logits."""
    raw = np.array([[0.6, 0.38, 0.02], [0.2, 0.2, 0.6]])
    projected = np.array([[1.0], [0.0]])
    records = [PhotoRecord(SPACE, np.log(r), x) for r, x in zip(raw, projected, strict=True)]
    weights, temperature = (1.0, 4.0, 1.0), 0.7
    correction = HeadCorrection(np.array([[0.0, 0.0, 2.0]]), np.zeros(3))
    served = corrected(
        apply_class_weights(calibrate(raw, temperature), weights), correction, projected
    )
    guesses = best_guesses(records, LABELS, temperature, weights, correction)
    assert [label for label, _ in guesses] == [LABELS[int(k)] for k in served.argmax(axis=1)]
    assert [p for _, p in guesses] == pytest.approx(served.max(axis=1), rel=1e-6)
    # The prior alone moves the first photo from "a" to "b".
    assert best_guesses(records[:1], LABELS, 1.0, weights, None)[0][0] == "b"
    assert best_guesses(records[:1], LABELS, 1.0, None, None)[0][0] == "a"
    assert best_guesses([], LABELS, 1.0, None, None) == []


# --- fitting the correction ---------------------------------------------------------------


def _sign_problem(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes, a uniform model, and the class the sign of the first feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 2))
    x[:, 0] += np.where(x[:, 0] >= 0, 0.5, -0.5)  # a margin
    y = (x[:, 0] > 0).astype(np.int64)
    offset = np.full((n, 2), np.log(0.5))
    return offset, x, y


def test_fit_correction_learns_a_separable_problem() -> None:
    offset, x, y = _sign_problem()
    before = probabilities(offset, x, None)
    np.testing.assert_allclose(before, 0.5)
    learned = fit_correction(offset, x, y)
    assert learned.weights.shape == (2, 2) and learned.bias.shape == (2,)
    p = probabilities(offset, x, learned)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p.argmax(axis=1) == y).mean() > 0.9
    # It learned the first feature, not the second.
    assert learned.weights[0, 1] - learned.weights[0, 0] > 0.5
    assert abs(learned.weights[1, 1] - learned.weights[1, 0]) < 0.5
    # Deterministic: the same data, the same correction.
    again = fit_correction(offset, x, y)
    np.testing.assert_array_equal(again.weights, learned.weights)


def test_a_heavy_penalty_leaves_almost_no_correction() -> None:
    offset, x, y = _sign_problem()
    assert np.abs(fit_correction(offset, x, y, l2=1e3).weights).max() < 1e-2
    assert np.abs(fit_correction(offset, x, y, l2=1e-3).weights).max() > 0.1


def test_rows_the_dog_gate_ruled_out_teach_nothing() -> None:
    offset, x, y = _sign_problem()
    gated = np.zeros_like(offset)
    gated[np.arange(len(y)), y] = -27.6  # every row's own label ruled out
    only_gated = fit_correction(gated, x, y)
    assert not only_gated.weights.any() and not only_gated.bias.any()
    # Mixed in with usable rows, they change nothing.
    alone = fit_correction(offset, x, y)
    mixed = fit_correction(
        np.concatenate([offset, gated]), np.concatenate([x, x]), np.concatenate([y, y])
    )
    np.testing.assert_allclose(mixed.weights, alone.weights)
    np.testing.assert_allclose(mixed.bias, alone.bias)


def test_offsets_are_the_served_log_probabilities() -> None:
    logp = np.log(np.array([[0.5, 0.3, 0.2]]))
    np.testing.assert_allclose(offsets(logp, 1.0, None), logp)
    weighted = np.exp(offsets(logp, 1.0, [2.0, 1.0, 1.0]))
    expected = np.array([1.0, 0.3, 0.2]) / 1.5
    np.testing.assert_allclose(weighted, [expected])
    hot = np.exp(offsets(logp, 2.0, None))
    np.testing.assert_allclose(hot.sum(), 1.0)
    assert hot[0, 0] < 0.5  # a temperature over 1 flattens


# --- the refit ----------------------------------------------------------------------------


def _shelter(
    n: int, *, informative: bool = True, space: str = SPACE, seed: int = 0
) -> list[RecordDecision]:
    """The network says nothing (uniform); the features tell the breeds apart, or not."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 3))
        x = 3.0 * np.eye(3)[label] if informative else np.zeros(3)
        record = PhotoRecord(space, UNIFORM.copy(), x + rng.normal(0, 0.3, 3))
        rows.append(RecordDecision(f"photo-{i}", record, label))
    return rows


def _refit(rows: list[RecordDecision], **kwargs: int) -> Refit | None:
    return refit(
        rows,
        _space(),
        LABELS,
        1.0,
        0.5,
        frozenset(),
        current_weights=None,
        current_correction=None,
        final_weights=[1.0, 1.0, 1.0],
        **kwargs,
    )


def test_the_refit_learns_what_the_features_say_judged_on_held_out_photos() -> None:
    rows = _shelter(300)
    result = _refit(rows)
    assert result is not None
    assert result.correction is not None and result.reason == ""
    assert result.correction.weights.shape == (3, 3)
    assert result.decisions == 300
    held = sum(held_out(r.key) for r in rows)
    assert 0 < held < 300
    assert result.before.n == result.prior_only.n == result.after.n == held
    assert result.after.top1_right > result.before.top1_right
    assert result.after.top1_right > result.prior_only.top1_right
    assert result.after.top1_right > 0.9 * result.after.n
    assert result.after.auto > 0
    assert result.after.auto_right / result.after.auto >= 0.95
    # The final correction moves a photo whose features say "c" to "c".
    p = probabilities(
        offsets(UNIFORM, 1.0, [1.0] * 3), np.array([0.0, 0.0, 3.0]), result.correction
    )
    assert p.argmax() == 2
    evidence = result.evidence()
    assert ": applied" in evidence and "not applied" not in evidence
    assert "300 decided photos" in evidence


def test_too_few_or_foreign_records_are_not_refitted() -> None:
    assert _refit(_shelter(10)) is None  # under MIN_REFIT_DECISIONS
    assert _refit(_shelter(40), min_decisions=50) is None
    assert _refit(_shelter(40), min_decisions=30) is not None
    assert _refit(_shelter(300, space=FOREIGN)) is None
    # Foreign records are left out, not mixed in: the count is the native ones only.
    mixed = _shelter(300) + [
        RecordDecision(f"foreign-{i}", r.record, r.staff_label)
        for i, r in enumerate(_shelter(100, space=FOREIGN, seed=1))
    ]
    result = _refit(mixed)
    assert result is not None and result.decisions == 300
    # Records of the wrong shape, or labels the model lacks, are left out too.
    odd = [
        RecordDecision("odd-1", PhotoRecord(SPACE, np.zeros(4), np.zeros(3)), 0),
        RecordDecision("odd-2", PhotoRecord(SPACE, UNIFORM, np.zeros(2)), 0),
        RecordDecision("odd-3", PhotoRecord(SPACE, UNIFORM, np.zeros(3)), 3),
    ]
    result = _refit(_shelter(300) + odd)
    assert result is not None and result.decisions == 300


def _noise_feature_rows(
    n: int, seed: int, right_share: float, confidence: float
) -> list[RecordDecision]:
    """Decisions on 3 breeds whose model answers ``confidence`` for its guess, right
    ``right_share`` of the time, with features that are pure noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 3))
        guess = label if rng.random() < right_share else (label + 1) % 3
        p = np.full(3, (1.0 - confidence) / 2)
        p[guess] = confidence
        record = PhotoRecord(SPACE, np.log(p), rng.normal(0, 1.0, 3))
        rows.append(RecordDecision(f"photo-{i}", record, label))
    return rows


def test_features_that_say_nothing_do_not_make_things_worse() -> None:
    """The model is already right; the features are noise."""
    result = _refit(_noise_feature_rows(300, seed=3, right_share=1.0, confidence=0.8))
    assert result is not None
    assert result.prior_only.top1_right == result.prior_only.n  # the model alone is right
    if result.correction is None:
        assert result.reason
        assert f"not applied: {result.reason}" in result.evidence()
    else:
        assert result.after.top1_right >= result.prior_only.top1_right
        assert "applied" in result.evidence()


def test_a_refit_that_breaks_the_precision_promise_is_not_applied() -> None:
    """The model is confident (0.9) but right only 70% of the time, and the features are
    noise: no correction can fix the auto-labels, so none is applied."""
    result = _refit(_noise_feature_rows(400, seed=4, right_share=0.7, confidence=0.9))
    assert result is not None
    assert result.correction is None
    assert result.reason
    evidence = result.evidence()
    assert "not applied" in evidence and result.reason in evidence


def test_gated_rows_are_judged_on_the_raw_outputs_whatever_the_temperature() -> None:
    # A photo the dog gate ruled out: its label at the clip floor, whatever the offset says
    # once a temperature of 2 has divided it.
    raw = np.log(np.array([[1e-12, 1.0 - 2e-12, 1e-12]] * 20))
    offset = raw / 2.0
    x = np.tile([[5.0, 0.0, 0.0]], (20, 1))
    y = np.zeros(20, dtype=np.int64)
    assert fit_correction(offset, x, y).weights.any()  # the offset alone would keep them
    assert not fit_correction(offset, x, y, raw_logp=raw).weights.any()


def test_a_feature_space_with_a_flat_projection_is_a_feature_error(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "flat.npz",
        space=np.array("0123456789abcdef"),
        mean=np.zeros(3),
        projection=np.zeros(3),
        anchor_logp=np.zeros((0, 3)),
        anchor_projected=np.zeros((0, 3)),
        anchor_labels=np.zeros((0, 1), np.int16),
    )
    with pytest.raises(FeatureError):
        FeatureSpace.load(tmp_path / "flat.npz", classes=3)
