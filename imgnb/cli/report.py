"""What ``imgnb status`` shows, built from job records and rendered as text or JSON. Pure: no I/O.

Kept apart from the command so the rendering is tested without a database, and so that a later
view (a web page, a Prometheus endpoint) can reuse the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..core.describe import attempt_text, short
from ..core.ordering import Priority
from ..core.records import JobRecord
from ..core.states import JobStatus
from .text import device_label, host_of, timestamp

__all__ = ["WINDOWS", "RunningJob", "StatusReport", "WaitingJob", "build_report", "render_json", "render_text"]

WINDOWS = (1, 5, 15)
"""Minutes over which completed jobs are counted (the throughput of the last minutes)."""


@dataclass(frozen=True, kw_only=True)
class RunningJob:
    job_id: int
    worker: str | None  # the owner id of the queue running it
    host: str | None
    device: str | None
    progress: float  # as last persisted by its worker (about once a second)
    started_at: float | None
    attempts: int
    max_retries: int
    prompt: str


@dataclass(frozen=True, kw_only=True)
class WaitingJob:
    position: int
    job_id: int
    priority: str
    group: str | None
    prompt: str


@dataclass(frozen=True, kw_only=True)
class StatusReport:
    database: str
    time: float
    counts: Mapping[str, int]  # every status, zeros included
    running: Sequence[RunningJob]
    head: Sequence[WaitingJob]  # the first queued jobs, in run order
    completed: Mapping[int, int]  # minutes -> jobs completed in the last that many minutes


def build_report(
    *,
    database: str,
    now: float,
    counts: Mapping[str, int],
    running: Iterable[JobRecord],
    head: Iterable[JobRecord],
    finished_at: Iterable[float | None],
) -> StatusReport:
    """``head``: queued records in run order; ``finished_at``: the finish times of complete jobs."""
    ages = [now - t for t in finished_at if t is not None]
    return StatusReport(
        database=database,
        time=now,
        counts={s.value: counts.get(s.value, 0) for s in JobStatus},
        running=[
            RunningJob(
                job_id=r.id,
                worker=r.owner,
                host=host_of(r.owner),
                device=device_label(r.device, r.owner),
                progress=r.progress,
                started_at=r.started_at,
                attempts=r.attempts,
                max_retries=r.max_retries,
                prompt=r.prompt,
            )
            for r in running
        ],
        head=[
            WaitingJob(position=i, job_id=r.id, priority=Priority(r.priority).label, group=r.group, prompt=r.prompt)
            for i, r in enumerate(head, start=1)
        ],
        completed={m: sum(1 for age in ages if age <= m * 60) for m in WINDOWS},
    )


def duration(seconds: float) -> str:
    """12 -> '12s', 184 -> '3m04s', 3720 -> '1h02m'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]


def render_text(report: StatusReport) -> str:
    counts = ", ".join(f"{n:,} {status}" for status, n in report.counts.items())
    total = sum(report.counts.values())
    windows = " / ".join(str(m) for m in report.completed)
    done = " / ".join(f"{n:,}" for n in report.completed.values())
    last = WINDOWS[-1]
    lines = [
        f"imgnb status of {report.database} at {timestamp(report.time)}",
        f"jobs: {counts} ({total:,} in all)",
        f"completed in the last {windows} min: {done} ({report.completed[last] / last:.1f} jobs/min over {last} min)",
        "",
    ]
    if report.running:
        lines.append(f"running ({len(report.running)}):")
        rows = [
            [
                str(r.job_id),
                r.host or "-",
                r.device or "-",
                f"{r.progress:.0%}",
                duration(report.time - r.started_at) if r.started_at is not None else "-",
                attempt_text(r.attempts, r.max_retries),
                r.worker or "-",
                short(r.prompt, 50),
            ]
            for r in report.running
        ]
        lines += _table(["JOB", "HOST", "DEVICE", "PROGRESS", "FOR", "ATTEMPT", "WORKER", "PROMPT"], rows)
    else:
        lines.append("running: none")
    lines.append("")
    queued = report.counts[JobStatus.QUEUED.value]
    if report.head:
        lines.append(f"next in the queue ({len(report.head):,} of {queued:,} queued):")
        rows = [[str(w.position), str(w.job_id), w.priority, w.group or "-", short(w.prompt, 60)] for w in report.head]
        lines += _table(["POS", "JOB", "PRIORITY", "GROUP", "PROMPT"], rows)
    else:
        lines.append("queue: empty" if queued == 0 else f"queue: {queued:,} queued")
    return "\n".join(lines)


def render_json(report: StatusReport) -> dict[str, Any]:
    """The report as JSON-ready data; ``completed`` is keyed by minutes as strings (JSON keys)."""
    data = asdict(report)
    data["total"] = sum(report.counts.values())
    data["completed"] = {str(m): n for m, n in report.completed.items()}
    return data
