"""What this process knows of the database's jobs: the run order, each job's last seen status,
and the live ``Job`` handles. Turns stored records into events.

Records arrive twice (once from this process's own write, once when the database is read for other
processes' changes) and sometimes late; ``apply`` keeps only the newest revision of each job and
reports a change once. Position events are sent for the first ``POSITION_EVENT_WINDOW`` places, so a
100,000-job queue does not send 100,000 events each time its head moves; every job's ``position``
can still be read at any time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from ..core.ordering import OrderIndex, OrderKey
from ..core.records import EventKind, JobEvent, JobRecord
from ..core.states import JobStatus

if TYPE_CHECKING:
    from .job import Job

__all__ = ["POSITION_EVENT_WINDOW", "QueueView"]

POSITION_EVENT_WINDOW = 1000


class _Seen(NamedTuple):
    revision: int
    status: JobStatus
    progress: float


class QueueView:
    def __init__(self, revision: int, queued: Iterable[tuple[int, OrderKey]]) -> None:
        queued = list(queued)
        self.lock = threading.RLock()
        self.index = OrderIndex(queued)
        self.revision = revision  # the database revision this view has caught up with
        self._seen: dict[int, _Seen] = {job_id: _Seen(revision, JobStatus.QUEUED, 0.0) for job_id, _ in queued}
        self._handles: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()

    def position(self, job_id: int) -> int | None:
        with self.lock:
            return self.index.position(job_id)

    def handle(self, record: JobRecord, make: Callable[[JobRecord], Job]) -> Job:
        """The one live handle of a job (made if none is alive); ``apply`` the record first."""
        with self.lock:
            job = self._handles.get(record.id)
            if job is None:
                job = make(record)
                self._handles[record.id] = job
            elif job.record.revision < record.revision:
                job._update(record)
            return job

    def caught_up(self, written: list[JobRecord]) -> None:
        """Records that one write of this process returned: when that write is the very next
        revision, the view is current up to it without reading the rows back."""
        with self.lock:
            revisions = {r.revision for r in written}
            if len(revisions) == 1 and (revision := revisions.pop()) == self.revision + 1:
                self.revision = revision

    def caught_up_to(self, revision: int) -> None:
        """Every change up to ``revision`` has been applied (read from the database)."""
        with self.lock:
            self.revision = max(self.revision, revision)

    def is_stale(self, record: JobRecord) -> bool:
        """True when a newer version of the job was applied than ``record`` (a handle made from a
        record read just before a worker changed the job)."""
        seen = self._seen.get(record.id)
        return seen is not None and seen.revision > record.revision

    def apply(self, records: Iterable[JobRecord], *, emit: bool) -> list[JobEvent]:
        """Take in newer records; return the events they amount to (none unless ``emit``)."""
        with self.lock:
            before = self._window() if emit else {}
            changed: list[tuple[JobRecord, EventKind]] = []
            for record in records:
                seen = self._seen.get(record.id)
                if seen is not None and seen.revision >= record.revision:
                    continue
                self._seen[record.id] = _Seen(record.revision, record.status, record.progress)
                if record.status is JobStatus.QUEUED:
                    self.index.put(record.id, record.order_key)
                else:
                    self.index.discard(record.id)
                job = self._handles.get(record.id)
                if job is not None:
                    job._update(record)
                if not emit:
                    continue
                if seen is None or seen.status is not record.status:
                    changed.append((record, EventKind.STATUS))
                elif seen.progress != record.progress:
                    changed.append((record, EventKind.PROGRESS))
            events = [
                JobEvent(
                    kind=kind,
                    job_id=r.id,
                    status=r.status,
                    position=self.index.position(r.id),
                    progress=r.progress,
                    error=r.error,
                )
                for r, kind in changed
            ]
            if emit:
                reported = {r.id for r, _ in changed}
                after = self._window()
                for job_id, position in after.items():
                    if before.get(job_id, position) != position and job_id not in reported:
                        events.append(self._position_event(job_id, position))
            return events

    def _window(self) -> dict[int, int]:
        return {job_id: i + 1 for i, job_id in enumerate(self.index.head(POSITION_EVENT_WINDOW))}

    def _position_event(self, job_id: int, position: int) -> JobEvent:
        seen = self._seen[job_id]
        job = self._handles.get(job_id)
        return JobEvent(
            kind=EventKind.POSITION,
            job_id=job_id,
            status=seen.status,
            position=position,
            progress=seen.progress,
            error=job.error if job is not None else None,
        )
