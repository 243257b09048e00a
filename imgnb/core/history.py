"""Which finished jobs a prune removes, and automatic retention. Pure: no I/O.

A queue database lives as long as a project; pruning keeps it from growing forever. Only finished
jobs (complete, error, cancelled) are ever removed: a waiting or running job is work still owed.
The age of a job is the time since it finished (``finished_at``), and "the last N" are the N most
recently finished, ties broken by id, the same order in every store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from ..errors import InvalidJob, QueueConfigError
from .states import FINAL_STATUSES, JobStatus
from .validation import invalid

__all__ = ["Retention", "prunable_statuses", "prune_rule", "pruned_ids"]


def _seconds(older_than: object) -> float | None:
    if older_than is None:
        return None
    allowed = "None, seconds >= 0 or a datetime.timedelta"
    if isinstance(older_than, timedelta):
        seconds = older_than.total_seconds()
    elif isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
        seconds = float(older_than)
    else:
        raise invalid("older_than", older_than, allowed)
    if not math.isfinite(seconds) or seconds < 0:
        raise invalid("older_than", older_than, allowed)
    return seconds


def prune_rule(older_than: object, keep_last: object) -> tuple[float | None, int | None]:
    """``older_than`` in seconds and ``keep_last`` checked, or ``InvalidJob`` naming the bad one."""
    seconds = _seconds(older_than)
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0):
        raise invalid("keep_last", keep_last, "None or an integer >= 0")
    return seconds, keep_last


def prunable_statuses(status: object) -> frozenset[JobStatus]:
    """The statuses a prune may remove: all finished ones, or the one finished status asked for."""
    if status is None:
        return FINAL_STATUSES
    allowed = "None (every finished job) or one of complete, error, cancelled"
    try:
        wanted = JobStatus(status)  # type: ignore[arg-type]
    except ValueError:
        raise invalid("status", status, allowed) from None
    if wanted not in FINAL_STATUSES:
        raise invalid("status", status, f"{allowed}: a {wanted.value} job is not finished and is never pruned")
    return frozenset({wanted})


def pruned_ids(
    finished: Iterable[tuple[int, float | None]], *, finished_before: float | None, keep_last: int | None
) -> list[int]:
    """The ids to remove among matching ``(id, finished_at)``: those finished before
    ``finished_before`` (any time when None) and not among the ``keep_last`` most recently
    finished. A job with no finish time is kept whenever a rule applies (it cannot be placed)."""
    entries = list(finished)
    if finished_before is None and not keep_last:
        return [job_id for job_id, _ in entries]
    timed = sorted(((t, job_id) for job_id, t in entries if t is not None), reverse=True)  # newest first
    candidates = timed[keep_last or 0 :]
    return [job_id for t, job_id in candidates if finished_before is None or t < finished_before]


@dataclass(frozen=True, kw_only=True)
class Retention:
    """Automatic pruning for ``ImageQueue(..., keep=Retention(...))``: on open, then every ``every``
    seconds, the queue removes finished jobs older than ``older_than`` (seconds or a timedelta)
    that are not among the ``keep_last`` most recently finished, and their image files too when
    ``delete_images``. Off unless asked for, so that nothing disappears unasked."""

    older_than: float | timedelta | None = None
    keep_last: int | None = None
    every: float = 3600.0
    delete_images: bool = False

    def __post_init__(self) -> None:
        try:
            seconds, _ = prune_rule(self.older_than, self.keep_last)
        except InvalidJob as exc:
            raise QueueConfigError(f"Retention: {exc}") from None
        if seconds is None and self.keep_last is None:
            raise QueueConfigError(
                "Retention needs older_than=, keep_last= or both: with neither it would keep nothing"
            )
        every = self.every
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every) or every <= 0:
            raise QueueConfigError(f"Retention: every={every!r} is invalid; allowed: seconds > 0")
        object.__setattr__(self, "older_than", seconds)  # one unit from here on

    @property
    def older_than_seconds(self) -> float | None:
        return self.older_than if isinstance(self.older_than, float) else None
