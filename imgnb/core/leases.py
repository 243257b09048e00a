"""Leases: how a dead worker's device lock and job are found again. Pure: no I/O.

A worker holds its device lock and its running job under a lease that it renews every
``heartbeat`` seconds. When a process dies, its lease runs out and any other worker on the same
database takes the lock and puts the job back in the queue. With the defaults that happens within
``lease + heartbeat`` (20 s), inside the 30 s the queue promises.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LeasePolicy", "deadline"]


@dataclass(frozen=True, kw_only=True)
class LeasePolicy:
    lease: float = 15.0  # seconds a claim stays valid without a heartbeat
    heartbeat: float = 5.0  # seconds between renewals; also how often stalled jobs are looked for
    poll: float = 0.25  # seconds between looks at the database for other processes' changes

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.lease:
            raise ValueError(
                f"LeasePolicy needs 0 < heartbeat < lease, got heartbeat={self.heartbeat}, lease={self.lease}"
            )
        if self.poll <= 0:
            raise ValueError(f"LeasePolicy needs poll > 0, got {self.poll}")


def deadline(started_at: float, timeout: float | None) -> float | None:
    """The time (epoch seconds) a run must end by, or None without a timeout."""
    return None if timeout is None else started_at + timeout
