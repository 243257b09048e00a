"""``Job``: a live handle on one stored job.

The queue replaces the handle's record whenever the job changes (in this process or, seen through
the database, in another), so attributes are always current without a refresh. ``position`` and
``progress`` are read from the queue at the moment they are asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import weakref
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..core.describe import job_text
from ..core.ordering import Priority
from ..core.records import BulkChange, JobRecord, ModelLoad
from ..core.states import JobStatus
from ..errors import JobCancelled, JobFailed, JobWaitTimeout
from .files import load_images

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..widgets import JobCard
    from .image_queue import ImageQueue

__all__ = ["Job", "JobState"]


def _when(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


class JobState:
    """The newest record of one job in this process, shared by its ``Job`` handle (which reads it)
    and the queue's mirror (which replaces ``record`` whenever the job changes).

    ``done_future()`` resolves when the job is final. It follows ``settle()``, not ``record``: the
    queue settles a state only after the events of the change were delivered, so that code woken by
    ``result()`` has seen those events.

    An unread state, made for a bulk edit's handles without a record (100,000 records cost more than
    the write), knows the job's id, status and revision only; its record is read on first use, by
    ``read(state)``, which stores it here brought up to the newest revision.
    """

    __slots__ = ("__weakref__", "_final", "_read", "_record", "_waiter", "handle", "job_id", "revision", "status")
    _lock = threading.Lock()  # for the waiters of every state: taken briefly, and a lock each costs 100,000 locks

    def __init__(
        self,
        record: JobRecord | None,
        *,
        job_id: int = 0,
        status: JobStatus = JobStatus.QUEUED,
        revision: int = 0,
        read: Callable[[JobState], None] | None = None,
    ) -> None:
        self._record = record
        self.job_id = job_id if record is None else record.id
        self.status = status if record is None else record.status  # as of ``revision``
        self.revision = revision if record is None else record.revision
        self.handle: weakref.ref[Job] | None = None  # the Job of this state, while it lives
        self._read = read
        self._final = self.status.is_final  # as of the last settle()
        self._waiter: concurrent.futures.Future[None] | None = None  # made when someone waits

    @property
    def record(self) -> JobRecord:
        record = self._record
        while record is None:  # read again if a newer change came between the read and the store
            assert self._read is not None, "an unread state always has its reader"
            self._read(self)
            record = self._record
        return record

    @record.setter
    def record(self, record: JobRecord) -> None:
        self._record, self.status, self.revision = record, record.status, record.revision

    @property
    def known(self) -> JobRecord | None:
        """The record if it was read (never reads it)."""
        return self._record

    def take(self, change: BulkChange) -> None:
        """A bulk edit of this job, newer than its state."""
        if self._record is not None:
            self.record = change.applied_to(self._record)
        else:
            self.status, self.revision = change.status, change.revision

    def settle(self) -> None:
        """Wake the waiters of a job that became final; re-arm for one retried by hand."""
        with self._lock:
            self._final = self.status.is_final
            waiter = self._waiter
            if waiter is not None and self._final and not waiter.done():
                waiter.set_result(None)
            elif waiter is not None and not self._final and waiter.done():
                self._waiter = None  # retried by hand: wait for the new run

    def done_future(self) -> concurrent.futures.Future[None]:
        """Resolved when the job reaches a final status (thread-safe, any loop)."""
        with self._lock:
            if self._waiter is None:
                self._waiter = concurrent.futures.Future()
                if self._final:
                    self._waiter.set_result(None)
            return self._waiter


class Job:
    """One job of an ``ImageQueue``. Get it from ``submit``, ``submit_batch``, ``get`` or ``jobs``."""

    __slots__ = ("__weakref__", "_queue", "_state")

    def __init__(self, queue: ImageQueue, state: JobState) -> None:
        self._queue = queue
        self._state = state
        state.handle = weakref.ref(self)

    @property
    def _record(self) -> JobRecord:
        return self._state.record

    @property
    def queue(self) -> ImageQueue:
        """The queue this handle belongs to."""
        return self._queue

    @property
    def record(self) -> JobRecord:
        """The stored record behind this handle (a frozen snapshot)."""
        return self._record

    id = property(lambda self: self._state.job_id, doc="The job's id in its database.")
    prompt = property(lambda self: self._record.prompt)
    seed = property(lambda self: self._record.seed, doc="The seed it runs with (drawn at submit when not given).")
    # copies: changing what you were given must not change what the handle shows
    params = property(lambda self: copy.deepcopy(self._record.params), doc="Generation parameters, as stored.")
    metadata = property(lambda self: copy.deepcopy(self._record.metadata), doc="Your metadata, as stored.")
    group = property(lambda self: self._record.group)
    error = property(lambda self: self._record.error, doc="The last error message, or None.")
    attempts = property(lambda self: self._record.attempts, doc="Runs started so far.")
    max_retries = property(lambda self: self._record.max_retries)
    timeout = property(lambda self: self._record.timeout)
    batch = property(lambda self: self._record.batch, doc="The batched call it ran in, if any.")
    model = property(
        lambda self: self._record.model,
        doc="The name of the model it runs on (None: a generator= queue's, or stored before models had names).",
    )

    @property
    def status(self) -> JobStatus:
        return self._state.status

    @property
    def priority(self) -> str:
        return Priority(self._record.priority).label

    @property
    def position(self) -> int | None:
        """1 = runs next, 2 = after that, ... over all queued jobs of the database; None when not queued.

        It is the place in run order: priority, then submit order. Without model affinity (the
        default) jobs start in that order, and ``position - 1`` jobs start before this one, plus any
        submitted later at a higher priority. With ``ImageQueue(..., affinity=N)`` a worker holding
        a job's model may start it early, at any position up to ``N + 1``; and at most ``N`` jobs
        queued behind this one at its priority start before it (each is counted against it as it
        passes it), so at most ``position - 1 + N`` of the jobs now queued start before it.
        Batching (``batch_size``) lets a job's batch mates start with it wherever they wait.
        """
        return self._queue.position(self._state.job_id)

    @property
    def progress(self) -> float:
        """0.0 to 1.0: the share of generation steps done."""
        record = self._record
        step = self.step
        if step is not None and record.status is JobStatus.PROCESSING:
            return step[0] / step[1]
        return record.progress

    @property
    def step(self) -> tuple[int, int] | None:
        """``(step, total)`` while it runs in this process, else None."""
        return self._queue.step_of(self._state.job_id)

    @property
    def preview(self) -> Image | None:
        """A small image of what the job is becoming, refreshed while it runs in this process (a few
        times a second at most); None before its first step and once it ends (the result replaces it)."""
        return self._queue.preview_of(self._state.job_id)

    @property
    def loading(self) -> ModelLoad | None:
        """While it runs in this process and waits for its model to load: which, where, since when."""
        return self._queue.loading_of(self._state.job_id)

    @property
    def images(self) -> list[str]:
        """Paths of the stored image files (empty until complete)."""
        return list(self._record.images)

    created_at = property(lambda self: _when(self._record.created_at), doc="UTC, timezone-aware.")
    started_at = property(lambda self: _when(self._record.started_at), doc="Start of the last run.")
    finished_at = property(lambda self: _when(self._record.finished_at))
    updated_at = property(lambda self: _when(self._record.updated_at))
    run_at = property(lambda self: _when(self._record.run_at), doc="When a pending job becomes eligible again.")

    def done(self) -> bool:
        return self._state.status.is_final

    def cancel(self) -> None:
        """Leave the queue at once if waiting; stop at the next step if running."""
        self._queue.cancel(self._state.job_id)

    def retry(self) -> None:
        """Put a failed or cancelled job back in the queue (at the end of its priority)."""
        self._queue.retry(self._state.job_id)

    def set_priority(self, priority: str) -> None:
        """Give a queued or pending job another priority ('high', 'normal' or 'low'): it goes to
        the end of that priority's queue. ``IllegalTransition`` for a job that runs or has ended."""
        self._queue.set_priority(self._state.job_id, priority)

    def move_to_front(self) -> None:
        """Run this waiting job next among the jobs of its priority."""
        self._queue.move(self._state.job_id, to="front")

    def move_to_back(self) -> None:
        """Run this waiting job after every other job of its priority."""
        self._queue.move(self._state.job_id, to="back")

    def move(self, *, before: Job | int) -> None:
        """Run this waiting job just before ``before``, a waiting job of the same priority (a
        ``Job`` or an id); moving before a job of another priority is refused (``IllegalTransition``)."""
        self._queue.move(self._state.job_id, before=before)

    def result(self, timeout: float | None = None) -> list[Image]:
        """Wait for the job and return its images; raises ``JobFailed`` or ``JobCancelled``.

        Blocks in a script; in a notebook cell it keeps the kernel's loop running while it waits,
        so other jobs, widgets and events go on. Raises ``JobWaitTimeout`` if ``timeout`` passes;
        the job goes on running either way.
        """
        if not self._queue.loop.wait(self._state.done_future(), timeout):
            raise JobWaitTimeout(f"job {self.id} did not finish within {timeout} s; it goes on")
        return self._outcome()

    def _outcome(self) -> list[Image]:
        record = self._record
        if record.status is JobStatus.CANCELLED:
            raise JobCancelled(record.id)
        if record.status is JobStatus.ERROR:
            raise JobFailed(record.id, record.error)
        return load_images(record.images)

    def __await__(self) -> Generator[Any, None, list[Image]]:
        async def wait() -> list[Image]:
            # shield: cancelling the awaiting cell must not cancel the job's completion future
            await asyncio.shield(asyncio.wrap_future(self._state.done_future()))
            return self._outcome()

        return wait().__await__()

    # -- display: imgnb.widgets (and ipywidgets) load only when a job is shown ---------------------

    def widget(self) -> JobCard:
        """The live ``JobCard`` (ipywidgets) of this job, made on first use."""
        from ..widgets.display import job_card

        return job_card(self)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, Any]:
        from ..widgets.display import job_bundle

        return job_bundle(self)

    def _repr_html_(self) -> str:
        from ..widgets.display import job_html

        return job_html(self)

    def __repr__(self) -> str:
        return job_text(self._record, position=self.position, step=self.step)
