"""``BulkEvents``: the status events of one bulk edit, made only when read. Pure: no I/O.

A bulk cancel or retry of 100,000 jobs is 100,000 ``STATUS`` events. Building them took a third of
a second, and a live board then looked at each one to learn what one look tells: these jobs are now
in this status. So the events of a bulk edit travel as one ``BulkEvents``: a sequence that makes each
``JobEvent`` when it is read (a subscriber that takes events one by one gets every one, as for any
change), and that a subscriber of whole batches reads at once (``job_ids``, ``status``, ``has``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import overload

from .records import EventKind, JobEvent
from .states import JobStatus

__all__ = ["BulkEvents"]


class BulkEvents(Sequence[JobEvent]):
    """One ``STATUS`` event per job of ``job_ids``, each job now in ``status`` with ``error``.

    ``progress`` holds the jobs whose progress is not 0.0. ``positions``, for jobs put in the queue,
    gives each one's place as of the change (it is called once, when a position is first read)."""

    def __init__(
        self,
        job_ids: Sequence[int],
        *,
        status: JobStatus,
        error: str | None,
        progress: Mapping[int, float],
        positions: Callable[[], Mapping[int, int]] | None = None,
    ) -> None:
        self.job_ids = job_ids
        self.status = status
        self.error = error
        self._progress = progress
        self._positions = positions

    @cached_property
    def _position_of(self) -> Mapping[int, int]:
        return {} if self._positions is None else self._positions()

    @cached_property
    def _members(self) -> frozenset[int]:
        return frozenset(self.job_ids)

    def has(self, job_id: int) -> bool:
        """True when ``job_id`` is one of these jobs."""
        return job_id in self._members

    def id_set(self) -> frozenset[int]:
        """The jobs, as a set (made once)."""
        return self._members

    def __len__(self) -> int:
        return len(self.job_ids)

    @overload
    def __getitem__(self, index: int) -> JobEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobEvent]: ...

    def __getitem__(self, index: int | slice) -> JobEvent | list[JobEvent]:
        if isinstance(index, slice):
            return [self._event(job_id) for job_id in self.job_ids[index]]
        return self._event(self.job_ids[index])

    def __iter__(self) -> Iterator[JobEvent]:
        return map(self._event, self.job_ids)

    def _event(self, job_id: int) -> JobEvent:
        return JobEvent(
            kind=EventKind.STATUS,
            job_id=job_id,
            status=self.status,
            position=self._position_of.get(job_id),
            progress=self._progress.get(job_id, 0.0),
            error=self.error,
        )

    def __repr__(self) -> str:
        return f"BulkEvents({len(self.job_ids)} jobs now {self.status.value})"
