"""The breed map: the model's labels in the shelter's own vocabulary.

A CSV file with the header ``label,<col>,<col>...`` and one row per label, e.g.::

    # comment lines start with '#'
    label,BreedID,BreedName
    golden_retriever,96,Golden Retriever

Each ``<col>`` is a column of the write-back target; the row gives the values written there for
that label. A label without a row is unmapped: its animals go to review, never to the record.
Labels that are not dog breeds (:data:`NOT_BREEDS`) may not be mapped at all.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from labeler.core.identifiers import is_identifier
from labeler.shelter.tables import breed_table_rows

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from labeler.config.settings import Settings

# Classes of the Stanford Dogs set that are wild canids, not breeds a shelter records.
NOT_BREEDS = frozenset({"dingo", "dhole", "African_hunting_dog"})
MAX_VALUE_LENGTH = 255


class BreedMapError(Exception):
    """The breed map cannot be used; the message names the file and the line."""


def model_labels() -> list[str]:
    """The 120 labels the shipped models predict, in output order."""
    source = resources.files("labeler") / "data" / "labels" / "stanford-dogs.txt"
    return [
        line.strip()
        for line in source.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def value_text(value: object) -> str:
    """A target value as the map writes it: ints without '.0', booleans as 0/1, text stripped.
    The one textual form values are compared in, whatever type the database returns."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class BreedMap:
    columns: tuple[str, ...]
    # label -> values, one per column, in file order (the first label of a value wins the reverse)
    entries: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<breed map>"

    def lookup(self, label: str) -> dict[str, str] | None:
        """The target values for our ``label``; ``None`` when it is unmapped."""
        values = self.entries.get(label)
        return None if values is None else dict(zip(self.columns, values, strict=True))

    def labels_for(self, values: Mapping[str, object]) -> tuple[str, ...]:
        """Every label mapped to this target value (first column, compared as text)."""
        if not self.columns:
            return ()
        key = _value_of(values, self.columns[0])
        if key is None:
            return ()
        wanted = value_text(key)
        return tuple(label for label, row in self.entries.items() if row[0] == wanted)

    def label_for(self, values: Mapping[str, object]) -> str | None:
        """Reverse: the label for a staff decision read from the target (``None`` if the value
        is not in the map). Several labels may share one breed (three poodle sizes, two corgis):
        the one listed first in the file is returned."""
        labels = self.labels_for(values)
        return labels[0] if labels else None

    @property
    def mapped_labels(self) -> frozenset[str]:
        return frozenset(self.entries)

    @property
    def name_column(self) -> str | None:
        """The column staff read as the breed's name: the first whose values are not all whole
        numbers (ASM3's ``BreedName`` after ``BreedID``); the first column when all are ids."""
        if not self.columns:
            return None
        for position, column in enumerate(self.columns):
            values = [row[position] for row in self.entries.values()]
            if values and not all(v.lstrip("-").isdigit() for v in values):
                return column
        return self.columns[0]

    def name_in(self, values: Mapping[str, object]) -> str | None:
        """The breed's name in a record's values (``name_column``, its case ignored, as
        PostgreSQL folds it); None when missing or blank."""
        column = self.name_column
        name = None if column is None else _value_of(values, column)
        text = "" if name is None else str(name).strip()
        return text or None

    def name_of(self, label: str) -> str | None:
        """The breed as the shelter names it (``name_column``); ``None`` when unmapped."""
        values = self.entries.get(label)
        column = self.name_column
        if values is None or column is None:
            return None
        return values[self.columns.index(column)]

    def matched_to(self, available: Iterable[str]) -> BreedMap:
        """This map with its columns renamed to the target's own spelling, matched ignoring case
        (PostgreSQL folds ASM3's ``BreedID`` to ``breedid``)."""
        by_lower: dict[str, list[str]] = {}
        for name in available:
            by_lower.setdefault(name.lower(), []).append(name)
        renamed = []
        for column in self.columns:
            if column in by_lower.get(column.lower(), []):
                renamed.append(column)
                continue
            candidates = by_lower.get(column.lower(), [])
            if len(candidates) != 1:
                problem = "no such column" if not candidates else "several columns match"
                raise BreedMapError(
                    f"{self.source}: map column {column!r}: {problem} in the target "
                    f"(it has {', '.join(sorted(n for ns in by_lower.values() for n in ns))})"
                )
            renamed.append(candidates[0])
        return BreedMap(tuple(renamed), self.entries, self.source)


def _value_of(values: Mapping[str, object], column: str) -> object | None:
    if column in values:
        return values[column]
    for key, value in values.items():
        if key.lower() == column.lower():
            return value
    return None


