"""The worker's log lines: plain text for people, one JSON object per line for log collectors.
Pure: no I/O.

One line at start-up (what runs: database, devices, pipelines, versions), one per state change of
a job this worker runs, and one each when it starts and finishes stopping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..core.describe import attempt_text
from ..core.records import JobRecord
from ..core.states import JobStatus
from .text import device_label, host_of, one_line, timestamp

__all__ = ["StartInfo", "job_line", "start_line", "stop_line"]

_SHOWS_ERROR = frozenset({JobStatus.ERROR, JobStatus.PENDING})  # a failure ended the run


@dataclass(frozen=True, kw_only=True)
class StartInfo:
    """What a worker runs, as its start-up line reports it."""

    database: str
    devices: Sequence[str]
    pipelines: Mapping[str, Mapping[str, str]]  # device -> {"class": ..., "model": ...}; empty without --pipeline
    factory: str  # --pipeline's MODULE:FACTORY, or ""
    models: Mapping[str, str]  # --model NAME -> MODULE:FACTORY, loaded on demand
    max_loaded: int
    affinity: int
    batch_size: int
    worker: str  # the queue's owner id, as ``imgnb status`` shows it
    images_dir: str
    versions: Mapping[str, str]


def _render(t: float, event: str, fields: dict[str, Any], text: str, as_json: bool) -> str:
    if as_json:
        return json.dumps({"time": timestamp(t), "event": event, **fields}, default=str)
    return f"{timestamp(t)} {text}"


def start_line(t: float, info: StartInfo, *, as_json: bool) -> str:
    pipelines = ", ".join(
        f"{device}={p['class']}" + (f" ({p['model']})" if p["model"] else "") for device, p in info.pipelines.items()
    )
    versions = ", ".join(f"{name} {version}" for name, version in info.versions.items())
    runs = [f"pipelines {pipelines} from {info.factory}"] if info.pipelines else []
    if info.models:
        named = ", ".join(f"{name} ({factory})" for name, factory in info.models.items())
        runs.append(f"models {named} loaded on demand, at most {info.max_loaded} per device")
    text = (
        f"imgnb worker {info.worker} started: database {info.database}; devices {', '.join(info.devices)}; "
        f"{'; '.join(runs)}; affinity {info.affinity}; batch size {info.batch_size}; images in {info.images_dir}; "
        f"{versions}"
    )
    fields = asdict(info)
    fields["models"] = dict(info.models)
    fields["devices"] = list(info.devices)
    fields["pipelines"] = {d: dict(p) for d, p in info.pipelines.items()}
    fields["versions"] = dict(info.versions)
    return _render(t, "start", fields, text, as_json)


def job_line(t: float, *, job_id: int, status: JobStatus, error: str | None, record: JobRecord, as_json: bool) -> str:
    """One state change of a job: ``status`` and ``error`` are the event's; ``record`` says where it
    ran (it may be a moment newer than the event, but its owner and device are those of this run)."""
    device = device_label(record.device, record.owner)
    error = one_line(error) if error and status in _SHOWS_ERROR else None
    fields = {
        "job_id": job_id,
        "status": status.value,
        "device": device,
        "worker": record.owner,
        "host": host_of(record.owner),
        "attempts": record.attempts,
        "error": error,
    }
    text = f"job {job_id} {status.value} on {device} by {record.owner}"
    if status is JobStatus.PROCESSING:
        text += f", {attempt_text(record.attempts, record.max_retries)}"
    if error:
        text += f": {error}"
    return _render(t, "job", fields, text, as_json)


def stop_line(t: float, *, signal_name: str, done: bool, as_json: bool) -> str:
    if done:
        return _render(t, "stopped", {"signal": signal_name}, "imgnb worker stopped", as_json)
    text = f"imgnb worker stopping ({signal_name}): running jobs go back to their place; a second signal exits at once"
    return _render(t, "stopping", {"signal": signal_name}, text, as_json)
