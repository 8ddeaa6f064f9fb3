"""Saving a batch's results into labeler_photo (guarded by the claim and by staff's review,
one statement per shape of result, row by row when the database refuses one) with the
per-photo write-back into the source, and ``relabel``'s selection of rows to do again.
Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    select,
    update,
)
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from labeler.core.domain import Outcome, Prediction, SaveCounts
from labeler.core.textsafe import storable
from labeler.shelter.source import Source
from labeler.store.animals import mark_groups_pending
from labeler.store.engine import is_lock_timeout, is_transient, short_error
from labeler.store.schema import (
    FAILED,
    GONE,
    ID_LENGTH,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    photo,
    run,
)
from labeler.store.shelter_sql import lock_timeout, write_source_breed
from labeler.store.source_rows import long_group_reason

ERROR_MAX = 1000
# What saving a row returns when its source row stayed locked (see _save_refusable).
LOCKED = "locked"


def save_outcomes(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcomes: Iterable[Outcome],
    now: datetime,
    lock_timeout_seconds: int | None = None,
) -> SaveCounts:
    """Write a batch's results, the optional write-back and the run's counters.

    Each UPDATE is guarded by the claim token, by ``reviewed_breed IS NULL`` and by a status
    other than ``reviewed``: a result for a row whose claim was lost, or that staff reviewed
    meanwhile (with or without a reviewed breed), changes nothing. The batch is first saved
    with one statement per shape of result (:func:`_save_at_once`); when that cannot account
    for every row, each row is saved inside its own SAVEPOINT: a permanent database error on
    one row (a value its column cannot hold, a write-back the source refuses) fails that row
    with the database's reason and the rest of the batch is saved. Connection-level errors
    propagate, for the caller to retry.
    """
    outcomes = list(outcomes)
    counts = {LABELLED: 0, NEEDS_REVIEW: 0, FAILED: 0, GONE: 0, "lost": 0, LOCKED: 0}
    before: dict[str, str | None] = {}
    if source.group is not None and outcomes:
        before = {
            pid: gid
            for pid, gid in session.execute(
                select(photo.c.photo_id, photo.c.group_id).where(
                    photo.c.photo_id.in_([o.photo_id for o in outcomes])
                )
            )
        }
    touched: set[str] = set()
    outcomes = [_fitting_group(source, o) for o in outcomes]
    statuses = None
    if not source.writeback_breed_column:
        statuses = _save_at_once(session, token, run_id, model_version, outcomes, now)
    if statuses is None:
        # The lock timeout covers the rows' statements only, set once for the batch: what
        # follows (the animals, the run's counters) waits for locks as usual.
        with lock_timeout(session, lock_timeout_seconds):
            statuses = [
                _save_refusable(session, source, token, run_id, model_version, outcome, now)
                for outcome in outcomes
            ]
    for outcome, saved in zip(outcomes, statuses, strict=True):
        counts[saved] += 1
        if saved not in ("lost", LOCKED):
            touched.update(g for g in (before.get(outcome.photo_id), outcome.group_id) if g)
    if touched:
        mark_groups_pending(session, touched, now)
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(
            labelled=run.c.labelled + counts[LABELLED],
            needs_review=run.c.needs_review + counts[NEEDS_REVIEW],
            failed=run.c.failed + counts[FAILED],
            lost=run.c.lost + counts["lost"],
        )
    )
    return SaveCounts(
        counts[LABELLED],
        counts[NEEDS_REVIEW],
        counts[FAILED],
        counts["lost"],
        counts[GONE],
        tuple(sorted(touched)),
        counts[LOCKED],
    )


def _fitting_group(source: Source, outcome: Outcome) -> Outcome:
    """The outcome, or its failure when the group value is longer than labeler's columns:
    cut, it could become another animal's id (:func:`fetch_rows` already fails such rows)."""
    if outcome.group_id is None or len(outcome.group_id) <= ID_LENGTH:
        return outcome
    reason = long_group_reason(source, len(outcome.group_id))
    return Outcome(outcome.photo_id, FAILED, error=reason, photo_ref=outcome.photo_ref)


# A batch's rows saved by one statement share these: (bound columns, computed columns).
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


def _save_at_once(
    session: Session,
    token: str,
    run_id: int,
    model_version: str,
    outcomes: Sequence[Outcome],
    now: datetime,
) -> list[str] | None:
    """Save the batch in one SAVEPOINT with one executemany per shape of result: a few round
    trips instead of three per row (SAVEPOINT, UPDATE, RELEASE), which is most of a pass's
    database time. None (nothing saved) when some row was refused or not updated (its claim
    lost, staff reviewed it): the row-by-row path then finds which, and why."""
    if len(outcomes) < 2 or not session.get_bind().dialect.supports_sane_multi_rowcount:
        return None
    # Rows with the same columns share one statement; values the database computes
    # (attempts + 1) are part of the statement, the rest are bound per row.
    shapes: dict[_Shape, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for outcome in outcomes:
        values = _result_values(outcome, run_id, model_version, now)
        computed = {k: v for k, v in values.items() if isinstance(v, ColumnElement)}
        bound = tuple(sorted(k for k in values if k not in computed))
        row = {"w_photo_id": outcome.photo_id, **{f"v_{k}": values[k] for k in bound}}
        shapes.setdefault((bound, tuple(sorted(computed))), (computed, []))[1].append(row)
    try:
        with session.begin_nested() as savepoint:
            updated = 0
            for (bound, _), (computed, rows) in shapes.items():
                new_values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in bound} | computed
                statement = (
                    update(photo)
                    .where(*_still_ours(bindparam("w_photo_id"), token))
                    .values(new_values)
                )
                result = session.execute(statement, rows)
                updated += int(result.rowcount or 0)  # type: ignore[attr-defined]
            if updated != len(outcomes):
                savepoint.rollback()
                return None
    except StatementError as exc:
        if is_transient(exc):
            raise
        return None  # the savepoint is rolled back; row by row names the refused row
    return [o.status for o in outcomes]


