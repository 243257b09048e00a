"""When a failed job runs again. Pure: no I/O; the worker only stores what this decides.

``attempts`` counts the runs a job has started. With ``max_retries=3`` a job runs at most four
times, waiting 1 s, 2 s and 4 s between runs by default (``base_delay * factor ** (attempt - 1)``,
capped at ``max_delay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["FailureKind", "RetryDecision", "RetryPolicy", "get_retry_decision", "has_runs_left"]


class FailureKind(StrEnum):
    """Why a run did not complete; only some kinds are worth another try."""

    TRANSIENT = "transient"  # the generator raised: out of memory, a flaky device, a bug that may pass
    INVALID = "invalid"  # the input can never work: retrying would fail the same way
    TIMED_OUT = "timed_out"  # ran past its timeout: another run would likely time out too
    CANCELLED = "cancelled"  # a user asked for it to stop
    WORKER_LOST = "worker_lost"  # the process running it died; the job goes back to its old place


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff between runs of a failed job."""

    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError(
                "RetryPolicy needs base_delay >= 0, factor >= 1 and max_delay >= 0, "
                f"got base_delay={self.base_delay}, factor={self.factor}, max_delay={self.max_delay}"
            )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th run failed."""
        return min(self.max_delay, self.base_delay * self.factor ** max(0, attempts - 1))


@dataclass(frozen=True, kw_only=True)
class RetryDecision:
    """Run the job again after ``delay`` seconds (0: at once, at its old place)."""

    delay: float


def has_runs_left(*, attempts: int, max_retries: int) -> bool:
    """Whether a job that has started ``attempts`` runs may start another."""
    return attempts <= max_retries


def get_retry_decision(
    *, kind: FailureKind, attempts: int, max_retries: int, policy: RetryPolicy
) -> RetryDecision | None:
    """Whether and when to run a job again after a run failed; None means it ends in error."""
    if kind in (FailureKind.INVALID, FailureKind.TIMED_OUT, FailureKind.CANCELLED):
        return None
    if not has_runs_left(attempts=attempts, max_retries=max_retries):
        return None
    if kind is FailureKind.WORKER_LOST:
        return RetryDecision(delay=0.0)
    return RetryDecision(delay=policy.delay(attempts))