def load_breed_map(path: Path, labels: Sequence[str] | None = None) -> BreedMap:
    """Read and validate a breed map; ``labels`` are the model's labels (default: the 120)."""
    known = list(labels) if labels is not None else model_labels()
    known_set = set(known)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BreedMapError(f"breed map {path}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise BreedMapError(f"breed map {path}: not UTF-8 text ({exc.reason})") from exc

    def fail(line_no: int, message: str) -> BreedMapError:
        return BreedMapError(f"breed map {path}, line {line_no}: {message}")

    columns: tuple[str, ...] | None = None
    entries: dict[str, tuple[str, ...]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = [f.strip() for f in next(csv.reader([line], strict=True))]
        except csv.Error as exc:
            raise fail(line_no, f"not valid CSV ({exc})") from exc
        if columns is None:
            if not fields or fields[0] != "label":
                raise fail(line_no, "the header must start with 'label' (label,<col>,<col>...)")
            if len(fields) < 2:
                raise fail(line_no, "the header names no target column (label,<col>,...)")
            seen: set[str] = set()
            for name in fields[1:]:
                if not is_identifier(name):
                    raise fail(
                        line_no,
                        f"column {name!r} is not a plain SQL identifier (letters, digits and _; "
                        "not starting with a digit)",
                    )
                if name.lower() in seen:
                    raise fail(line_no, f"column {name!r} appears twice")
                seen.add(name.lower())
            columns = tuple(fields[1:])
            continue
        label, values = fields[0], tuple(fields[1:])
        if len(values) != len(columns):
            raise fail(
                line_no,
                f"{len(fields)} fields, the header has {len(columns) + 1} "
                "(quote values that contain a comma)",
            )
        if label not in known_set:
            close = difflib.get_close_matches(label, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise fail(line_no, f"unknown label {label!r} (not one of the model's labels){hint}")
        if label in NOT_BREEDS:
            raise fail(
                line_no,
                f"{label!r} is not a dog breed: it must stay unmapped, so it goes to review",
            )
        if label in entries:
            raise fail(line_no, f"label {label!r} is mapped twice")
        for column, value in zip(columns, values, strict=True):
            if not value:
                raise fail(line_no, f"empty {column} for {label!r} (leave the label out instead)")
            if len(value) > MAX_VALUE_LENGTH:
                raise fail(line_no, f"{column} for {label!r} is longer than {MAX_VALUE_LENGTH}")
        entries[label] = values
    if columns is None:
        raise BreedMapError(f"breed map {path}: no header line (label,<col>,<col>...)")
    return BreedMap(columns, MappingProxyType(entries), str(path))


def check_against_breed_table(
    breed_map: BreedMap,
    rows: Iterable[Sequence[object]],
    columns: Mapping[str, str],
) -> list[str]:
    """Problems between the map and the shelter's breed table; empty when they agree.

    ``columns`` pairs each map column with the breed-table column holding the same value, the
    first pair being the key (e.g. ``{"BreedID": "ID", "BreedName": "BreedName"}``); ``rows``
    are the breed table's values for those breed-table columns, in that order (as
    :func:`labeler.shelter.tables.breed_table_rows` reads them). Every mapped key must exist and
    every other mapped value must equal the table's (as text, case included: this is the text
    that lands on the record).
    """
    pairs = list(columns.items())
    if not pairs:
        raise BreedMapError("no map column is paired with a breed-table column")
    map_positions = []
    for map_column, _ in pairs:
        matches = [i for i, c in enumerate(breed_map.columns) if c.lower() == map_column.lower()]
        if not matches:
            raise BreedMapError(
                f"{breed_map.source}: has no column {map_column!r} "
                f"(it has {', '.join(breed_map.columns)})"
            )
        map_positions.append(matches[0])
    table: dict[str, tuple[str, ...]] = {}
    for row in rows:
        values = tuple("" if v is None else value_text(v) for v in row)
        table.setdefault(values[0], values)

    problems = []
    key_column, key_table_column = pairs[0]
    for label, values in breed_map.entries.items():
        key = values[map_positions[0]]
        found = table.get(key)
        if found is None:
            problems.append(
                f"{label}: {key_column}={key} is not in the breed table ({key_table_column})"
            )
            continue
        for (map_column, table_column), position, actual in zip(
            pairs[1:], map_positions[1:], found[1 : len(pairs)], strict=True
        ):
            if values[position] != actual:
                problems.append(
                    f"{label}: {map_column}={values[position]!r} but the breed table's "
                    f"{table_column} for {key} is {actual!r}"
                )
    return problems


def breed_table_problems(session: Session, settings: Settings, breed_map: BreedMap) -> list[str]:
    """For `labeler check`: the map against ``LABELER_BREED_TABLE`` (nothing to say when unset).

    Reads the breed table through :func:`labeler.shelter.tables.breed_table_rows`; database errors
    (no such table or column, no SELECT grant) propagate to the caller, which reports them.
    """
    if not settings.breed_table or not settings.breed_table_columns:
        return []
    table_columns = list(settings.breed_table_columns.values())
    rows = breed_table_rows(session, settings.breed_table, table_columns)
    return check_against_breed_table(breed_map, rows, settings.breed_table_columns)
