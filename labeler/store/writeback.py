"""Deciding an animal from its photos and writing the answer to its record (or taking an
earlier answer back) under the same-statement guard; what a staff change, a missing record or
a missing grant does to the animal. The statements that touch the shelter's table are in
``shelter_sql``. Functions take a session and never commit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from labeler.config.settings import setting_default
from labeler.core.domain import Prediction
from labeler.core.textsafe import id_list, storable
from labeler.decide.audit import is_audit
from labeler.decide.decision import Thresholds
from labeler.decide.grouping import decide_group, parse_scores
from labeler.shelter.target import Target, parse_replaced, parse_values, values_json
from labeler.store import animals, shelter_sql
from labeler.store.engine import short_error, source_error_kind
from labeler.store.schema import FAILED, GONE, LABELLED, NEEDS_REVIEW, PENDING, REVIEWED, group

STAFF_REASON = "staff set the breed in the shelter's own record"


NO_PHOTOS_REASON = (
    "none of its photos is in the source any more (deleted, moved to another animal by a "
    "merge, or no longer matching the filter)"
)


def no_record_reason(target: Target, group_id: str) -> str:
    """Why an animal whose record is not there any more left the review queue."""
    return (
        storable(
            f"no {target.table.name} record has {target.key_column} = {group_id} any more "
            "(deleted or merged into another in the shelter's software): nothing to write",
            255,
        )
        or ""
    )


# What settle_group and apply_review return when the database user may not update the record:
# the answer is kept, nothing spent, and the write is tried again at every pass.
WRITE_DENIED = "write denied"


class WriteDenied(Exception):
    """The database refused the write for lack of privilege (a grant lost in a migration)."""


def write_record(
    session: Session,
    target: Target,
    group_id: str,
    values: Mapping[str, str | None],
    last_written: Mapping[str, str] | None,
) -> int:
    """:func:`shelter_sql.write_target`, a missing privilege told apart from a refused value: that
    is no fault of the animal's, and the same for every animal until the grant is back."""
    try:
        return shelter_sql.write_target(session, target, group_id, values, last_written)
    except DBAPIError as exc:
        if source_error_kind(exc) != "privilege":
            raise
        raise WriteDenied(
            f"the database user may not update {target.table.name} ({short_error(exc)}): "
            "grant UPDATE on the breed-map and stamp columns (`labeler check` tries it); the "
            "answer is kept and written at the next pass"
        ) from exc


def _denied(
    session: Session, group_id: str, kept: Mapping[str, Any], reason: str, now: datetime
) -> str:
    """Keep what was decided, leave the animal pending (so every pass tries the write again,
    without spending an attempt) and say why."""
    animals.save_group(
        session,
        group_id,
        {
            **kept,
            "status": PENDING,
            "attempts": 0,
            "last_error": storable(reason, 1000),
            "updated_at": now,
        },
    )
    return WRITE_DENIED


@dataclass(frozen=True)
class GroupPolicy:
    thresholds: Thresholds
    disagreement: float = setting_default("group_disagreement")
    max_attempts: int = setting_default("max_attempts")


def is_undecided(target: Target, current: Mapping[str, str | None]) -> bool:
    return target.same(current, target.undecided)


def staff_changed(
    target: Target, current: Mapping[str, str | None], written: Mapping[str, str] | None
) -> bool:
    """A person changed the record: it no longer holds what labeler wrote last (whatever it
    holds now, the undecided values too: an undo), or, with nothing of labeler's on it, it no
    longer holds the undecided values."""
    if written:
        return not target.same(current, written)
    return not is_undecided(target, current)


def held_values(
    session: Session, target: Target, group_id: str, columns: Mapping[str, Any]
) -> dict[str, str | None]:
    """What the record holds now in ``columns``, as the database returns it: what labeler
    keeps as written, so that its own write is never taken for a staff change."""
    current = shelter_sql.read_targets(session, target, [group_id]).get(group_id) or {}
    return {name: current.get(name) for name in columns}


def record_staff(
    session: Session, group_id: str, current: Mapping[str, str | None], now: datetime
) -> str:
    """Staff decided in their own UI: remember what they chose, close the review item, and
    never write this animal's record again."""
    animals.save_group(
        session,
        group_id,
        {
            "status": REVIEWED,
            "staff_values": storable(json.dumps(dict(current), sort_keys=True), 1000),
            "staff_seen_at": now,
            "review_reason": STAFF_REASON,
            "updated_at": now,
        },
    )
    return REVIEWED


