"""The write-back target: the shelter's own record of an animal (e.g. ASM3's ``animal`` table),
reflected at start-up, and the conversion of breed-map text to the target columns' types."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column, Connection, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from labeler.config.settings import Settings, setting_default
from labeler.core.domain import NOT_A_BREED, Prediction
from labeler.core.textsafe import id_list, storable
from labeler.decide.audit import is_audit
from labeler.decide.decision import Thresholds
from labeler.decide.grouping import decide_group, parse_scores
from labeler.decide.thresholds import GroupVerdict
from labeler.shelter.source import SourceError, reflect_table
from labeler.store import animals, discovery, evidence, shelter_sql, source_rows
from labeler.store.engine import short_error, source_error_kind
from labeler.store.keys import chunks
from labeler.store.schema import FAILED, GONE, LABELLED, NEEDS_REVIEW, PENDING, REVIEWED, group
from labeler.store.shelter_sql import (
    STAMP_INCREMENT,
    STAMP_NOW,
    STAMP_WORDS,
    TargetValueError,
)


@dataclass(frozen=True)
class Target:
    table: Table
    key_column: str
    columns: tuple[str, ...]  # the columns labeler sets: the breed map's columns
    undecided: Mapping[str, str]  # column -> text meaning "no breed yet"
    lookup: Callable[[str], Mapping[str, str] | None]  # our label -> target values (text)
    label_for: Callable[[Mapping[str, object]], str | None] | None = None
    # Our label -> the breed's name in the shelter's vocabulary, shown to staff in the queue.
    name_of: Callable[[str], str | None] | None = None
    # Columns set on every write besides the breed (column -> `now`, `increment` or a value).
    # They are never read back: what labeler compares is only the breed map's columns.
    stamps: Mapping[str, str] = field(default_factory=dict)
    lock_timeout_seconds: int = setting_default("target_lock_timeout_seconds")

    @property
    def key(self) -> Column[Any]:
        return self.table.c[self.key_column]

    def key_value(self, group_id: str) -> Any:
        return _convert(self.key, group_id)

    def typed(self, values: Mapping[str, str | None]) -> dict[str, Any]:
        """Text values -> the target columns' Python types, ready to bind."""
        return {name: _convert(self.table.c[name], value) for name, value in values.items()}

    def typed_stamps(self) -> dict[str, Any]:
        """The stamps with their literal values converted to the columns' types; `now` and
        `increment` stay as words, for the statement to turn into SQL."""
        return {
            name: value if value in STAMP_WORDS else _convert(self.table.c[name], value)
            for name, value in self.stamps.items()
        }

    def replaced(self, current: Mapping[str, str | None]) -> dict[str, str | None]:
        """What an undecided record holds in the map's columns the undecided values leave out
        (ASM3's Breed2ID and CrossBreed): kept at labeler's first write, for a withdrawal."""
        return {c: v for c, v in current.items() if c in self.columns and c not in self.undecided}

    def withdrawal(self, replaced: Mapping[str, str | None] | None) -> dict[str, str | None]:
        """What taking labeler's answer back writes: the undecided values, and what the record
        held before labeler's first write in the other map columns (when it was kept)."""
        kept = {c: v for c, v in (replaced or {}).items() if c in self.columns}
        return {**kept, **self.undecided}


# Stamp values that are not written as given: the database's current timestamp, and the
# column's value plus one (a version that must change on every save).


def _convert(column: Column[Any], value: str | None) -> Any:
    if value is None:
        return None  # a column that was NULL before labeler's first write
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    try:
        if python_type is int:
            return int(value)
        if python_type is float:
            return float(value)
        if python_type is Decimal:
            return Decimal(value)
    except (ValueError, InvalidOperation) as exc:
        raise TargetValueError(
            f"value {value!r} does not fit column {column.name} ({column.type})"
        ) from exc
    return value


def values_json(values: Mapping[str, str | None] | None) -> str | None:
    if values is None:
        return None
    return json.dumps(dict(values), sort_keys=True, ensure_ascii=False)


