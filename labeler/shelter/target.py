"""The write-back target: the shelter's own record of an animal (e.g. ASM3's ``animal`` table),
reflected at start-up with its breed map and stamps, the conversion of breed-map text to the
target columns' types, and the JSON form of values labeler wrote, staff set or a write
replaced. No SQL runs here but the reflection."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column, Connection, Table

from labeler.config.settings import Settings, setting_default
from labeler.shelter.breedmap import BreedMapError, load_breed_map
from labeler.shelter.source import SourceError, reflect_table

# Stamp values that are not written as given: the database's current timestamp, and the
# column's value plus one (a version that must change on every save).
STAMP_NOW, STAMP_INCREMENT = "now", "increment"
STAMP_WORDS = frozenset({STAMP_NOW, STAMP_INCREMENT})


class TargetValueError(ValueError):
    """A breed-map or undecided value does not fit the target column's type."""


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

    def same(self, current: Mapping[str, str | None], wanted: Mapping[str, str] | None) -> bool:
        """The record holds ``wanted`` in the columns ``wanted`` names, compared as the columns'
        types: ``0019`` in the map is the ``19`` an integer column holds."""
        if not wanted:
            return False
        for name, value in wanted.items():
            held = current.get(name)
            if held is None or held == value:
                if held != value:
                    return False
                continue
            try:
                if self.typed({name: held}) != self.typed({name: value}):
                    return False
            except TargetValueError:
                return False
        return True

    def replaced(self, current: Mapping[str, str | None]) -> dict[str, str | None]:
        """What an undecided record holds in the map's columns the undecided values leave out
        (ASM3's Breed2ID and CrossBreed): kept at labeler's first write, for a withdrawal."""
        return {c: v for c, v in current.items() if c in self.columns and c not in self.undecided}

    def withdrawal(
        self,
        replaced: Mapping[str, str | None] | None,
        written: Mapping[str, str | None] | None = None,
    ) -> dict[str, str | None]:
        """What taking labeler's answer back writes: the undecided values, and in the other map
        columns what the record held before labeler's first write. Where that was not kept (a
        write from before it was), a column that held the same value as an undecided column in
        labeler's write (ASM3's Breed2ID = BreedID) goes back with it."""
        if replaced is not None:
            kept = {c: v for c, v in replaced.items() if c in self.columns}
            return {**kept, **self.undecided}
        mirrored: dict[str, str | None] = {}
        for column, value in (written or {}).items():
            if column in self.undecided or column not in self.columns:
                continue
            twin = next((u for u in self.undecided if (written or {}).get(u) == value), None)
            if twin is not None:
                mirrored[column] = self.undecided[twin]
        return {**mirrored, **self.undecided}


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
    data = _json_object(text)
    if data is None:
        return None
    return {str(k): None if v is None else str(v) for k, v in data.items()}


def parse_values(text: str | None) -> dict[str, str] | None:
    """``written_values`` or ``staff_values`` as stored; None for none or an unreadable one.
    A column stored as null is left out (it is compared by nothing), never read as "None"."""
    data = _json_object(text)
    return None if data is None else {str(k): str(v) for k, v in data.items() if v is not None}


def same_value_text(held: str | None, wanted: str | None) -> bool:
    """Two values as text, equal as text or as numbers (``19`` and ``0019``): for comparisons
    where the target column's type is not at hand."""
    if held == wanted:
        return True
    if held is None or wanted is None:
        return False
    try:
        return Decimal(held) == Decimal(wanted)
    except (ArithmeticError, ValueError):
        return False


def _json_object(text: str | None) -> dict[Any, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def reflect_target(conn: Connection, settings: Settings) -> Target | None:
    """The configured target with its breed map, checked against the database; None if unset."""
    if not settings.target_table or not settings.target_key_column or not settings.breed_map:
        return None
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