def settle_group(
    session: Session,
    group_id: str,
    target: Target | None,
    policy: GroupPolicy,
    *,
    model_version: str,
    run_id: int,
    now: datetime,
) -> str:
    """Decide one animal from its photos and write the result (or withdraw an earlier one)
    under the same-statement guard. Returns the animal's new status."""
    row = animals.get_group(session, group_id, lock=True)
    # Any reviewed_breed, even one labeler refused (empty, a typo), means staff took the animal
    # over: it waits for them, not for the model.
    if (
        row is None
        or row["status"] == REVIEWED
        or row["staff_values"]
        or row["reviewed_breed"] is not None
    ):
        return str(row["status"]) if row else GONE
    photos = animals.group_photos(session, group_id)
    live = [p for p in photos if p["status"] != GONE]
    base: dict[str, Any] = {"run_id": run_id, "updated_at": now, "decided_at": now}
    if not live:
        gone: dict[str, Any] = {
            **base,
            "status": GONE,
            "photos_used": 0,
            "review_reason": None,
            "last_error": NO_PHOTOS_REASON,
        }
        written = parse_values(row["written_values"])
        # The answer came from photos that no longer count (the animal was re-filed as a cat,
        # its photos deleted): take labeler's own value back off the record, if it is still
        # there; a record someone changed since stays as it is.
        if target is not None and written:
            withdrawal = target.withdrawal(parse_replaced(row["replaced_values"]), written)
            try:
                if not write_record(session, target, group_id, withdrawal, written):
                    return staff_or_gone(session, target, group_id, now)
            except WriteDenied as exc:
                return _denied(session, group_id, {"run_id": run_id}, str(exc), now)
            gone.update(written_values=None, written_at=now, replaced_values=None)
        animals.save_group(session, group_id, gone)
        return GONE
    context = next((p["context"] for p in live if p["context"]), None)
    scored = [
        s
        for p in live
        if p["status"] in (LABELLED, NEEDS_REVIEW)
        for s in [parse_scores(str(p["photo_id"]), p["scores"])]
        if s is not None
    ]
    if not scored:
        animals.save_group(
            session,
            group_id,
            {
                **base,
                "status": FAILED,
                "attempts": 0,
                "photos_used": 0,
                "context": context,
                "last_error": "no photo of this animal could be classified",
            },
        )
        return FAILED
    decision = decide_group(
        scored,
        policy.thresholds,
        policy.disagreement,
        target.lookup if target else None,
        audit=is_audit(group_id, model_version, policy.thresholds.audit_share),
    )
    assert decision.prediction is not None
    result: dict[str, Any] = {
        **base,
        **_top3(decision.prediction, target),
        "status": decision.status,
        "photos_used": len(scored),
        "photo_ids": storable(id_list(decision.photo_ids, 1000), 1000),
        "model_version": storable(model_version, 128),
        "review_reason": storable(decision.reason, 255),
        "audit": int(decision.audit),
        "context": context,
        "attempts": 0,
        "last_error": None,
    }
    if target is not None:
        current = shelter_sql.read_targets(session, target, [group_id]).get(group_id)
        written = parse_values(row["written_values"])
        if current is None:
            # Nobody can review an animal the shelter no longer has (deleted, or merged into
            # another: its photos then follow the one that stays).
            result.update(
                status=GONE, review_reason=None, last_error=no_record_reason(target, group_id)
            )
        elif staff_changed(target, current, written):
            return record_staff(session, group_id, current, now)
        elif decision.status == LABELLED and decision.values is not None:
            wrote = not target.same(current, decision.values)
            try:
                if wrote and not write_record(session, target, group_id, decision.values, written):
                    return staff_or_gone(session, target, group_id, now)
            except WriteDenied as exc:
                return _denied(session, group_id, result, str(exc), now)
            # Read back only after an UPDATE (the record is then locked until commit): what
            # the record holds when nothing was written is the value read above.
            held = (
                held_values(session, target, group_id, decision.values)
                if wrote
                else {c: current.get(c) for c in decision.values}
            )
            result.update(written_values=values_json(held), written_at=now)
            if is_undecided(target, current) and not target.same(current, decision.values):
                # labeler's first write on this record: what it replaces is what a withdrawal
                # gives back.
                result.update(replaced_values=values_json(target.replaced(current)))
        elif written:
            # The earlier answer no longer stands: give the record back what it held.
            withdrawal = target.withdrawal(parse_replaced(row["replaced_values"]), written)
            try:
                if not write_record(session, target, group_id, withdrawal, written):
                    return staff_or_gone(session, target, group_id, now)
            except WriteDenied as exc:
                return _denied(session, group_id, result, str(exc), now)
            result.update(written_values=None, written_at=now, replaced_values=None)
    animals.save_group(session, group_id, result)
    return str(result["status"])


def staff_or_gone(session: Session, target: Target, group_id: str, now: datetime) -> str:
    current = shelter_sql.read_targets(session, target, [group_id]).get(group_id)
    if current is None:
        return record_gone(session, target, group_id, now)
    return record_staff(session, group_id, current, now)


def record_gone(session: Session, target: Target, group_id: str, now: datetime) -> str:
    """The animal's record is not there any more: out of the review queue, with why. A
    reviewed breed staff set stays as they set it (there is nothing left to write it to)."""
    animals.save_group(
        session,
        group_id,
        {
            "status": GONE,
            "review_reason": None,
            "last_error": no_record_reason(target, group_id),
            "updated_at": now,
        },
    )
    return GONE


def _top3(prediction: Prediction, target: Target | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name_of = target.name_of if target is not None else None
    for i, suffix in enumerate(("", "_2", "_3")):
        label, p = prediction.candidates[i] if i < len(prediction.candidates) else (None, None)
        out[f"breed{suffix}"] = storable(label, 128)
        out[f"confidence{suffix}"] = p
        # The view cannot read the breed map: the names staff know are kept with the answer.
        name = name_of(label) if name_of is not None and label is not None else None
        out[f"breed_name{suffix}"] = storable(name, 255)
    return out


def fail_group(session: Session, group_id: str, reason: str, *, run_id: int, now: datetime) -> None:
    """A permanent error while writing this animal: count an attempt, keep the reason."""
    animals.save_group(
        session,
        group_id,
        {
            "status": FAILED,
            "attempts": group.c.attempts + 1,
            "last_error": storable(reason, 1000),
            "run_id": run_id,
            "updated_at": now,
        },
    )
