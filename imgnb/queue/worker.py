"""``DeviceWorker``: runs jobs on one device, one call at a time, behind the device's lock.

The asyncio side claims jobs, renews leases, watches deadlines and cancellations and stores
outcomes; the generator runs in the worker's own thread so the kernel stays responsive. A timeout
or cancel is stored the moment it is decided; the thread learns it at its next ``on_step`` and
stops. Until the thread has really returned the device stays locked (and its lease renewed): a
generator that never calls ``on_step`` keeps its device busy after its job was marked timed out,
because two jobs on one GPU is worse than one waiting.

The device never waits for bookkeeping: once a generator call returns, the generation thread asks
the database thread to claim the next job, which starts it on the device at once; only then does
the loop hear of either, and the previous job's images go to a writer thread while the next one
runs. A written job is stored complete by the next claim, in the claim's transaction (one commit
for both: most of what a no-op job costs a SQLite file is its commits), or by a call of its own
when no claim waits behind it. ``complete`` keeps its meaning: a job is stored complete only after
its files are on disk, and until then it stays ``processing`` under this worker's lease, so a
process that dies between the two loses nothing (its job is recovered like any dead worker's).
The device waits for the writer only when images pile up (``MAX_STORING``), never for a commit.

A worker knows its queue only through a ``WorkerContext``: the few things it may ask for, and its
device's models through a ``DeviceModels``: a job's model is loaded in the generation thread before
the job runs, and a job's timeout counts from its start without the time its model took to load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..core.describe import attempt_text
from ..core.leases import LeasePolicy, deadline
from ..core.records import Claim, Finish, JobRecord, ModelLoad
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
MAX_STORING = 2  # generator calls whose images may wait for the writer; beyond that the device waits
WRITE_HOLD = 1.0  # seconds at most that the writer waits for the next generation to start first
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
    db_soon: Callable[..., concurrent.futures.Future[Any]]  # the same, from any thread, without waiting
    publish: Callable[[list[JobRecord]], None]  # records that one write of this process returned (any thread)
    report_step: Callable[[list[int], int, int, dict[int, Image]], None]  # a step (and previews), from its thread
    call_on_loop: Callable[..., None]  # run a function on the queue's loop, from any thread
    wrap: Callable[[concurrent.futures.Future[T]], asyncio.Future[T]]  # asyncio.wrap_future, through call_on_loop
    may_claim: Callable[[], bool]  # started and not paused (read in the database thread)
    claim_gate: threading.Lock  # held from that check to the claim's end: pause() waits for it
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


# what a claim made in the database thread returns: promoted, claimed, their runs and the started call
Started = tuple[list[JobRecord], list[JobRecord], dict[int, _Run], "concurrent.futures.Future[Any] | None"]


def _resolve(future: asyncio.Future[None]) -> None:
    """On the loop: ``future`` is done, if nothing else made it so."""
    if not future.done():
        future.set_result(None)


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
        self._storing: dict[int, _Run] = {}  # generated, not yet stored: still held, still leased (_hand_lock)
        self._executor = DaemonExecutor(f"imgnb-{device}")
        self._writer = DaemonExecutor(f"imgnb-{device}-writer")
        self._holding = False
        self._shut = False  # close() began: start nothing more on the device
        # set while the device generates or has nothing to do: the writer starts an image only
        # then, not in the moment between two generator calls, which it would stretch
        self._write_ok = threading.Event()
        self._ahead: concurrent.futures.Future[Started] | None = None  # the claim the generation thread asked for
        self._claim_due: concurrent.futures.Future[Started] | None = None  # the last claim asked for, by either
        # between the loop, the writer and the database thread, under _hand_lock:
        self._unwritten = 0  # generator calls whose images the writer has yet to write
        self._caught_up: asyncio.Future[None] | None = None  # the loop waits for that to fall
        self._finishing: list[tuple[Finish, _Run]] = []  # written, to be stored: the next claim takes them
        self._hand_lock = threading.Lock()
        self._next_beat = 0.0  # monotonic time of the next lease renewal
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
        self._shut = True
        for run in self.runs.values():
            run.stop = run.stop or JobInterrupted("the queue was closed; the job went back to its place")
            run.settled = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=False, cancel_futures=True)

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
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            self._write_ok.set()
            while not ctx.may_claim():
                await ctx.wait_for_work()
            await self._writer_caught_up()
            self._claim_due = claim = ctx.db_soon(self._claim_and_start)
            started = await ctx.wrap(claim)
        else:  # claimed, and probably started, by the generation thread's request
            try:
                started = ahead.result() if ahead.done() else await ctx.wrap(ahead)
            except concurrent.futures.CancelledError:  # close() dropped it
                raise QueueClosed() from None
        promoted, claimed, runs, generation = started
        if claimed:
            self._holding = True
            if generation is None:  # shut down by close(), which hands the claimed jobs back itself
                raise QueueClosed()
            await self._run(claimed, promoted, runs, generation)
            return
        self._write_ok.set()
        if promoted:
            ctx.publish(promoted)
        if self._storing:  # still being stored: their jobs and the device keep their leases meanwhile
            if time.monotonic() >= self._next_beat:
                await self._beat(time.time())
        elif self._holding:  # the device is given back once what it made is stored
            await ctx.db(ctx.store.release_device, owner=ctx.owner, device=self.lock_name)
            self._holding = False
        await ctx.wait_for_work()

    def _claim(self) -> list[JobRecord]:
        """In the database thread. Pausing is checked here, at the last moment, so that no job is
        claimed once ``pause()`` has returned. The written jobs waiting to be stored go into the
        claim's transaction (``Store.finish_and_claim``), or alone when it may not claim."""
        ctx = self.ctx
        with ctx.claim_gate:  # a claim checked before pause() may wait for a submit's commit
            finishing = self._take_finishing()
            if not ctx.may_claim():
                self._finish_each(finishing)
                return []
            claim = Claim(
                owner=ctx.owner,
                device=self.lock_name,
                now=time.time(),
                lease=ctx.lease.lease,
                batch_size=self.batch_size,
                loaded=self.models.loaded(),
                affinity=self.affinity,
                serves=self.models.serves,
            )
            if not finishing:
                return ctx.store.claim(**claim._asdict())
            try:
                finished, claimed = ctx.store.finish_and_claim([finish for finish, _ in finishing], claim)
            except BaseException:
                self._finish_each(finishing)  # alone: the claim's failure is not theirs
                raise
            for (_, run), record in zip(finishing, finished, strict=True):
                self._stored(run, record)
            return claimed

    def _promote(self) -> list[JobRecord]:
        """In the database thread: the retries that are due go back to the queue (at most once a
        poll: not a query per job)."""
        if time.monotonic() < self._next_promotion:
            return []
        self._next_promotion = time.monotonic() + self.ctx.lease.poll
        return self.ctx.store.promote_due(now=time.time())

    def _claim_and_start(self) -> Started:
        """In the database thread: claim, and start the claimed jobs on the device at once. Due
        retries are promoted when there is nothing else to run (then one of them may run now), or
        by the loop once the device has its work (``_run``)."""
        promoted: list[JobRecord] = []
        claimed = self._claim()
        if not claimed:
            promoted = self._promote()
            claimed = self._claim() if promoted else []
            if not claimed:
                self._write_ok.set()  # the device has nothing to do: the writer need not wait
                return promoted, [], {}, None
        runs = {r.id: _Run(r, deadline(r.started_at or time.time(), r.timeout)) for r in claimed}
        if self._shut:
            return promoted, claimed, runs, None
        self.runs = runs  # before the first step: a stop request must find its run
        try:
            generation = self._executor.submit(self._generate, claimed, runs)
        except RuntimeError:  # shut down meanwhile
            return promoted, claimed, runs, None
        return promoted, claimed, runs, generation

    async def _run(
        self,
        claimed: list[JobRecord],
        promoted: list[JobRecord],
        runs: dict[int, _Run],
        generation: concurrent.futures.Future[list[Sequence[Image]]],
    ) -> None:
        """Follow one generator call, already started, and hand its images to the writer; returns
        as soon as the call has returned, the next one being claimed meanwhile."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        generation.add_done_callback(lambda _: self._tell_ended(ended))
        # published once the device has its work: subscribers' time is not taken from the device.
        # Promoted first: a job's queued event comes before its processing one.
        if promoted:
            ctx.publish(promoted)
        ctx.publish(claimed)
        if time.monotonic() >= self._next_promotion and (promoted := await ctx.db(self._promote)):
            ctx.publish(promoted)  # off the device's path: it runs already
        self._next_beat = time.monotonic() + ctx.lease.heartbeat
        next_persist = time.monotonic() + PROGRESS_PERSIST_EVERY
        while not ended.done():
            await asyncio.wait({ended}, timeout=TICK)
            now = time.time()
            if time.monotonic() >= self._next_beat:
                await self._beat(now)
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
                    await self._settle(run, run.stop)
        if self.runs is runs:  # not yet replaced by the next call's
            self.runs = {}
        try:
            outputs: list[Sequence[Image]] = generation.result()
        except BaseException as exc:  # the generator's failure is the job's outcome
            for run in runs.values():
                if not run.settled:
                    await self._settle(run, exc)
            return
        made = [(runs[r.id], images) for r, images in zip(claimed, outputs, strict=True) if not runs[r.id].settled]
        if made:
            self._store(made)

    async def renew(self) -> None:
        """Renew this worker's leases now, if it holds anything. The watcher calls it just before it
        looks for stalled jobs: after a stall of the loop or the database thread longer than the
        lease (a long garbage collection, a slow disk), both are due, and the look must not find
        the leases of the jobs still running here run out."""
        if self._holding or self.runs or self._storing:
            await self._beat(time.time())

    async def _beat(self, now: float) -> None:
        """Renew the leases of the device and of every job this worker holds, running or being
        stored; a job whose cancellation another process asked for is told to stop."""
        ctx = self.ctx
        self._next_beat = time.monotonic() + ctx.lease.heartbeat
        with self._hand_lock:
            storing = list(self._storing)
        live = [i for i, run in self.runs.items() if not run.settled] + storing
        asked = await ctx.db(
            ctx.store.renew, owner=ctx.owner, device=self.lock_name, job_ids=live, now=now, lease=ctx.lease.lease
        )
        for job_id in asked:
            self.request_stop(job_id, JobInterrupted("cancelled"))

    def _store(self, made: list[tuple[_Run, Sequence[Image]]]) -> None:
        """Hand a call's images to the writer (``_write``); its jobs stay held and leased until
        they are stored."""
        with self._hand_lock:
            self._storing.update((run.record.id, run) for run, _ in made)
            self._unwritten += 1
        with contextlib.suppress(RuntimeError):  # shut down by close(), which hands the jobs back itself
            self._writer.submit(self._write, made)

    async def _writer_caught_up(self) -> None:
        """Until the writer has at most ``MAX_STORING`` calls' images left to write: the device
        waits for it rather than pile images up in memory."""
        while True:
            with self._hand_lock:
                if self._unwritten <= MAX_STORING:
                    return
                self._caught_up = caught_up = asyncio.get_running_loop().create_future()
            await caught_up

    def _write(self, made: list[tuple[_Run, Sequence[Image]]]) -> None:
        """In the writer thread, once the device is busy again (or idle): write each job's image
        files, then leave it to be stored complete: by the next claim, in its transaction, or by
        a call of its own (``_finish_waiting``), whichever comes first. Complete means its files
        are on disk. The writer goes on with the next images meanwhile (waiting, it spent a
        finish's time idle for every job it wrote). A write that fails (a full disk) fails the
        job like a generator error."""
        try:
            for run, images in made:
                self._write_ok.wait(WRITE_HOLD)
                try:
                    finish = self._outcome(run, save_images(self.ctx.images_dir, run.record.request(), images))
                except Exception as exc:
                    finish = self._outcome(run, (), exc)
                run.settled = True
                with self._hand_lock:
                    self._finishing.append((finish, run))
                self.ctx.db_soon(self._finish_waiting)
        except QueueClosed:  # close() hands the jobs back itself
            pass
        finally:
            with self._hand_lock:
                self._unwritten -= 1
                caught_up, self._caught_up = self._caught_up, None
            if caught_up is not None:
                self.ctx.call_on_loop(_resolve, caught_up)

    def _take_finishing(self) -> list[tuple[Finish, _Run]]:
        with self._hand_lock:
            taken, self._finishing = self._finishing, []
        return taken

    def _finish_waiting(self) -> None:
        """In the database thread: store the written jobs no claim took with it, unless a claim
        waits behind this call (it takes them: one commit, not two). A claim queued always runs:
        nothing cancels it but ``close()``, which lets the database thread run all it was given
        before it cancels the tasks that wait for those calls."""
        due = self._claim_due
        if due is not None and not due.done():
            return
        self._finish_each(self._take_finishing())

    def _finish_each(self, finishing: list[tuple[Finish, _Run]]) -> None:
        """In the database thread: store each finish in its own transaction. One that fails (the
        database) leaves its job to its lease, like a dead worker's."""
        for finish, run in finishing:
            try:
                stored = self.ctx.store.finish(finish.job_id, **finish.outcome())
            except Exception:
                log.exception("imgnb: storing job %s failed; its lease will bring it back", finish.job_id)
                with self._hand_lock:
                    self._storing.pop(finish.job_id, None)
            else:
                self._stored(run, stored)

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

    async def _settle(self, run: _Run, error: BaseException) -> None:
        """Store how a run that made nothing ended.

        Once ``close()`` has begun nothing is stored (the database thread refuses with
        ``QueueClosed``): close hands every running job back to its place, uncounted, and the
        run's result is dropped rather than half-written.
        """
        run.settled = True
        finish = self._outcome(run, (), error)
        try:
            stored = await self.ctx.db(self.ctx.store.finish, finish.job_id, **finish.outcome())
        except QueueClosed:
            return
        self._stored(run, stored)

    def _stored(self, run: _Run, stored: JobRecord | None) -> None:
        """How a run's end was stored (None: its job was not ours any more), told at once, from
        the thread that stored it: the loop is woken only when it has events to deliver. Should
        the telling fail, it is logged and the database thread goes on with the rest it stores
        (the jobs are stored already), as the loop goes on after a call that fails."""
        with self._hand_lock:
            self._storing.pop(run.record.id, None)
        if stored is None:
            log.warning("imgnb: job %s was taken over by another worker (lease lost); outcome dropped", run.record.id)
            return
        try:
            self.ctx.publish([stored])
        except Exception:
            log.exception("imgnb: telling of job %s, stored %s, failed", stored.id, stored.status.value)

    def _outcome(self, run: _Run, images: Sequence[str], error: BaseException | None = None) -> Finish:
        """What ``Store.finish`` is told of how a run ended, with ``images`` or ``error`` (any thread)."""
        ctx = self.ctx
        record = run.record
        now = time.time()
        if error is None:
            return Finish(record.id, ctx.owner, JobStatus.COMPLETE, now, images=list(images))
        kind = _classify(error)
        message = str(error) if isinstance(error, JobInterrupted) else f"{type(error).__name__}: {error}"
        if kind is FailureKind.TRANSIENT:
            log.info("imgnb: job %s failed: %s", record.id, message, exc_info=error)
        if kind is FailureKind.CANCELLED:
            return Finish(record.id, ctx.owner, JobStatus.CANCELLED, now)
        decision = get_retry_decision(
            kind=kind, attempts=record.attempts, max_retries=record.max_retries, policy=ctx.retry_policy
        )
        if decision is None:
            return Finish(record.id, ctx.owner, JobStatus.ERROR, now, error=message)
        retrying = f"{attempt_text(record.attempts, record.max_retries)}; retrying in {decision.delay:g} s"
        return Finish(
            record.id, ctx.owner, JobStatus.PENDING, now, error=f"{message} ({retrying})", run_at=now + decision.delay
        )

    # -- the generation thread ------------------------------------------------------------------

    def _generate(self, records: list[JobRecord], runs: dict[int, _Run]) -> list[Sequence[Image]]:
        ctx = self.ctx
        ids = [r.id for r in records]
        self._write_ok.set()  # the device is busy: the writer may take the time it needs

        def on_step(step: int, total: int, previews: Sequence[Image] | None = None) -> None:
            stops = [runs[i].stop for i in ids]
            if all(stop is not None for stop in stops):
                raise stops[0]  # type: ignore[misc]
            live = [i for i in ids if not runs[i].settled]  # a stopped batch mate reports no more steps
            for i in live:
                runs[i].step = (step, total)
            shown = {i: image for i, image in zip(ids, previews, strict=True) if i in live} if previews else {}
            ctx.report_step(live, step, total, shown)

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
        self._write_ok.clear()
        self._claim_ahead()
        return list(outputs)

    def _tell_ended(self, ended: asyncio.Future[None]) -> None:
        """The generator call returned (in the generation thread, as a rule): tell the loop, at the
        same time as the answer to the claim it asked for, if any: one wake-up of the loop, not two."""
        ahead = self._ahead
        if ahead is not None and not ahead.done():
            ahead.add_done_callback(lambda _: self.ctx.call_on_loop(_resolve, ended))
        else:
            self.ctx.call_on_loop(_resolve, ended)

    def _claim_ahead(self) -> None:
        """In the generation thread, its call just returned: have the next job claimed and started
        now, without waiting for the loop (unless the writer is behind, or the queue closing). One
        at a time: while the loop has not taken the last one (it is behind the device), the loop
        claims the next itself, so no started call goes unfollowed."""
        if self._ahead is not None or self._unwritten >= MAX_STORING or self._shut:
            return
        with contextlib.suppress(QueueClosed):
            self._ahead = self._claim_due = self.ctx.db_soon(self._claim_and_start)
