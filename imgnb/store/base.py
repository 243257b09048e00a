"""The one interface the queue uses to reach its database.

SQL lives only in the implementation (``SQLStore``, for SQLite and PostgreSQL alike). Every write
is one transaction that also bumps the database's revision, stamps the rows it changed with it and
returns the changed rows, so callers can apply exactly what was stored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.editing import Place
from ..core.ordering import OrderKey
from ..core.records import AddedJobs, BulkChange, Claim, Finish, JobRecord, JobSpec, RemovedJob
from ..core.revisions import Run
from ..core.states import JobStatus

__all__ = ["Store"]


class Store(ABC):
    """Persistent jobs, device locks and leases. Methods are blocking; call them off the event loop
    when they may wait (the queue runs them in its database thread)."""

    @abstractmethod
    def add(self, specs: Sequence[JobSpec], *, batch_keys: Sequence[str | None], now: float) -> AddedJobs:
        """Store jobs as ``queued`` in one transaction, in order, with consecutive ``seq``: all or none.
        No specs: nothing is written (an empty ``AddedJobs`` of revision 0)."""

    @abstractmethod
    def get(self, job_id: int) -> JobRecord:
        """One job; raises ``JobNotFound``."""

    @abstractmethod
    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        group: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[JobRecord]:
        """Jobs by status and/or group: queued ones in run order, others by id (submit order), all
        reversed with ``newest_first``; ``offset`` jobs skipped, then at most ``limit``. A page reads
        the page (and the skipped jobs), not the table."""

    @abstractmethod
    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status present, zeros included)."""

    @abstractmethod
    def queued_snapshot(self) -> tuple[int, list[tuple[int, OrderKey]]]:
        """The revision and ``(id, order key)`` of every queued job at that revision: all a queue
        needs to know every position."""

    @abstractmethod
    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        """The current revision and the jobs changed after ``revision``, in revision order, but for
        those of the revisions in ``applied``: ascending runs the caller applied already (its own
        writes past a gap, see ``core.revisions``)."""

    @abstractmethod
    def claim(
        self,
        *,
        owner: str,
        device: str,
        now: float,
        lease: float,
        batch_size: int = 1,
        loaded: Collection[str | None] = (),
        affinity: int = 0,
        serves: Collection[str] | None = None,
    ) -> list[JobRecord]:
        """Take ``device``'s lock and the next queued job (plus up to ``batch_size - 1`` queued jobs
        sharing its batch key, first attempts only), marking them ``processing``. Empty when the
        device is held by a live owner or nothing is eligible; then nothing changes.

        ``serves`` names the models the device runs: a job naming another model is left for a
        worker that runs it (a lab's machines may each hold other models); a job with no model
        runs anywhere. None: every job is eligible.

        The next job is the head of the queue, or with ``affinity`` > 0 the one
        ``core.affinity.pick`` chooses among the first ``affinity + 1`` given the models the
        device holds (``loaded``); the store keeps each job's count of passes with the job (not
        part of its record), and a hand-made ``requeue`` sets it back to 0."""

    def finish_and_claim(
        self, finishes: Sequence[Finish], claim: Claim
    ) -> tuple[list[JobRecord | None], list[JobRecord]]:
        """``finish`` each of ``finishes``, then ``claim``: what each returns. A store may make
        them one transaction (one commit: the most of what a no-op job costs a SQLite file), each
        write with its own revision in that order; this one makes each its own."""
        finished = [self.finish(f.job_id, **f.outcome()) for f in finishes]
        return finished, self.claim(**claim._asdict())

    @abstractmethod
    def renew(self, *, owner: str, device: str, job_ids: Sequence[int], now: float, lease: float) -> set[int]:
        """Extend the leases of ``owner``'s device lock and running jobs; return the ids among
        ``job_ids`` whose cancellation was asked for by any process."""

    @abstractmethod
    def release_device(self, *, owner: str, device: str) -> None:
        """Give the device lock back, if ``owner`` holds it."""

    @abstractmethod
    def set_progress(self, job_id: int, *, owner: str, progress: float, now: float) -> None:
        """Persist a running job's progress, so other processes can show it."""

    @abstractmethod
    def finish(
        self,
        job_id: int,
        *,
        owner: str,
        status: JobStatus,
        now: float,
        error: str | None = None,
        images: Sequence[str] = (),
        run_at: float | None = None,
    ) -> JobRecord | None:
        """End a run of a job ``owner`` claimed: complete, error, cancelled, or pending (retry at
        ``run_at``). None when ``owner`` no longer holds the job (its lease was lost)."""

    @abstractmethod
    def cancel(self, job_id: int, *, now: float) -> JobRecord:
        """Cancel a pending or queued job at once; ask the owner of a processing one to stop."""

    @abstractmethod
    def requeue(self, job_id: int, *, now: float) -> JobRecord:
        """Put a failed or cancelled job back at the end of its priority's queue."""

    @abstractmethod
    def promote_due(self, *, now: float) -> list[JobRecord]:
        """Move pending jobs whose retry delay has passed to ``queued``."""

    @abstractmethod
    def recover_stalled(self, *, now: float) -> list[JobRecord]:
        """Jobs whose owner's lease ran out go back to their old place, or to error once their
        retries are spent."""

    @abstractmethod
    def holders(self) -> set[str]:
        """Every owner that holds a device lock or a processing job."""

    @abstractmethod
    def recover_owners(self, owners: Collection[str], *, now: float) -> list[JobRecord]:
        """Owners known to be dead (their process is gone): their processing jobs go back to their
        old place, one attempt counted, or to error once their retries are spent, as with an
        expired lease; their device locks are freed."""

    @abstractmethod
    def abandon(self, *, owner: str, now: float) -> list[JobRecord]:
        """Hand back everything ``owner`` holds, at closing: its processing jobs go back to their
        old place with the interrupted run not counted, and its device locks are freed."""

    @abstractmethod
    def update_metadata(self, job_id: int, patch: Mapping[str, Any]) -> JobRecord:
        """Deep-merge ``patch`` into a job's metadata in one transaction (RFC 7396)."""

    def listen(self, callback: Callable[[int | None], None], *, work_only: bool = False) -> Callable[[], None]:
        """Call ``callback(revision)`` soon after another process commits a write, with that
        write's revision (``None``: some may have been missed, as after a lost connection); returns
        ``stop``. The callback runs in a thread of the store's and must return at once (hand the
        work to a loop). Writes made through this store object are not announced: their caller
        has their records already.

        ``work_only``: leave out, where the database can tell, the writes that only take or settle
        work (claims, finishes, progress, lease renewals), which can neither give an idle worker a
        job nor ask a running one to stop. A process that runs jobs and shows nothing needs no
        more; with many workers those are nearly all the writes.

        Where the database cannot announce writes (SQLite, memory) this returns a ``stop`` that
        does nothing and the callback is never called: the queue polls, as it always also does.
        """
        return _nothing

    @abstractmethod
    def recently_finished(self, *, limit: int, group: str | None = None) -> list[JobRecord]:
        """The ``limit`` jobs that finished last (complete, error, cancelled), newest first, by
        ``finished_at`` then id."""

    @abstractmethod
    def prune(
        self,
        *,
        statuses: Collection[JobStatus],
        group: str | None,
        finished_before: float | None,
        keep_last: int | None,
    ) -> list[RemovedJob]:
        """Delete, in one transaction, the finished jobs of ``statuses`` (finished ones only) and
        ``group`` that finished before ``finished_before`` and are not among the ``keep_last`` most
        recently finished of them (``core.history.pruned_ids`` states the rule); return them. The
        space they took is given back or reused (SQLite: incremental auto-vacuum)."""

    @abstractmethod
    def cancel_all(self, *, statuses: Collection[JobStatus], group: str | None, now: float) -> BulkChange:
        """Cancel every waiting job of ``statuses`` (queued and/or pending) and ``group`` in one
        transaction; return the change, by id."""

    @abstractmethod
    def requeue_failed(self, *, group: str | None, now: float) -> BulkChange:
        """Put every job in ``error`` (of ``group``) back at the end of its priority's queue, in
        their old order, in one transaction; return the change: its ``ids`` in that order (of their new
        ``seq``), each with its run-order key (no records: they would cost more than the write)."""

    @abstractmethod
    def set_priority(self, job_id: int, priority: int, *, now: float) -> JobRecord:
        """Give a waiting job another priority, at the end of that priority's queue (unchanged if
        it has that priority already). ``IllegalTransition`` for a job that does not wait."""

    @abstractmethod
    def move(self, job_id: int, *, to: Place | int, now: float) -> list[JobRecord]:
        """Move a waiting job to the front or back of its priority, or just before the waiting job
        of the same priority whose id ``to`` is, by new ``seq`` numbers (``core.editing``); return
        every job renumbered, none when nothing moved. ``IllegalTransition`` when either job does
        not wait or their priorities differ; nothing moves then."""

    @abstractmethod
    def default_images_dir(self) -> Path:
        """Where a queue on this store writes image files unless told otherwise."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def _nothing() -> None:
    """The ``stop`` of a store that announces nothing."""
