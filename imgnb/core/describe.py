"""How a job reads in one line of text. Pure: no I/O.

``Job.__repr__``, the notebook's ``text/plain`` and the widgets all use these, so a job reads the
same everywhere. A finished job's line has no clock or progress in it, so it is identical each time
it is drawn (nbval compares it).
"""

from __future__ import annotations

from .records import JobRecord
from .states import JobStatus

__all__ = ["attempt_text", "job_text", "ordinal", "queue_place", "short"]


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 21 -> '21st', 1001 -> '1,001st'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def queue_place(position: int) -> str:
    return f"{ordinal(position)} in queue"


def attempt_text(attempt: int, max_retries: int) -> str:
    return f"attempt {attempt} of {max_retries + 1}"


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_text(record: JobRecord, *, position: int | None, step: tuple[int, int] | None) -> str:
    """A one-line summary: its place while queued, its step while running, its error if it failed."""
    detail = ""
    if record.status is JobStatus.QUEUED and position is not None:
        detail = f", {queue_place(position)}"
    elif record.status is JobStatus.PROCESSING:
        detail = f", step {step[0]}/{step[1]}" if step else f", {record.progress:.0%}"
    elif record.status is JobStatus.PENDING:
        detail = f", {attempt_text(record.attempts, record.max_retries)} failed"
    error = f"; {short(record.error, 80)}" if record.error and record.status is JobStatus.ERROR else ""
    return f"<Job {record.id} {record.status.value}{detail}: {short(record.prompt, 40)!r}{error}>"
