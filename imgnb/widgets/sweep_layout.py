"""Where each job of a sweep goes in a grid: the axis values read from the jobs, their order, and the
cells. Pure: no I/O, no widgets.

An axis is a field of the jobs: ``prompt``, ``seed``, ``model``, a generation parameter or a metadata
key (``"a.b"`` reaches into nested values). Values are ordered the way a person reads a sweep:
numbers numerically, anything else in the order first seen (the order the jobs were submitted), and
jobs without the field last, under "(not set)". 7 and 7.0 are one value. The layout takes one job at
a time, so jobs submitted later join a grid already shown.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..core.records import JobRecord
from ..core.validation import invalid

__all__ = [
    "UNSET",
    "Axis",
    "AxisValue",
    "CellKey",
    "SweepLayout",
    "check_axis",
    "field_value",
    "fields_of",
    "value_key",
]

UNSET_LABEL = "(not set)"
_ALWAYS = ("prompt", "seed")  # every job has these


class _Unset(Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET
"""What ``field_value`` returns for a job that lacks the field."""

CellKey = tuple[Hashable, Hashable]  # (row value key, column value key)


def _dotted(source: Mapping[str, Any], path: list[str]) -> object:
    value: object = source
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return UNSET
        value = value[part]
    return value


def field_value(record: JobRecord, name: str) -> object:
    """The value of field ``name`` for this job, or ``UNSET``.

    ``model`` is the record's own ``model`` when it has one (a queue with several models may store
    it), else a parameter or metadata key of that name, like any other field."""
    if name == "prompt":
        return record.prompt
    if name == "seed":
        return record.seed
    if name == "model" and (model := getattr(record, "model", None)) is not None:
        return model
    for source in (record.params, record.metadata):
        if name in source:
            return source[name]
    if "." in name:
        for source in (record.params, record.metadata):
            found = _dotted(source, name.split("."))
            if found is not UNSET:
                return found
    return UNSET


def _paths(source: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in source.items():
        yield prefix + key
        if isinstance(value, Mapping):
            yield from _paths(value, f"{prefix}{key}.")


def fields_of(record: JobRecord) -> set[str]:
    """Every field name ``field_value`` finds on this job."""
    found = {*_ALWAYS, *_paths(record.params), *_paths(record.metadata)}
    if getattr(record, "model", None) is not None:
        found.add("model")
    return found


def check_axis(role: str, name: object, records: Sequence[JobRecord]) -> str:
    """``name`` if some job has that field (or there are no jobs yet to tell); else ``InvalidJob``
    naming the field and the fields the jobs have."""
    if not isinstance(name, str) or not name:
        raise invalid(role, name, "a field name: prompt, seed, model, a parameter or a metadata key")
    if not records or any(field_value(r, name) is not UNSET for r in records):
        return name
    others = set().union(*(fields_of(r) for r in records)) - set(_ALWAYS)
    known = [*_ALWAYS, *sorted(others)]
    raise invalid(role, name, f"a field of these jobs: {', '.join(known)}")


def value_key(value: object) -> Hashable:
    """What makes two values the same column: equal numbers (7 == 7.0), equal strings, equal JSON."""
    if value is UNSET:
        return ("unset",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("str", value)
    return ("json", json.dumps(value, sort_keys=True, default=repr))


def _label(value: object) -> str:
    if value is UNSET:
        return UNSET_LABEL
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True, default=repr)


@dataclass(frozen=True, kw_only=True)
class AxisValue:
    """One row or column: the first value seen, its text, and where it sorts."""

    key: Hashable
    value: object
    label: str
    rank: tuple[int, float, int]


class Axis:
    """The values one field takes over the jobs placed so far, in reading order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._values: dict[Hashable, AxisValue] = {}
        self._ordered: list[AxisValue] | None = []

    def add(self, value: object) -> AxisValue:
        """The axis value for ``value``, made if new."""
        key = value_key(value)
        known = self._values.get(key)
        if known is not None:
            return known
        if value is UNSET:
            rank = (2, 0.0, 0)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rank = (0, value, 0)
        else:
            rank = (1, 0.0, len(self._values))  # first seen first
        made = self._values[key] = AxisValue(key=key, value=value, label=_label(value), rank=rank)
        self._ordered = None
        return made

    @property
    def values(self) -> list[AxisValue]:
        if self._ordered is None:
            self._ordered = sorted(self._values.values(), key=lambda v: v.rank)
        return self._ordered

    def __getitem__(self, key: Hashable) -> AxisValue:
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)


class SweepLayout:
    """Jobs placed in cells by their (row, column) values. Job ids keep submit order in a cell."""

    def __init__(self, rows: str, cols: str) -> None:
        self.rows = Axis(rows)
        self.cols = Axis(cols)
        self._cells: dict[CellKey, list[int]] = {}
        self._where: dict[int, CellKey] = {}
        self.shape_changes = 0  # counts new rows, columns and cells: the grid must be laid out again

    def place(self, record: JobRecord) -> list[CellKey]:
        """Put a job in its cell (again, if its values changed); returns the cells whose jobs changed."""
        row = self.rows.add(field_value(record, self.rows.name))
        col = self.cols.add(field_value(record, self.cols.name))
        cell = (row.key, col.key)
        old = self._where.get(record.id)
        if old == cell:
            return []
        self._where[record.id] = cell
        changed = [cell]
        if old is not None:
            self._cells[old].remove(record.id)
            changed.append(old)
        ids = self._cells.get(cell)
        if ids is None:  # also every new row or column value: it has no cell yet
            ids = self._cells[cell] = []
            self.shape_changes += 1
        ids.append(record.id)
        ids.sort()
        return changed

    def place_all(self, records: Iterable[JobRecord]) -> None:
        for record in sorted(records, key=lambda r: r.id):
            self.place(record)

    def cell(self, key: CellKey) -> list[int]:
        """The ids of the jobs in a cell (empty when none has those values)."""
        return list(self._cells.get(key, ()))

    def cell_of(self, job_id: int) -> CellKey | None:
        return self._where.get(job_id)

    def __contains__(self, key: object) -> bool:
        return key in self._cells

    def __len__(self) -> int:
        """How many cells hold jobs (at most rows x columns)."""
        return len(self._cells)