def parse_replaced(text: str | None) -> dict[str, str | None] | None:
    """``replaced_values`` as stored: like :func:`parse_values`, NULL columns kept as None."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): None if v is None else str(v) for k, v in data.items()}


def parse_values(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def same_values(current: Mapping[str, str | None], wanted: Mapping[str, str] | None) -> bool:
    """The target row holds exactly ``wanted`` (in the columns ``wanted`` names)."""
    if not wanted:
        return False
    return all(current.get(k) == v for k, v in wanted.items())


def reflect_target(conn: Connection, settings: Settings) -> Target | None:
    """The configured target with its breed map, checked against the database; None if unset."""
    if not settings.target_table or not settings.target_key_column or not settings.breed_map:
        return None
    from labeler.shelter.breedmap import BreedMapError, load_breed_map

    try:
        breed_map = load_breed_map(settings.breed_map)
    except (BreedMapError, OSError) as exc:
        raise SourceError(f"LABELER_BREED_MAP={settings.breed_map}: {exc}") from exc
    table = reflect_table(conn, settings.target_table, "target", "LABELER_TARGET_TABLE")
    have = ", ".join(sorted(table.c.keys()))
    if settings.target_key_column not in table.c:
        raise SourceError(
            f"LABELER_TARGET_KEY_COLUMN={settings.target_key_column!r}: no such column in "
            f"{settings.target_table!r} (it has {have})"
        )
    # the map's header says `BreedID`; PostgreSQL reports ASM3's columns as `breedid`.
    try:
        breed_map = breed_map.matched_to(table.c.keys())
    except BreedMapError:
        missing = [c for c in breed_map.columns if c.lower() not in {k.lower() for k in table.c}]
        raise SourceError(
            f"LABELER_BREED_MAP names column {(missing or breed_map.columns)[0]!r}, which "
            f"{settings.target_table!r} does not have (it has {have})"
        ) from None
    for column in settings.target_undecided:
        if column not in breed_map.columns:
            raise SourceError(
                f"LABELER_TARGET_UNDECIDED names column {column!r}, which is not one of the "
                f"breed map's columns ({', '.join(breed_map.columns)})"
            )
    stamps = _matched_stamps(table, settings, breed_map.columns)
    target = Target(
        table=table,
        key_column=settings.target_key_column,
        columns=tuple(breed_map.columns),
        undecided=dict(settings.target_undecided),
        lookup=breed_map.lookup,
        label_for=breed_map.label_for,
        name_of=breed_map.name_of,
        stamps=stamps,
        lock_timeout_seconds=settings.target_lock_timeout_seconds,
    )
    try:
        target.typed(target.undecided)
    except TargetValueError as exc:
        raise SourceError(f"LABELER_TARGET_UNDECIDED: {exc}") from exc
    try:
        target.typed_stamps()
    except TargetValueError as exc:
        raise SourceError(f"LABELER_TARGET_STAMP: {exc}") from exc
    return target


def _python_type(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _matched_stamps(table: Table, settings: Settings, mapped: tuple[str, ...]) -> dict[str, str]:
    """LABELER_TARGET_STAMP with its columns in the target's own spelling (matched ignoring
    case, as the breed map's), each checked against what its value needs."""
    names = list(table.c.keys())
    by_lower = {name.lower(): name for name in names}
    have = ", ".join(sorted(names))
    stamps: dict[str, str] = {}
    for wanted, value in settings.target_stamp.items():
        name = wanted if wanted in table.c else by_lower.get(wanted.lower())
        if name is None:
            raise SourceError(
                f"LABELER_TARGET_STAMP names column {wanted!r}, which {settings.target_table!r} "
                f"does not have (it has {have})"
            )
        if name.lower() in {c.lower() for c in mapped}:
            raise SourceError(
                f"LABELER_TARGET_STAMP names column {name!r}, which the breed map already sets: "
                "a stamp column must be one labeler writes but never compares"
            )
        if name.lower() == str(settings.target_key_column).lower():
            raise SourceError(
                f"LABELER_TARGET_STAMP names the key column {name!r} (LABELER_TARGET_KEY_COLUMN)"
            )
        kind = _python_type(table.c[name])
        if value == STAMP_NOW and kind is not None and not issubclass(kind, (datetime, date)):
            raise SourceError(
                f"LABELER_TARGET_STAMP: {name}=now needs a date/time column, but "
                f"{settings.target_table}.{name} is {table.c[name].type}"
            )
        if value == STAMP_INCREMENT and kind is not None and kind not in (int, Decimal):
            raise SourceError(
                f"LABELER_TARGET_STAMP: {name}=increment needs an integer column, but "
                f"{settings.target_table}.{name} is {table.c[name].type}"
            )
        stamps[name] = value
    return stamps