def _still_ours(photo_id: Any, token: str) -> tuple[ColumnElement[bool], ...]:
    """A result is saved only while the claim holds and staff have not reviewed the row."""
    return (
        photo.c.photo_id == photo_id,
        photo.c.claimed_by == token,
        photo.c.reviewed_breed.is_(None),
        photo.c.status != REVIEWED,
    )


def _save_refusable(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcome: Outcome,
    now: datetime,
) -> str:
    """One row in its own SAVEPOINT; a permanent error fails the row with the reason. A source
    row another session holds locked past the lock timeout (the per-photo write-back waits for
    it) is left as it was: :data:`LOCKED`, nothing saved, no attempt spent."""
    try:
        with session.begin_nested():
            return _save_one(session, source, token, run_id, model_version, outcome, now)
    except StatementError as exc:
        if is_lock_timeout(exc):
            return LOCKED
        if is_transient(exc):
            raise
        reason = short_error(exc)
    refused = Outcome(
        outcome.photo_id,
        FAILED,
        error=f"the database refused this row's result: {reason}",
        photo_ref=outcome.photo_ref,
    )
    with session.begin_nested():
        return _save_one(session, source, token, run_id, model_version, refused, now)


def _save_one(
    session: Session,
    source: Source,
    token: str,
    run_id: int,
    model_version: str,
    outcome: Outcome,
    now: datetime,
) -> str:
    values = _result_values(outcome, run_id, model_version, now)
    previous_breed = None
    if source.writeback_breed_column and outcome.status == LABELLED:
        previous_breed = session.scalar(
            select(photo.c.breed).where(photo.c.photo_id == outcome.photo_id)
        )
    result = session.execute(
        update(photo).where(*_still_ours(outcome.photo_id, token)).values(**values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return "lost"
    if outcome.status == LABELLED and outcome.prediction is not None:
        write_source_breed(session, source, outcome, previous_breed)
    return outcome.status


def _result_values(
    outcome: Outcome, run_id: int, model_version: str, now: datetime
) -> dict[str, Any]:
    """The photo row's new values for this outcome (the claim is given back)."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "claimed_by": None,
        "claim_expires_at": None,
        "run_id": run_id,
        "updated_at": now,
    }
    if outcome.photo_ref is not None:
        values["photo_ref"] = storable(outcome.photo_ref, 1024)
    if outcome.group_id is not None:
        # Exactly as read, like discovery: cleaned or cut, it would name another animal.
        values["group_id"] = outcome.group_id
    if outcome.context is not None:
        values["context"] = outcome.context
    if outcome.change_marker is not None:
        values["change_marker"] = outcome.change_marker[:255]
    if outcome.status == FAILED:
        values["attempts"] = photo.c.attempts + 1
        values["last_error"] = storable(outcome.error or "unknown error", ERROR_MAX)
    elif outcome.status == GONE:
        # Not a failure: nothing to retry, and nothing for staff to review.
        values["last_error"] = storable(outcome.error, ERROR_MAX)
    else:
        assert outcome.prediction is not None
        values.update(_prediction_columns(outcome.prediction))
        values.update(
            model_version=storable(model_version, 128),
            labelled_at=now,
            attempts=0,
            last_error=None,
            review_reason=storable(outcome.error, 255) or None,
            audit=int(outcome.audit),
            scores=outcome.scores,
            fingerprint=outcome.fingerprint,
            features=outcome.prediction.record,
        )
    return values


def _prediction_columns(prediction: Prediction) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    names = (("breed", "confidence"), ("breed_2", "confidence_2"), ("breed_3", "confidence_3"))
    for i, (breed_col, conf_col) in enumerate(names):
        if i < len(prediction.candidates):
            label, probability = prediction.candidates[i]
            columns[breed_col], columns[conf_col] = storable(label, 128), float(probability)
        else:
            columns[breed_col], columns[conf_col] = None, None
    return columns


@dataclass(frozen=True)
class RelabelSelection:
    """Which rows to send back to pending. Conditions combine with AND; at least one is set."""

    other_model_version: str | None = None  # rows labelled by any version but this one
    photo_ids: tuple[str, ...] = ()
    failed: bool = False
    labelled_before: datetime | None = None
    everything: bool = False

    def is_empty(self) -> bool:
        return not (
            self.other_model_version
            or self.photo_ids
            or self.failed
            or self.labelled_before
            or self.everything
        )


def relabel(session: Session, selection: RelabelSelection, now: datetime) -> int:
    """Mark the selected rows pending again. Rows with a staff decision are never selected."""
    if selection.is_empty():
        raise ValueError("relabel needs a selection")
    conditions: list[ColumnElement[bool]] = [
        photo.c.reviewed_breed.is_(None),
        photo.c.status != REVIEWED,
    ]
    if selection.other_model_version:
        conditions.append(photo.c.model_version.is_not(None))
        conditions.append(photo.c.model_version != selection.other_model_version)
    if selection.photo_ids:
        conditions.append(photo.c.photo_id.in_(list(selection.photo_ids)))
    if selection.failed:
        conditions.append(photo.c.status == FAILED)
    if selection.labelled_before:
        conditions.append(photo.c.labelled_at < selection.labelled_before)
    result = session.execute(
        update(photo)
        .where(*conditions)
        .values(
            status=PENDING,
            attempts=0,
            last_error=None,
            claimed_by=None,
            claim_expires_at=None,
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
