"""What staff decide reaches labeler: breeds set in the shelter's own screens (recorded as
staff decisions, never overwritten), reviewed breeds set on labeler's side (written, or refused
with the reason and kept in the queue), records restored after a delete, the breed names the
queue shows, and staff's verdicts on each animal for ``status``. Functions take a session and
never commit."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from labeler.core.domain import NOT_A_BREED
from labeler.core.textsafe import storable
from labeler.decide.thresholds import GroupVerdict
from labeler.shelter.breedmap import model_labels
from labeler.shelter.target import Target, parse_values, same_value_text, values_json
from labeler.store import animals, evidence, shelter_sql
from labeler.store.keys import chunks
from labeler.store.schema import GONE, NEEDS_REVIEW, REVIEWED
from labeler.store.writeback import (
    WRITE_DENIED,
    WriteDenied,
    held_values,
    is_undecided,
    record_gone,
    record_staff,
    staff_changed,
    staff_or_gone,
    write_record,
)


def refresh_breed_names(session: Session, target: Target) -> int:
    """Give every animal in review the breed names the map has now (the view cannot read the
    map); returns how many animals changed."""
    if target.name_of is None:
        return 0
    changed = 0
    for row in animals.names_in_review(session):
        wanted = {
            name: storable(target.name_of(row[label]), 255) if row[label] else None
            for label, name in animals.NAME_COLUMNS
        }
        if any(row[name] != value for name, value in wanted.items()):
            animals.save_group(session, str(row["group_id"]), wanted)
            changed += 1
    return changed


def sync_staff(session: Session, target: Target, now: datetime, limit: int = 500) -> int:
    """Record every breed staff set in their own UI on an animal no person decided yet."""
    found = 0
    after: str | None = None
    while True:
        rows = animals.open_groups(session, after, limit)
        if not rows:
            return found
        after = str(rows[-1]["group_id"])
        current = shelter_sql.read_targets(session, target, [str(r["group_id"]) for r in rows])
        for r in rows:
            values = current.get(str(r["group_id"]))
            if values is None:
                # Deleted (or merged away) in the shelter's software: an open animal would
                # otherwise wait in the review queue for a record nobody can open.
                _gone_if_still_open(session, target, str(r["group_id"]), now)
                continue
            if not staff_changed(target, values, parse_values(r["written_values"])):
                continue
            # Another labeler may have written this animal since the read above: decide again
            # with the row locked and the record read afresh.
            gid = str(r["group_id"])
            fresh = animals.get_group(session, gid, lock=True)
            values = shelter_sql.read_targets(session, target, [gid]).get(gid)
            if fresh is None or fresh["staff_values"] or values is None:
                continue
            if not staff_changed(target, values, parse_values(fresh["written_values"])):
                continue
            record_staff(session, gid, values, now)
            found += 1


def revive_returned(session: Session, target: Target, now: datetime) -> int:
    """Decide again the animals made ``gone`` because their record was missing, whose record
    is there again (restored in the shelter's software under the same key)."""
    revived = 0
    for chunk in chunks(animals.gone_with_photos(session)):
        back = shelter_sql.read_targets(session, target, list(chunk))
        if back:
            animals.mark_groups_pending(session, back, now)
            revived += len(back)
    # A reviewed breed waiting for a record that went missing is written once it is back.
    for chunk in chunks(animals.gone_reviewed(session)):
        for group_id in shelter_sql.read_targets(session, target, list(chunk)):
            animals.save_group(
                session,
                group_id,
                {"status": NEEDS_REVIEW, "attempts": 0, "last_error": None, "updated_at": now},
            )
            revived += 1
    return revived


def _gone_if_still_open(session: Session, target: Target, group_id: str, now: datetime) -> None:
    """Mark the animal gone if, with its row locked and its record read again, no person has
    decided it and the record is still missing."""
    fresh = animals.get_group(session, group_id, lock=True)
    if (
        fresh is None
        or fresh["status"] in (REVIEWED, GONE)
        or fresh["staff_values"]
        or shelter_sql.read_targets(session, target, [group_id]).get(group_id) is not None
    ):
        return
    record_gone(session, target, group_id, now)


def apply_review(
    session: Session, target: Target | None, row: Mapping[str, Any], now: datetime
) -> str:
    """Write a reviewed breed set on labeler's side to the animal's record (same guard)."""
    locked = animals.get_group(session, str(row["group_id"]), lock=True)
    if (
        locked is None
        or locked["status"] in (REVIEWED, GONE)
        or locked["staff_values"]
        or locked["reviewed_breed"] is None
    ):
        return "skipped"  # decided meanwhile (another labeler, or staff)
    row = locked
    group_id, breed = str(row["group_id"]), str(row["reviewed_breed"])
    if row["refused_breed"] is not None and row["refused_breed"] == row["reviewed_breed"]:
        return "refused"  # said already; staff's next value is tried at the next pass
    label = reviewed_label(breed)
    if label is None or not label.strip():
        return _refuse_review(session, row, _unknown_label_reason(breed), now)
    if target is None:
        animals.save_group(
            session, group_id, {"status": REVIEWED, "updated_at": now, **_NO_REFUSAL}
        )
        return REVIEWED
    values = target.lookup(label)
    if values is None:
        why = "not a dog breed" if label in NOT_A_BREED else "not in the breed map"
        return _refuse_review(
            session,
            row,
            f"reviewed breed {breed!r} is {why} (LABELER_BREED_MAP), so it cannot be written "
            "to the record: set reviewed_breed to a mapped label, or set the breed in the "
            "shelter's own screen",
            now,
        )
    written = parse_values(row["written_values"])
    current = shelter_sql.read_targets(session, target, [group_id]).get(group_id)
    if current is None:
        return record_gone(session, target, group_id, now)
    # A reviewed breed is a person's instruction to write: it goes onto a record that holds
    # labeler's write or the undecided values (an undo in the shelter's screen included).
    holds_ours = target.same(current, written)
    if not (is_undecided(target, current) or holds_ours or target.same(current, values)):
        return record_staff(session, group_id, current, now)
    wrote = not target.same(current, values)
    try:
        if wrote and not write_record(
            session, target, group_id, values, written if holds_ours else None
        ):
            return staff_or_gone(session, target, group_id, now)
    except WriteDenied as exc:
        # The reviewed breed stays as staff set it and is written at a later pass.
        animals.save_group(
            session,
            group_id,
            {"last_error": storable(str(exc), 1000), "updated_at": now},
        )
        return WRITE_DENIED
    animals.save_group(
        session,
        group_id,
        {
            "status": REVIEWED,
            "written_values": values_json(
                held_values(session, target, group_id, values)
                if wrote
                else {c: current.get(c) for c in values}
            ),
            "written_at": now,
            "last_error": None,
            "updated_at": now,
            **_NO_REFUSAL,
        },
    )
    return REVIEWED


_NO_REFUSAL: dict[str, Any] = {"refused_breed": None, "refusal": None}


def reviewed_label(breed: str) -> str | None:
    """The model's label staff meant: exact, or differing only in letter case and surrounding
    spaces (as status compares them); None when it is no label at all."""
    wanted = breed.strip()
    if not wanted:
        return None
    labels = model_labels()
    if wanted in labels:
        return wanted
    folded = [label for label in labels if label.lower() == wanted.lower()]
    return folded[0] if len(folded) == 1 else None


def _unknown_label_reason(breed: str) -> str:
    if not breed.strip():
        return (
            "reviewed breed is empty: set reviewed_breed to one of the model's labels (e.g. "
            "'beagle'), or back to NULL to leave the animal undecided"
        )
    close = difflib.get_close_matches(breed.strip(), model_labels(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"reviewed breed {breed!r} is not one of the model's labels{hint}"


def _refuse_review(session: Session, row: Mapping[str, Any], reason: str, now: datetime) -> str:
    """Staff's reviewed breed cannot be written: keep it as they wrote it, and keep the animal
    in the review queue (labeler_group_review_queue shows ``refusal``) until they change it."""
    animals.save_group(
        session,
        str(row["group_id"]),
        {
            "status": NEEDS_REVIEW,
            "refused_breed": row["reviewed_breed"],
            "refusal": storable(reason, 255),
            "last_error": storable(reason, 1000),
            "updated_at": now,
        },
    )
    return "refused"


def animal_verdict(
    row: Mapping[str, Any], lookup: Callable[[str], Mapping[str, str] | None] | None
) -> tuple[bool, bool, bool | None]:
    """(written without a human, an audit, staff agree: None when staff have not decided) for
    one decided animal: a reviewed breed on labeler's side, or the breed they set in their own
    UI, compared with the animal's answer through the breed map."""
    breed = str(row["breed"])
    agrees: bool | None = None
    refused = row["reviewed_breed"] is not None and row["reviewed_breed"] == row.get(
        "refused_breed"
    )
    if refused:
        agrees = None  # a value labeler could not use says nothing about the answer
    elif row["reviewed_breed"]:
        agrees = str(row["reviewed_breed"]).strip().lower() == breed.strip().lower()
    else:
        staff = parse_values(row["staff_values"])
        wanted = lookup(breed) if lookup else None
        if staff is not None:
            # Column names as the server reports them (PostgreSQL folds them to lower case)
            # against the breed map's spelling.
            held = {k.lower(): v for k, v in staff.items()}
            agrees = bool(wanted) and all(
                same_value_text(held.get(k.lower()), v) for k, v in (wanted or {}).items()
            )
    audit = bool(row["audit"])
    # Staff changing a record that still held labeler's own write corrected an auto-label:
    # it was written without a human, and staff's breed counts against that, not as a
    # doubtful animal (recording their decision replaced the animal's review_reason).
    corrected_write = (
        bool(row["staff_values"])
        and row.get("written_values") is not None
        and row["reviewed_breed"] is None
    )
    auto = not audit and (row["review_reason"] is None or corrected_write)
    return auto, audit, agrees


def group_verdicts(
    session: Session, lookup: Callable[[str], Mapping[str, str] | None] | None
) -> list[GroupVerdict]:
    """What staff said about each decided animal (for ``status``)."""
    verdicts = []
    for row in evidence.group_decided_rows(session):
        auto, audit, agrees = animal_verdict(row, lookup)
        verdicts.append(
            GroupVerdict(
                model_version=str(row["model_version"]),
                auto=auto,
                audit=audit,
                doubtful=not audit and not auto,
                staff_agrees=agrees,
            )
        )
    return verdicts


def animal_decided_rows(
    session: Session,
    lookup: Callable[[str], Mapping[str, str] | None] | None,
    model_version: str,
) -> list[dict[str, Any]]:
    """Every animal this model version decided, in the form ``calibrate`` weighs (the twin of
    :func:`labeler.store.evidence.decided_rows`): an animal's answer is what reaches the
    record, and the threshold is applied to its combined confidence."""
    out = []
    for row in evidence.group_decided_rows(session, model_version):
        auto, audit, agrees = animal_verdict(row, lookup)
        out.append(
            {
                "confidence": row["confidence"],
                "confidence_2": row["confidence_2"],
                "breed": row["breed"],
                "audit": audit,
                "auto": auto,
                "reviewed": agrees is not None,
                "agree": agrees,
            }
        )
    return out
