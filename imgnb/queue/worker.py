"""``DeviceWorker``: runs jobs on one device, one call at a time, behind the device's lock.

The asyncio side claims jobs, renews leases, watches deadlines and cancellations and stores
outcomes; the generator runs in the worker's own thread so the kernel stays responsive. A timeout
or cancel is stored the moment it is decided; the thread learns it at its next ``on_step`` and
stops. Until the thread has really returned the device stays locked (and its lease renewed): a
generator that never calls ``on_step`` keeps its device busy after its job was marked timed out,
because two jobs on one GPU is worse than one waiting.

A worker knows its queue only through a ``WorkerContext``: the few things it may ask for, and its
device's models through a ``DeviceModels``: a job's model is loaded in the generation thread before
the job runs, and a job's timeout counts from its start without the time its model took to load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..core.describe import attempt_text
from ..core.leases import LeasePolicy, deadline
from ..core.records import JobRecord, ModelLoad
from ..core.retry import FailureKind, RetryPolicy, get_retry_decision
from ..core.states import JobStatus
from ..errors import InvalidJob, JobInterrupted, JobTimedOut, QueueClosed
from ..gen.base import BatchGenerator
from ..store import Store
from .files import save_images
from .loop import DaemonExecutor, keep_running

if TYPE_CHECKING:
    from PIL.Image import Image

    from .models import DeviceModels

__all__ = ["STOP_WAIT", "DeviceWorker", "WorkerContext"]

log = logging.getLogger("imgnb")
T = TypeVar("T")
TICK = 0.05  # seconds between looks at deadlines and cancellations while a job runs
STOP_WAIT = 10.0  # seconds close() waits for a generation to reach its next step and stop
PROGRESS_PERSIST_EVERY = 1.0  # seconds between progress writes, for other processes to show


class RunInDb(Protocol):
    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    """What a ``DeviceWorker`` may ask of its queue, and nothing more."""

    store: Store
    owner: str  # the identity this process claims jobs and device locks under
    lease: LeasePolicy
    retry_policy: RetryPolicy
    images_dir: Path
    db: RunInDb  # run a store call in the queue's database thread; raises QueueClosed once closed
    publish: Callable[[list[JobRecord]], None]  # records that one write of this process returned
    report_step: Callable[[list[int], int, int, dict[int, Image]], None]  # a step (and previews), on the loop
    call_on_loop: Callable[..., None]  # run a function on the queue's loop, from any thread
    may_claim: Callable[[], bool]  # started and not paused (read in the database thread)
    wait_for_work: Callable[[], Awaitable[None]]  # until woken or the next poll; raises QueueClosed
    report_loading: Callable[[list[int], ModelLoad | None], None]  # a load for these jobs began or ended, on the loop


@dataclass(eq=False)
class _Run:
    """A job running in this process."""

    record: JobRecord
    deadline: float | None
    stop: JobInterrupted | None = None  # set when the job must stop; raised at its next step
    settled: bool = False  # its outcome is stored; whatever the thread returns is dropped
    step: tuple[int, int] | None = None  # the last step reported by the generation thread
    persisted: tuple[int, int] | None = None  # the last step written to the database
    loading_since: float | None = None  # while its model loads (epoch seconds): its deadline waits


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a generation's exception as seen: when close() cancels the task that waited for it,
    nobody else will, and asyncio would print 'Future exception was never retrieved'."""
    if not future.cancelled():
        future.exception()


def _classify(exc: BaseException) -> FailureKind:
    if isinstance(exc, JobTimedOut):
        return FailureKind.TIMED_OUT
    if isinstance(exc, JobInterrupted):
        return FailureKind.CANCELLED
    if isinstance(exc, InvalidJob):
        return FailureKind.INVALID
    return FailureKind.TRANSIENT


