"""Jobs as flat rows, one per job, for ``ImageQueue.to_dataframe``. Pure: no I/O, no pandas.

A row holds plain values a table can hold in one column each: every generation parameter gets its
own column (``guidance_scale``), metadata is flattened into dotted columns (``metadata.sweep.g``),
and times stay epoch seconds here (the queue turns them into timezone-aware datetimes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .ordering import Priority
from .records import JobRecord

__all__ = ["FIXED_COLUMNS", "TIME_COLUMNS", "columns", "flatten", "job_row"]

TIME_COLUMNS = ("created_at", "started_at", "finished_at")
FIXED_COLUMNS = (
    "id",
    "status",
    "model",
    "prompt",
    "seed",
    "priority",
    "group",
    "attempts",
    "error",
    *TIME_COLUMNS,
    "waited_s",
    "run_s",
    "images",
)
_PARAMS, _METADATA = "params.", "metadata."


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``. Lists stay values, and an
    empty dict stays a value (its column would vanish otherwise)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_column(name: str) -> str:
    """A parameter's column: its own name, unless that is a fixed column or looks like a prefixed one."""
    clash = name in FIXED_COLUMNS or name.startswith((_PARAMS, _METADATA))
    return f"{_PARAMS}{name}" if clash else name


def job_row(record: JobRecord) -> dict[str, Any]:
    """One job as a flat row. ``waited_s``: from submit to the start of its last run; ``run_s``: that
    run's length, once it ended (None when it never started or has not ended). Times are taken by
    the submitting and the running process, whose clocks (or moments: a claim's time is read just
    before it may wait for the submit's commit) can disagree by a little: a wait is never below 0."""
    started, finished = record.started_at, record.finished_at
    row: dict[str, Any] = {
        "id": record.id,
        "status": record.status.value,
        "model": getattr(record, "model", None),  # jobs gain a model column in a later schema
        "prompt": record.prompt,
        "seed": record.seed,
        "priority": Priority(record.priority).label,
        "group": record.group,
        "attempts": record.attempts,
        "error": record.error,
        "created_at": record.created_at,
        "started_at": started,
        "finished_at": finished,
        "waited_s": None if started is None else max(0.0, started - record.created_at),
        "run_s": None if started is None or finished is None else finished - started,
        "images": list(record.images),
    }
    row.update((_param_column(name), value) for name, value in record.params.items())
    row.update((f"{_METADATA}{name}", value) for name, value in flatten(record.metadata).items())
    return row


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The fixed columns, then every parameter and metadata column in the order first seen."""
    seen = dict.fromkeys(FIXED_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)
