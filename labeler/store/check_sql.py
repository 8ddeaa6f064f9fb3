"""The database side of ``labeler check`` for a shelter fit: the source rows the filter
selects, and the target's breed map, key, undecided values and a trial write (rolled back by
the caller). Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from labeler.core.domain import NOT_A_BREED
from labeler.shelter.breedmap import model_labels
from labeler.shelter.target import Target, TargetValueError
from labeler.store import animals, discovery, shelter_sql, source_rows


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
    labels = sorted(model_labels())
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