class DeviceWorker:
    def __init__(
        self,
        ctx: WorkerContext,
        *,
        device: str,
        lock_name: str,
        models: DeviceModels,
        batch_size: int,
        affinity: int = 0,
    ):
        self.ctx = ctx
        self.device = device
        self.lock_name = lock_name
        self.models = models
        self.affinity = affinity  # see core.affinity
        self.batch_size = batch_size if models.can_batch else 1
        self.runs: dict[int, _Run] = {}
        self._executor = DaemonExecutor(f"imgnb-{device}")
        self._holding = False
        self._next_promotion = 0.0  # monotonic time of the next look for due retries

    # -- called from the queue ------------------------------------------------------------------

    def request_stop(self, job_id: int, reason: JobInterrupted) -> None:
        """Ask a running job to stop (on the loop thread); the monitor stores the outcome."""
        run = self.runs.get(job_id)
        if run is not None and run.stop is None:
            run.stop = reason

    def shutdown(self) -> None:
        """At ``close()``: stop the running jobs at their next step and store nothing more of them;
        the queue hands them back to their place itself (``Store.abandon``)."""
        for run in self.runs.values():
            run.stop = run.stop or JobInterrupted("the queue was closed; the job went back to its place")
            run.settled = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_stopped(self, timeout: float) -> bool:
        """After ``shutdown``: wait for the generation to stop at its next step. A process must not
        exit while its generation thread is inside a torch call (the C++ runtime aborts then); a
        generator that never calls ``on_step`` is given up on after ``timeout`` seconds."""
        return self._executor.join(timeout)

    # -- the loop -------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        await keep_running(self._claim_and_run, name=f"worker of {self.device}")

    async def _claim_and_run(self) -> None:
        """Claim and run the next job, or give the device back and wait for work."""
        ctx = self.ctx
        while not ctx.may_claim():
            await ctx.wait_for_work()
        promoted, claimed = await ctx.db(self._claim)
        if promoted:  # published first: a job's queued event comes before its processing one
            ctx.publish(promoted)
        if claimed:
            self._holding = True
            await self._run(claimed)
            return
        if self._holding:
            await ctx.db(ctx.store.release_device, owner=ctx.owner, device=self.lock_name)
            self._holding = False
        await ctx.wait_for_work()

    def _claim(self) -> tuple[list[JobRecord], list[JobRecord]]:
        """In the database thread: promote the retries that are due, then claim. Pausing is checked
        here, at the last moment, so that no job is claimed once ``pause()`` has returned."""
        ctx = self.ctx
        promoted: list[JobRecord] = []
        if time.monotonic() >= self._next_promotion:  # at most once a poll: not a query per job
            self._next_promotion = time.monotonic() + ctx.lease.poll
            promoted = ctx.store.promote_due(now=time.time())
        if not ctx.may_claim():
            return promoted, []
        claimed = ctx.store.claim(
            owner=ctx.owner,
            device=self.lock_name,
            now=time.time(),
            lease=ctx.lease.lease,
            batch_size=self.batch_size,
            loaded=self.models.loaded(),
            affinity=self.affinity,
        )
        return promoted, claimed

    async def _run(self, claimed: list[JobRecord]) -> None:
        ctx = self.ctx
        ctx.publish(claimed)
        runs = {r.id: _Run(r, deadline(r.started_at or time.time(), r.timeout)) for r in claimed}
        self.runs = runs
        try:
            future = asyncio.wrap_future(self._executor.submit(self._generate, claimed, runs))
        except RuntimeError:  # shut down by close(), which hands the claimed jobs back itself
            raise QueueClosed() from None
        future.add_done_callback(_retrieve)
        next_beat = time.monotonic() + ctx.lease.heartbeat
        next_persist = time.monotonic() + PROGRESS_PERSIST_EVERY
        while not future.done():
            await asyncio.wait({future}, timeout=TICK)
            now = time.time()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + ctx.lease.heartbeat
                live = [i for i, run in runs.items() if not run.settled]
                asked = await ctx.db(
                    ctx.store.renew,
                    owner=ctx.owner,
                    device=self.lock_name,
                    job_ids=live,
                    now=now,
                    lease=ctx.lease.lease,
                )
                for job_id in asked:
                    self.request_stop(job_id, JobInterrupted("cancelled"))
            if time.monotonic() >= next_persist:
                next_persist = time.monotonic() + PROGRESS_PERSIST_EVERY
                await self._persist_progress(runs.values(), now)
            for run in runs.values():
                if run.settled:
                    continue
                loading = run.loading_since is not None
                if run.stop is None and not loading and run.deadline is not None and now >= run.deadline:
                    run.stop = JobTimedOut(f"timed out after {run.record.timeout:g} s")
                if run.stop is not None:
                    await self._settle(run, None, run.stop)
        try:
            outcome: Any = future.result()
            error: BaseException | None = None
        except BaseException as exc:  # the generator's failure is the job's outcome
            outcome, error = None, exc
        for run in runs.values():
            if not run.settled:
                await self._settle(run, outcome[claimed.index(run.record)] if outcome else None, error)
        self.runs = {}

    def _loading_changed(self, job_ids: list[int], load: ModelLoad | None) -> None:
        """On the loop: a model load for these jobs began (``load``) or ended; their deadlines wait
        for it, then move on by the time it took."""
        now = time.time()
        for job_id in job_ids:
            run = self.runs.get(job_id)
            if run is None:
                continue
            if load is not None:
                run.loading_since = load.since
            elif run.loading_since is not None:
                if run.deadline is not None:
                    run.deadline += now - run.loading_since
                run.loading_since = None
        self.ctx.report_loading(job_ids, load)

    async def _persist_progress(self, runs: Iterable[_Run], now: float) -> None:
        """Write the steps reached since the last write, for other processes to show. Here, in the
        database thread: the generation thread never waits for the database."""
        for run in runs:
            step = run.step
            if run.settled or step is None or step == run.persisted:
                continue
            run.persisted = step
            await self.ctx.db(
                self.ctx.store.set_progress, run.record.id, owner=self.ctx.owner, progress=step[0] / step[1], now=now
            )

    async def _settle(self, run: _Run, images: Sequence[str] | None, error: BaseException | None) -> None:
        """Store how a run ended.

        Once ``close()`` has begun nothing is stored (the database thread refuses with
        ``QueueClosed``): close hands every running job back to its place, uncounted, and the
        run's result is dropped rather than half-written.
        """
        run.settled = True
        ctx = self.ctx
        record = run.record
        now = time.time()
        finish: dict[str, Any] = {"owner": ctx.owner, "now": now}
        if error is None:
            finish.update(status=JobStatus.COMPLETE, images=list(images or ()))
        else:
            kind = _classify(error)
            message = str(error) if isinstance(error, JobInterrupted) else f"{type(error).__name__}: {error}"
            decision = get_retry_decision(
                kind=kind, attempts=record.attempts, max_retries=record.max_retries, policy=ctx.retry_policy
            )
            if kind is FailureKind.CANCELLED:
                finish.update(status=JobStatus.CANCELLED, error=None)
            elif decision is None:
                finish.update(status=JobStatus.ERROR, error=message)
            else:
                finish.update(
                    status=JobStatus.PENDING,
                    run_at=now + decision.delay,
                    error=f"{message} ({attempt_text(record.attempts, record.max_retries)}; "
                    f"retrying in {decision.delay:g} s)",
                )
            if kind is FailureKind.TRANSIENT:
                log.info("imgnb: job %s failed: %s", record.id, message, exc_info=error)
        try:
            stored = await ctx.db(ctx.store.finish, record.id, **finish)
        except QueueClosed:
            return
        if stored is None:
            log.warning("imgnb: job %s was taken over by another worker (lease lost); outcome dropped", record.id)
            return
        ctx.publish([stored])

    # -- the generation thread ------------------------------------------------------------------

    def _generate(self, records: list[JobRecord], runs: dict[int, _Run]) -> list[list[str]]:
        ctx = self.ctx
        ids = [r.id for r in records]

        def on_step(step: int, total: int, previews: Sequence[Image] | None = None) -> None:
            stops = [runs[i].stop for i in ids]
            if all(stop is not None for stop in stops):
                raise stops[0]  # type: ignore[misc]
            live = [i for i in ids if not runs[i].settled]  # a stopped batch mate reports no more steps
            for i in live:
                runs[i].step = (step, total)
            shown = {i: image for i, image in zip(ids, previews, strict=True) if i in live} if previews else {}
            ctx.call_on_loop(ctx.report_step, live, step, total, shown)

        requests = [r.request() for r in records]
        model = records[0].model  # a batch's jobs share their model: their batch key names it
        generator = self.models.generator(model, report=lambda load: ctx.call_on_loop(self._loading_changed, ids, load))
        if len(requests) == 1:
            outputs = [generator(requests[0], on_step)]
        else:
            assert isinstance(generator, BatchGenerator)  # only a model that batches has batch keys
            outputs = generator.generate_batch(requests, on_step)
        if len(outputs) != len(requests) or not all(outputs):
            raise TypeError(f"the generator returned {len(outputs)} results for {len(requests)} jobs, or no image")
        name = self.models.name_of(model)
        if name is not None:  # what the PNG records: the job's model, by its name in the queue
            for images in outputs:
                for image in images:
                    image.info["model"] = name
        return [
            [] if runs[req.job_id].settled else save_images(ctx.images_dir, req, images)
            for req, images in zip(requests, outputs, strict=True)
        ]
