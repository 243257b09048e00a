"""``DeviceWorker``: runs jobs on one device, one call at a time, behind the device's lock.

The asyncio side claims jobs, renews leases, watches deadlines and cancellations and stores
outcomes; the generator runs in the worker's own thread so the kernel stays responsive. A timeout
or cancel is stored the moment it is decided; the thread learns it at its next ``on_step`` and
stops. Until the thread has really returned the device stays locked (and its lease renewed): a
generator that never calls ``on_step`` keeps its device busy after its job was marked timed out,
because two jobs on one GPU is worse than one waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.leases import deadline
from ..core.records import JobRecord
from ..core.retry import FailureKind, get_retry_decision
from ..core.states import JobStatus
from ..errors import InvalidJob, JobInterrupted, JobTimedOut, QueueClosed
from ..gen.base import Generator
from .files import save_images
from .loop import keep_running

if TYPE_CHECKING:
    from PIL.Image import Image

    from .image_queue import ImageQueue

__all__ = ["DeviceWorker"]

log = logging.getLogger("imgnb")
TICK = 0.05  # seconds between looks at deadlines and cancellations while a job runs
PROGRESS_PERSIST_EVERY = 1.0  # seconds between progress writes, for other processes to show


@dataclass(eq=False)
class _Run:
    """A job running in this process."""

    record: JobRecord
    deadline: float | None
    stop: JobInterrupted | None = None  # set when the job must stop; raised at its next step
    settled: bool = False  # its outcome is stored; whatever the thread returns is dropped


def _classify(exc: BaseException) -> FailureKind:
    if isinstance(exc, JobTimedOut):
        return FailureKind.TIMED_OUT
    if isinstance(exc, JobInterrupted):
        return FailureKind.CANCELLED
    if isinstance(exc, InvalidJob):
        return FailureKind.INVALID
    return FailureKind.TRANSIENT


class DeviceWorker:
    def __init__(self, queue: ImageQueue, *, device: str, lock_name: str, generator: Generator, batch_size: int):
        self.queue = queue
        self.device = device
        self.lock_name = lock_name
        self.generator = generator
        self.batch_size = batch_size if hasattr(generator, "generate_batch") else 1
        self.runs: dict[int, _Run] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"imgnb-{device}")
        self._holding = False
        self._next_promotion = 0.0  # monotonic time of the next look for due retries

    # -- called from the queue ------------------------------------------------------------------

    def request_stop(self, job_id: int, reason: JobInterrupted) -> None:
        """Ask a running job to stop (on the loop thread); the monitor stores the outcome."""
        run = self.runs.get(job_id)
        if run is not None and run.stop is None:
            run.stop = reason

    def shutdown(self) -> None:
        for run in self.runs.values():
            run.stop = run.stop or JobInterrupted("the queue was closed; the job went back to its place")
            run.settled = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the loop -------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        await keep_running(self._step, name=f"worker of {self.device}")

    async def _step(self) -> None:
        """Claim and run the next job, or give the device back and wait for work."""
        q = self.queue
        await q._runnable()
        promoted, claimed = await q._db(self._claim)
        if promoted:  # published first: a job's queued event comes before its processing one
            q._publish_records(promoted, written=True)
        if claimed:
            self._holding = True
            await self._run(claimed)
            return
        if self._holding:
            await q._db(q.store.release_device, owner=q.owner, device=self.lock_name)
            self._holding = False
        await q._idle()

    def _claim(self) -> tuple[list[JobRecord], list[JobRecord]]:
        """In the database thread: promote the retries that are due, then claim. Paused is checked
        here, at the last moment, so that no job is claimed once ``pause()`` has returned."""
        q = self.queue
        promoted: list[JobRecord] = []
        if time.monotonic() >= self._next_promotion:  # at most once a poll: not a query per job
            self._next_promotion = time.monotonic() + q.lease.poll
            promoted = q.store.promote_due(now=time.time())
        if q.paused:
            return promoted, []
        claimed = q.store.claim(
            owner=q.owner, device=self.lock_name, now=time.time(), lease=q.lease.lease, batch_size=self.batch_size
        )
        return promoted, claimed

    async def _run(self, claimed: list[JobRecord]) -> None:
        q = self.queue
        q._publish_records(claimed, written=True)
        runs = {r.id: _Run(r, deadline(r.started_at or time.time(), r.timeout)) for r in claimed}
        self.runs = runs
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._generate, claimed, runs)
        next_beat = time.monotonic() + q.lease.heartbeat
        while not future.done():
            await asyncio.wait({future}, timeout=TICK)
            now = time.time()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + q.lease.heartbeat
                live = [i for i, run in runs.items() if not run.settled]
                asked = await q._db(
                    q.store.renew, owner=q.owner, device=self.lock_name, job_ids=live, now=now, lease=q.lease.lease
                )
                for job_id in asked:
                    self.request_stop(job_id, JobInterrupted("cancelled"))
            for run in runs.values():
                if run.settled:
                    continue
                if run.stop is None and run.deadline is not None and now >= run.deadline:
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

    async def _settle(self, run: _Run, images: Sequence[str] | None, error: BaseException | None) -> None:
        """Store how a run ended. Shielded: a cancelled task still writes the final status."""
        run.settled = True
        await asyncio.shield(self._store_outcome(run.record, images, error))

    async def _store_outcome(
        self, record: JobRecord, images: Sequence[str] | None, error: BaseException | None
    ) -> None:
        q = self.queue
        now = time.time()
        finish: dict[str, Any] = {"owner": q.owner, "now": now, "batch": record.batch}
        if error is None:
            finish.update(status=JobStatus.COMPLETE, images=list(images or ()))
        else:
            kind = _classify(error)
            message = str(error) if isinstance(error, JobInterrupted) else f"{type(error).__name__}: {error}"
            decision = get_retry_decision(
                kind=kind, attempts=record.attempts, max_retries=record.max_retries, policy=q.retry_policy
            )
            if kind is FailureKind.CANCELLED:
                finish.update(status=JobStatus.CANCELLED, error=None)
            elif decision is None:
                finish.update(status=JobStatus.ERROR, error=message)
            else:
                finish.update(
                    status=JobStatus.PENDING,
                    run_at=now + decision.delay,
                    error=f"{message} (attempt {record.attempts} of {record.max_retries + 1}; "
                    f"retrying in {decision.delay:g} s)",
                )
            if kind is FailureKind.TRANSIENT:
                log.info("imgnb: job %s failed: %s", record.id, message, exc_info=error)
        try:
            stored = await q._db(q.store.finish, record.id, **finish)
        except QueueClosed:
            return  # close() hands the job back to the queue
        if stored is None:
            log.warning("imgnb: job %s was taken over by another worker (lease lost); outcome dropped", record.id)
            return
        q._publish_records([stored], written=True)

    # -- the generation thread ------------------------------------------------------------------

    def _generate(self, records: list[JobRecord], runs: dict[int, _Run]) -> list[list[str]]:
        q = self.queue
        ids = [r.id for r in records]
        last_persist = time.monotonic()

        def on_step(step: int, total: int, previews: Sequence[Image] | None = None) -> None:
            nonlocal last_persist
            stops = [runs[i].stop for i in ids]
            if all(stop is not None for stop in stops):
                raise stops[0]  # type: ignore[misc]
            live = [i for i in ids if not runs[i].settled]  # a stopped batch mate reports no more steps
            q._loop.call(q._on_step, live, step, total)
            if time.monotonic() - last_persist >= PROGRESS_PERSIST_EVERY:
                last_persist = time.monotonic()
                for i in live:
                    q.store.set_progress(i, owner=q.owner, progress=step / total, now=time.time())

        requests = [r.request() for r in records]
        if len(requests) == 1:
            outputs = [self.generator(requests[0], on_step)]
        else:
            outputs = self.generator.generate_batch(requests, on_step)  # type: ignore[attr-defined]
        if len(outputs) != len(requests) or not all(outputs):
            raise TypeError(f"the generator returned {len(outputs)} results for {len(requests)} jobs, or no image")
        return [
            [] if runs[req.job_id].settled else save_images(q.images_dir, req, images)
            for req, images in zip(requests, outputs, strict=True)
        ]