# --- deciding an animal and writing its breed -------------------------------------------------

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


class _WriteDenied(Exception):
    """The database refused the write for lack of privilege (a grant lost in a migration)."""


def _write(
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
        raise _WriteDenied(
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


def _undecided(target: Target, current: Mapping[str, str | None]) -> bool:
    return same_values(current, target.undecided)


def _record_staff(
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
            withdrawal = target.withdrawal(parse_replaced(row["replaced_values"]))
            try:
                _write(session, target, group_id, withdrawal, written)
            except _WriteDenied as exc:
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
        elif not _undecided(target, current) and not same_values(current, written):
            return _record_staff(session, group_id, current, now)
        elif decision.status == LABELLED and decision.values is not None:
            try:
                if not same_values(current, decision.values) and not _write(
                    session, target, group_id, decision.values, written
                ):
                    return _staff_or_gone(session, target, group_id, now)
            except _WriteDenied as exc:
                return _denied(session, group_id, result, str(exc), now)
            result.update(written_values=values_json(decision.values), written_at=now)
            if _undecided(target, current) and not same_values(current, decision.values):
                # labeler's first write on this record: what it replaces is what a withdrawal
                # gives back.
                result.update(replaced_values=values_json(target.replaced(current)))
        elif written:
            # The earlier answer no longer stands: give the record back what it held.
            withdrawal = target.withdrawal(parse_replaced(row["replaced_values"]))
            try:
                if not _write(session, target, group_id, withdrawal, written):
                    return _staff_or_gone(session, target, group_id, now)
            except _WriteDenied as exc:
                return _denied(session, group_id, result, str(exc), now)
            result.update(written_values=None, written_at=now, replaced_values=None)
    animals.save_group(session, group_id, result)
    return str(result["status"])


def _staff_or_gone(session: Session, target: Target, group_id: str, now: datetime) -> str:
    current = shelter_sql.read_targets(session, target, [group_id]).get(group_id)
    if current is None:
        return _record_gone(session, target, group_id, now)
    return _record_staff(session, group_id, current, now)


def _record_gone(session: Session, target: Target, group_id: str, now: datetime) -> str:
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
            if _undecided(target, values):
                continue
            if same_values(values, parse_values(r["written_values"])):
                continue
            # Another labeler may have written this animal since the read above: decide again
            # with the row locked and the record read afresh.
            gid = str(r["group_id"])
            fresh = animals.get_group(session, gid, lock=True)
            values = shelter_sql.read_targets(session, target, [gid]).get(gid)
            if fresh is None or fresh["staff_values"] or values is None:
                continue
            if _undecided(target, values) or same_values(
                values, parse_values(fresh["written_values"])
            ):
                continue
            _record_staff(session, gid, values, now)
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
    _record_gone(session, target, group_id, now)


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
        return _record_gone(session, target, group_id, now)
    if not (
        _undecided(target, current) or same_values(current, written) or same_values(current, values)
    ):
        return _record_staff(session, group_id, current, now)
    try:
        if not same_values(current, values) and not _write(
            session, target, group_id, values, written
        ):
            return _staff_or_gone(session, target, group_id, now)
    except _WriteDenied as exc:
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
            "written_values": values_json(values),
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
    labels = _model_labels()
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
    import difflib

    close = difflib.get_close_matches(breed.strip(), _model_labels(), n=1)
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


# --- `labeler check` --------------------------------------------------------------------------


class CheckFailed(Exception):
    """A shelter-fit setting would misbehave at night; the message says which and why."""


def check_source_rows(session: Session, source: Any) -> str:
    """Count the rows the filter selects; fail at 0, warn when letter case decides a match
    (MariaDB's default collation ignores case, PostgreSQL and SQLite do not), and warn about
    rows whose id or group value is too long for labeler's columns (discovery leaves them
    out with the same warning)."""
    exact, _ = source_rows.count_source_rows(session, source)
    found = source_rows.filter_value_counts(session, source)
    wanted = set(source.filter_values)
    differs = {v: n for v, n in found.items() if v not in wanted}
    case_note = ""
    if differs:
        spelled = ", ".join(f"{v!r} ({n} rows)" for v, n in sorted(differs.items()))
        case_note = (
            f"; the data spells the filter value as {spelled}: only a server that ignores "
            "letter case (MariaDB) matches it - write LABELER_SOURCE_FILTER_VALUES exactly as "
            "stored"
        )
    if exact == 0 and source.filter_values:
        raise CheckFailed(f"no source row matches the filter{case_note}")
    if exact == 0:
        return "the source has no rows yet (warning: nothing to label)"
    too_long = discovery.refused_ids(session, source).message(source)
    notes = case_note + (f"; {too_long}" if too_long else "")
    warning = f" (warning{notes})" if notes else ""
    return f"{exact} source rows match the filter{warning}"


def check_target(session: Session, source: Any, target: Target) -> str:
    """Every mapped value fits its column, and the write-back statement runs on one record
    (the caller rolls it back): catches short columns, wrong types, views that are not
    updatable and missing grants before the first night."""
    problems: list[str] = []
    labels = sorted(_model_labels())
    longest: Mapping[str, str] | None = None
    unmapped: list[str] = []
    for label in labels:
        values = target.lookup(label)
        if values is None:
            if label not in NOT_A_BREED:
                unmapped.append(label)
            continue
        try:
            target.typed(values)
        except TargetValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        for name, value in values.items():
            length = getattr(target.table.c[name].type, "length", None)
            if length is not None and len(value) > length:
                problems.append(
                    f"{label}: {value!r} is longer than {target.table.name}.{name} ({length})"
                )
        if longest is None or sum(map(len, values.values())) > sum(map(len, longest.values())):
            longest = values
    if problems:
        raise CheckFailed(
            f"{len(problems)} breed-map values do not fit the target: " + "; ".join(problems[:3])
        )
    note = ""
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (", ..." if len(unmapped) > 5 else "")
        note = f"; warning: {len(unmapped)} labels have no breed-map entry ({shown}): their "
        note += "animals always go to review"
    duplicate = shelter_sql.duplicate_target_key(session, target)
    if duplicate is not None:
        value, count = duplicate
        raise CheckFailed(
            f"{count} {target.table.name} records have {target.key_column} = {value!r}: "
            "LABELER_TARGET_KEY_COLUMN must name a unique key of LABELER_TARGET_TABLE (one "
            "animal's breed would land on several records)"
        )
    if (
        target.undecided
        and shelter_sql.undecided_record_count(session, target) == 0
        and animals.written_group_count(session) == 0
    ):
        shown = ", ".join(f"{c}={v}" for c, v in target.undecided.items())
        raise CheckFailed(
            f"no {target.table.name} record holds the undecided values {shown} "
            "(LABELER_TARGET_UNDECIDED): every animal would look decided by staff and never be "
            "labelled; use the value intake sets (for ASM3, the id of 'Mixed Breed')"
        )
    key = source_rows.some_group_key(session, source)
    if key is None or longest is None:
        return f"breed map fits the target columns (no animal to try the write-back on){note}"
    with shelter_sql.lock_timeout(session, target.lock_timeout_seconds):
        rows = shelter_sql.try_write_target(session, target, key, longest)
    if rows == 0:
        raise CheckFailed(
            f"no {target.table.name} record has {target.key_column} = {key!r}, an animal id "
            "from the source: LABELER_TARGET_KEY_COLUMN must match LABELER_SOURCE_GROUP_COLUMN"
        )
    return (
        f"write-back to {target.table.name} works "
        f"(tried on {target.key_column} = {key}, rolled back){note}"
    )


def _model_labels() -> list[str]:
    """The labels the model can give (the map is keyed by them)."""
    from labeler.shelter.breedmap import model_labels

    return model_labels()


def group_verdicts(
    session: Session, lookup: Callable[[str], Mapping[str, str] | None] | None
) -> list[GroupVerdict]:
    """What staff said about each decided animal: a reviewed breed on labeler's side, or the
    breed they set in their own UI, compared with the animal's answer through the breed map."""
    verdicts = []
    for row in evidence.group_decided_rows(session):
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
                agrees = same_values(
                    {k.lower(): v for k, v in staff.items()},
                    {k.lower(): v for k, v in wanted.items()} if wanted else None,
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
