"""``QueueMirror``: what this process knows of the database's jobs. It keeps the run order of the
queued jobs (for positions), each job's last seen revision and status, and the live state behind
the ``Job`` handles, and turns stored records into events.

Records arrive twice (once from this process's own write, once when the database is read for other
processes' changes) and sometimes late; ``apply`` keeps only the newest revision of each job and
reports a change once. Position events are sent for the first ``POSITION_EVENT_WINDOW`` places, so a
100,000-job queue does not send 100,000 events each time its head moves; every job's ``position``
can still be read at any time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from ..core.bulk_events import BulkEvents
from ..core.ordering import OrderIndex, OrderKey
from ..core.records import BulkChange, EventKind, JobEvent, JobRecord, RemovedJob
from ..core.revisions import WORTH_SKIPPING, Run, runs_of
from ..core.states import JobStatus
from .gc_hold import no_collections
from .job import JobState

__all__ = ["POSITION_EVENT_WINDOW", "QueueMirror"]

POSITION_EVENT_WINDOW = 1000


class _Seen(NamedTuple):
    revision: int
    status: JobStatus
    progress: float


class QueueMirror:
    def __init__(self, revision: int, queued: Iterable[tuple[int, OrderKey]]) -> None:
        queued = list(queued)
        self._lock = threading.RLock()
        self._index = OrderIndex(queued)
        self.revision = revision  # the database revision this mirror has caught up with
        self._own: dict[int, int] = {}  # revision -> rows of this process's writes after it, applied (past a gap)
        self._seen: dict[int, _Seen] = {job_id: _Seen(revision, JobStatus.QUEUED, 0.0) for job_id, _ in queued}
        # the live states, weakly: plain references (a WeakValueDictionary costs microseconds an
        # entry, which 100,000 handles of a bulk retry notice), the dead ones swept as it grows
        self._states: dict[int, weakref.ref[JobState]] = {}
        self._swept_at = 0  # how many were alive at the last sweep

    # -- reading (any thread) -------------------------------------------------------------------

    def position(self, job_id: int) -> int | None:
        with self._lock:
            return self._index.position(job_id)

    def head(self, n: int) -> list[int]:
        """The ids of the first ``n`` queued jobs in run order."""
        with self._lock:
            return self._index.head(n)

    def queued_count(self) -> int:
        with self._lock:
            return len(self._index)

    def record_of(self, job_id: int) -> JobRecord | None:
        """The newest record of a job that has a live handle and was read, else None."""
        state = self._live(job_id)
        return None if state is None else state.known

    def state(self, record: JobRecord) -> JobState:
        """The one live state of a job (made if none is alive), brought up to ``record``."""
        with self._lock:
            state = self._live(record.id)
            if state is None:
                state = JobState(record)
                self._keep([state])
            elif state.revision < record.revision or (state.known is None and state.revision == record.revision):
                state.record = record
            return state

    def bulk_states(self, change: BulkChange, read: Callable[[JobState], None]) -> list[JobState]:
        """The live states of a bulk change's jobs, in its order: those alive, and new unread ones
        (unread: see ``JobState``) for the others, as the mirror last saw each job."""
        with self._lock, no_collections():
            live = self._states.get
            seen_of = self._seen.get
            states: list[JobState] = []
            made = []
            for job_id in change.ids:
                ref = live(job_id)
                state = None if ref is None else ref()
                if state is None:
                    seen = seen_of(job_id)
                    status, revision = (
                        (change.status, change.revision) if seen is None else (seen.status, seen.revision)
                    )
                    state = JobState(None, job_id=job_id, status=status, revision=revision, read=read)
                    made.append(state)
                states.append(state)
            self._keep(made)
            return states

    def _live(self, job_id: int) -> JobState | None:
        ref = self._states.get(job_id)
        return None if ref is None else ref()

    def _keep(self, states: list[JobState]) -> None:
        self._states.update(zip([state.job_id for state in states], map(weakref.ref, states), strict=True))
        if len(self._states) > 2 * self._swept_at + 1024:
            self._states = {job_id: ref for job_id, ref in self._states.items() if ref() is not None}
            self._swept_at = len(self._states)

    def is_stale(self, record: JobRecord) -> bool:
        """True when a newer version of the job was applied than ``record`` (a handle made from a
        record read just before a worker changed the job)."""
        seen = self._seen.get(record.id)
        return seen is not None and seen.revision > record.revision

    # -- catching up ----------------------------------------------------------------------------

    def advance_past_own_write(self, written: list[JobRecord]) -> None:
        """Records that one write of this process returned, applied: its rows need not be read back."""
        with self._lock:
            revisions = {r.revision for r in written}
            if len(revisions) == 1:
                self._applied_own(revisions.pop(), len(written))

    def _applied_own(self, revision: int, rows: int) -> None:
        """(Under the lock.) The mirror is current up to this write when it is the next revision
        (and up to the own writes after it that were published first); past a gap it is kept
        among ``own``, so that the watcher reads the gap alone."""
        if revision == self.revision + 1:
            self.revision = revision
            if self._own:
                self._absorb_own()
        elif revision > self.revision:
            self._own[revision] = rows

    def advance_to(self, revision: int) -> None:
        """Every change up to ``revision`` has been applied (read from the database)."""
        with self._lock:
            if revision > self.revision:
                self.revision = revision
                self._own = {r: rows for r, rows in self._own.items() if r > revision}
                self._absorb_own()

    def _absorb_own(self) -> None:
        while self.revision + 1 in self._own:
            self.revision += 1
            del self._own[self.revision]

    def unread(self) -> tuple[int, list[Run]]:
        """What the watcher must read: the changes after this revision, but for these runs of
        this process's own writes, applied already (those of ``WORTH_SKIPPING`` rows or more)."""
        with self._lock:
            return self.revision, runs_of(r for r, rows in self._own.items() if rows >= WORTH_SKIPPING)

    def has_applied(self, revision: int) -> bool:
        """True when the write of ``revision`` is applied here (a change announced need not be read).
        Without the lock: the store's listener thread asks, and must not wait out a bulk edit's
        bookkeeping; an answer a moment late costs one read more, never a change missed."""
        return revision <= self.revision or revision in self._own

    def apply(self, records: Iterable[JobRecord], *, emit: bool) -> tuple[list[JobEvent], list[JobState]]:
        """Take in newer records. Returns the events they amount to (none unless ``emit``) and the
        live states they changed, which the caller settles once the events are delivered, so that a
        waiter never wakes before the events of the change that woke it."""
        with self._lock:
            before = self._window() if emit else {}
            changed: list[tuple[JobRecord, EventKind]] = []
            touched: list[JobState] = []
            placed: list[tuple[int, OrderKey | None]] = []  # applied at once: a bulk edit moves many
            for record in records:
                seen = self._seen.get(record.id)
                if seen is not None and seen.revision >= record.revision:
                    continue
                self._seen[record.id] = _Seen(record.revision, record.status, record.progress)
                placed.append((record.id, record.order_key if record.status is JobStatus.QUEUED else None))
                state = self._live(record.id)
                if state is not None and state.revision < record.revision:
                    state.record = record
                    touched.append(state)
                if not emit:
                    continue
                if seen is None or seen.status is not record.status:
                    changed.append((record, EventKind.STATUS))
                elif seen.progress != record.progress:
                    changed.append((record, EventKind.PROGRESS))
            self._index.update(placed)
            position_of = self._index.positions(r.id for r, _ in changed)
            events = [
                JobEvent(
                    kind=kind,
                    job_id=r.id,
                    status=r.status,
                    position=position_of.get(r.id),
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
            return events, touched

    def apply_bulk(self, change: BulkChange, *, emit: bool) -> tuple[list[Sequence[JobEvent]], list[JobState]]:
        """``apply`` for one change made alike to many jobs (a bulk cancel or retry): the same
        bookkeeping, without a record per job. Its status events come as one ``BulkEvents`` (made
        when read), then the position events, each a batch of the returned list."""
        status = change.status
        queued = status is JobStatus.QUEUED
        assert queued == bool(change.keys) or not change.ids, "jobs are queued with their run-order keys"
        with self._lock, no_collections():
            before = self._window() if emit else {}
            revision = change.revision
            seen_of = self._seen.get
            applied: list[int] = []
            changed: list[int] = []  # the jobs whose status this changes: an event each
            progress: dict[int, float] = {}  # of the jobs that keep theirs, when it is not 0.0
            for job_id in change.ids:
                seen = seen_of(job_id)
                if seen is None:
                    applied.append(job_id)
                    changed.append(job_id)
                elif seen.revision < revision:  # else a newer change was seen already
                    applied.append(job_id)
                    if seen.status is not status:
                        changed.append(job_id)
                    if seen.progress and not queued:
                        progress[job_id] = seen.progress
            self._seen.update(dict.fromkeys(applied, _Seen(revision, status, 0.0)))  # most have no progress
            self._seen.update((job_id, _Seen(revision, status, p)) for job_id, p in progress.items())
            candidates = applied
            if len(applied) > len(self._states):  # the live handles: often far fewer than the jobs
                members = set(applied)
                candidates = [job_id for job_id in list(self._states) if job_id in members]
            touched: list[JobState] = []
            for job_id in candidates:
                state = self._live(job_id)
                if state is not None and state.revision < revision:
                    state.take(change)
                    touched.append(state)
            keys = change.key_of if queued else {}
            self._index.update((job_id, keys.get(job_id)) for job_id in applied)
            self._applied_own(revision, len(change.ids))
            if not emit:
                return [], touched
            events: list[Sequence[JobEvent]] = []
            if changed:
                positions = self._index.positions_later(changed) if queued else None
                error = change.values.get("error")
                events.append(BulkEvents(changed, status=status, error=error, progress=progress, positions=positions))
            reported = set(changed) if queued else set()
            moved = [
                self._position_event(job_id, position)
                for job_id, position in self._window().items()
                if before.get(job_id, position) != position and job_id not in reported
            ]
            if moved:
                events.append(moved)
            return events, touched

    def forget(self, removed: Iterable[RemovedJob], *, emit: bool) -> list[JobEvent]:
        """Jobs that were pruned: known no more (their handles keep their last record). Returns a
        ``REMOVED`` event for each (none unless ``emit``)."""
        with self._lock:
            removed = list(removed)
            self._index.update((r.id, None) for r in removed)  # finished, so not queued: in case
            events = []
            for r in removed:
                seen = self._seen.pop(r.id, None)
                if emit:
                    progress = seen.progress if seen is not None else 0.0
                    events.append(
                        JobEvent(
                            kind=EventKind.REMOVED,
                            job_id=r.id,
                            status=r.status,
                            position=None,
                            progress=progress,
                            error=None,
                        )
                    )
            return events

    def _window(self) -> dict[int, int]:
        return {job_id: i + 1 for i, job_id in enumerate(self._index.head(POSITION_EVENT_WINDOW))}

    def _position_event(self, job_id: int, position: int) -> JobEvent:
        seen = self._seen[job_id]
        record = self.record_of(job_id)
        return JobEvent(
            kind=EventKind.POSITION,
            job_id=job_id,
            status=seen.status,
            position=position,
            progress=seen.progress,
            error=record.error if record is not None else None,
        )
