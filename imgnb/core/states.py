"""Job statuses and the transitions allowed between them. Pure: no I/O.

Life of a job::

    submit ──► queued ──► processing ──► complete
                 ▲  │          │  │
                 │  │          │  ├──► error      (failure with no retries left, timeout, bad input)
                 │  ▼          │  └──► cancelled
    pending ◄────┼──── (retry) │
       │         └──────────── (worker died: re-queued at its old place)
       └──► cancelled

``pending`` is a stored job that is not yet eligible to run: it waits out a retry delay
(``run_at``) and becomes ``queued`` again when that time has come. It has no queue position.
A finished job (``error`` or ``cancelled``) may be put back in the queue by hand (``Job.retry()``).
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import IllegalTransition

__all__ = ["FINAL_STATUSES", "JobStatus", "check_transition"]


class JobStatus(StrEnum):
    """Where a job stands. Values are the strings stored in the database."""

    PENDING = "pending"  # waiting out a retry delay; becomes queued at its run_at time
    QUEUED = "queued"  # eligible and waiting for a device, ordered by priority then submit order
    PROCESSING = "processing"  # claimed by a worker that holds the device lock
    COMPLETE = "complete"  # finished; its images are stored
    ERROR = "error"  # failed for good (retries spent, timeout, invalid input, worker lost)
    CANCELLED = "cancelled"  # cancelled by a user before it finished

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True when nothing more will happen to the job unless a user retries it."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.CANCELLED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.CANCELLED}),
    JobStatus.PROCESSING: frozenset(
        {
            JobStatus.COMPLETE,
            JobStatus.ERROR,
            JobStatus.CANCELLED,
            JobStatus.PENDING,  # transient failure: retry after a delay
            JobStatus.QUEUED,  # its worker died: back to its old place
        }
    ),
    JobStatus.COMPLETE: frozenset(),
    JobStatus.ERROR: frozenset({JobStatus.QUEUED}),  # retried by hand
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),  # retried by hand
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise ``IllegalTransition`` unless a job may go from ``current`` to ``target``."""
    if target not in _ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[current])) or "nothing (it is final)"
        raise IllegalTransition(
            f"a job cannot go from {current.value!r} to {target.value!r}; from {current.value!r} it may go to {allowed}"
        )
