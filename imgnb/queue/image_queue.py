"""``ImageQueue``: the public face of imgnb. Submit jobs, watch them, get their images.

It wires the store (SQL), the view (positions and events), the event loop (the kernel's, or its
own thread in a script) and one ``DeviceWorker`` per device. Calls from the user's thread write
to the store directly and return at once; the background work (claiming, running, reading other
processes' changes) runs on the loop, its SQL in one database thread.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.leases import LeasePolicy
from ..core.owners import dead_on_host
from ..core.records import EventKind, GenerationRequest, JobEvent, JobRecord, JobSpec
from ..core.retry import RetryPolicy
from ..core.states import JobStatus
from ..core.validation import ParamsValidator, invalid, validate_job, validate_patch
from ..errors import JobInterrupted, QueueClosed, QueueConfigError
from ..gen.base import BatchGenerator, Generator, ParamsChecker
from ..store import SQLStore, Store
from .events import EventBus, Subscriber
from .job import Job, JobState
from .loop import DaemonExecutor, QueueLoop, keep_running
from .mirror import QueueMirror
from .processes import alive, host_name, new_owner
from .worker import DeviceWorker, WorkerContext

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..widgets import QueueBoard

__all__ = ["ImageQueue"]

_OPEN: weakref.WeakSet[ImageQueue] = weakref.WeakSet()


@atexit.register
def _close_open_queues() -> None:
    """A process that ends normally (a script's end, ``sys.exit()``, a kernel restart or shutdown)
    hands its running jobs back to their place, uncounted, as ``close()`` does."""
    for queue in list(_OPEN):
        with contextlib.suppress(Exception):  # one queue's trouble must not keep the others' jobs
            queue.close()


T = TypeVar("T")
_BATCH_LEVEL = ("priority", "group")  # one value for a whole batch, so its jobs stay together
_CATCH_UP_RETRY = 0.005  # seconds before an announced write a read did not reach is looked for again
_CATCH_UP_BURST, _CATCH_UP_GAP = 4, 0.05  # reads for announced writes: 4 at once, at most 20 a second


def _generators(generator: Any, pipeline: Any, *, previews: bool, preview_interval: float) -> dict[str, Generator]:
    """Device name -> generator, from ``generator=`` or ``pipeline=`` (one, or a dict by device)."""
    if generator is not None and pipeline is not None:
        raise QueueConfigError("give generator= or pipeline=, not both")
    gens: Mapping[Any, Any]
    if pipeline is not None:
        from ..gen.diffusers_gen import DiffusersGenerator

        pipes = pipeline if isinstance(pipeline, Mapping) else {None: pipeline}
        # the adapter names the device the pipeline computes on (its execution device, which
        # differs from ``pipe.device`` under model offloading): that is the device to lock
        gens = {
            d: DiffusersGenerator(p, previews=previews, preview_interval=preview_interval) for d, p in pipes.items()
        }
    elif generator is None:
        return {}
    else:
        gens = generator if isinstance(generator, Mapping) else {None: generator}
    for g in gens.values():
        if not callable(g):
            raise QueueConfigError(
                f"generator={g!r} is invalid; allowed: a callable generator(request, on_step) -> images"
            )
    return {str(d if d is not None else getattr(g, "device", "default")): g for d, g in gens.items()}


class ImageQueue:
    """A persistent queue of text-to-image jobs, run one at a time per device.

    ``db`` is an SQLite file path (created with its folder) or an SQLAlchemy URL such as
    ``postgresql+psycopg://user@host/db``; several processes may share one database. Without a
    generator or pipeline the queue only stores and watches jobs (other processes run them).
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        generator: Generator | Mapping[str, Generator] | None = None,
        pipeline: Any = None,
        start: bool = True,
        images_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 1,
        retry_policy: RetryPolicy | None = None,
        lease: LeasePolicy | None = None,
        store: Store | None = None,
        previews: bool = True,
        preview_interval: float = 0.25,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QueueConfigError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1 (1: batching off)")
        if not (isinstance(preview_interval, (int, float)) and preview_interval > 0):
            raise QueueConfigError(f"preview_interval={preview_interval!r} is invalid; allowed: seconds > 0")
        generators = _generators(generator, pipeline, previews=previews, preview_interval=float(preview_interval))
        self.retry_policy = retry_policy or RetryPolicy()
        self.lease_policy = lease or LeasePolicy()
        self.host = host_name()
        self.owner = str(new_owner())  # host:pid:process start:token, so same-host death is seen at once
        self.store: Store = store or SQLStore(os.fspath(db))
        self.images_dir = Path(images_dir) if images_dir is not None else self.store.default_images_dir()
        self._check_params: ParamsValidator | None = next(
            (g.validate_params for g in generators.values() if isinstance(g, ParamsChecker)), None
        )
        self._batch_key = next((g.batch_key for g in generators.values() if isinstance(g, BatchGenerator)), None)
        self._batching = batch_size > 1
        # A queue of this host that died (killed, crashed) left its jobs processing: take them back
        # now, before the first claim, so the interrupted job is the next to run at its old place.
        self._recover_dead_owners()
        self._mirror = QueueMirror(*self.store.queued_snapshot())
        self._handles: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
        self._steps: dict[int, tuple[int, int]] = {}
        self._previews: dict[int, Image] = {}  # the latest preview of each job running here
        self._loop = QueueLoop()
        self._bus = EventBus()
        self._db_executor = DaemonExecutor("imgnb-db")
        self._closed = False
        self._started = False
        self._paused = False
        self._wakeup: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None  # another process's write was announced
        self._heard = 0  # the highest revision announced by another process (written by the listener)
        self._catch_up_scheduled = False
        self._retry = _CATCH_UP_RETRY / 2  # the watcher's next quick look (doubled before use)
        self._reads: collections.deque[float] = collections.deque(maxlen=_CATCH_UP_BURST)  # when it read last
        self._tasks: list[asyncio.Task[None]] = []
        self._next_recovery = 0.0  # monotonic time of the next look for stalled jobs
        context = WorkerContext(
            store=self.store,
            owner=self.owner,
            lease=self.lease_policy,
            retry_policy=self.retry_policy,
            images_dir=self.images_dir,
            db=self._db,
            db_soon=self._db_soon,
            publish=self._publish_written,
            report_step=self._on_step,
            call_on_loop=self._loop.call,
            may_claim=lambda: self._started and not self._paused and not self._closed,
            wait_for_work=self._idle,
        )
        self._workers = [
            DeviceWorker(context, device=d, lock_name=f"{self.host}/{d}", generator=g, batch_size=batch_size)
            for d, g in generators.items()
        ]
        _OPEN.add(self)
        self._run_on_loop(self._start_background)
        self._stop_listening = self.store.listen(self._announced)
        if start:
            self.start()

    # -- lifecycle ------------------------------------------------------------------------------

    def _run_on_loop(self, fn: Callable[[], None]) -> None:
        if self._loop.on_loop_thread():
            fn()
        else:
            done = concurrent.futures.Future[None]()

            def call() -> None:
                try:
                    fn()
                    done.set_result(None)
                except BaseException as exc:
                    done.set_exception(exc)

            self._loop.loop.call_soon_threadsafe(call)
            done.result()

    def _start_background(self) -> None:
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()
        loop = self._loop.loop
        self._tasks = [loop.create_task(self._watch(), name="imgnb-watch")]
        self._tasks += [loop.create_task(w.run_forever(), name=f"imgnb-{w.device}") for w in self._workers]

    def start(self) -> None:
        """Start running jobs (``ImageQueue(..., start=False)`` only stores and orders them)."""
        self._check_open()
        self._started = True
        self._wake()

    def pause(self) -> None:
        """Start no new job; a running one finishes."""
        self._paused = True

    def resume(self) -> None:
        """Undo ``pause()``; a queue made with ``start=False`` also needs ``start()``."""
        self._paused = False
        self._wake()

    @property
    def paused(self) -> bool:
        """True between ``pause()`` and ``resume()``."""
        return self._paused

    @property
    def started(self) -> bool:
        """True once ``start()`` ran (at construction unless ``start=False``)."""
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> str:
        """'running', 'paused', 'not started' or 'closed': how the queue reads in one word or two."""
        if self._closed:
            return "closed"
        if not self._started:
            return "not started"
        return "paused" if self._paused else "running"

    @property
    def loop(self) -> QueueLoop:
        """The event loop the queue's background work and events run on (the kernel's in Jupyter)."""
        return self._loop

    @property
    def devices(self) -> list[str]:
        return [w.device for w in self._workers]

    def close(self) -> None:
        """Stop at once, losing nothing: running jobs go back to their place in the queue (the
        interrupted run is not counted) and resume when a queue on this database runs again."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._stop_listening()
        for worker in self._workers:
            self._loop.call(worker.shutdown)
        self._db_executor.shutdown(wait=True)
        returned = self.store.abandon(owner=self.owner, now=time.time())
        self._publish_written(returned)
        if self._loop.owns_thread:
            self._loop.submit(self._cancel_tasks()).result(timeout=10)
            self._loop.stop()
        else:  # the kernel's loop: the tasks finish cancelling once this cell returns
            for task in self._tasks:
                task.cancel()
        self.store.close()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> ImageQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed("this ImageQueue is closed; open a new one on the same database")

    # -- submitting -----------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        priority: str = "normal",
        group: str | None = None,
        timeout: float | None = 300.0,
        max_retries: int = 3,
        metadata: dict[str, Any] | None = None,
        seed: int | None = None,
        **params: Any,
    ) -> Job:
        """Store one job and return its live handle. ``params`` go to the generator."""
        spec = validate_job(
            prompt,
            priority=priority,
            group=group,
            timeout=timeout,
            max_retries=max_retries,
            metadata=metadata,
            seed=seed,
            params=params,
            check_params=self._check_params,
        )
        return self._add([spec])[0]

    def submit_batch(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        group: str | None = None,
        priority: str = "normal",
        timeout: float | None = 300.0,
        max_retries: int = 3,
        metadata: dict[str, Any] | None = None,
    ) -> list[Job]:
        """Store several jobs at once, all or none, consecutive in the queue.

        Each item is a dict with ``prompt`` and optionally ``seed``, ``timeout``, ``max_retries``,
        ``metadata`` and generation parameters; ``priority`` and ``group`` are set for the batch.
        """
        specs: list[JobSpec] = []
        if not isinstance(items, Iterable) or isinstance(items, (str, bytes, Mapping)):
            raise invalid("items", items, "a list of dicts, each with at least 'prompt'")
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise invalid("item", item, "a dict with at least 'prompt'", item=i)
            fields = dict(item)
            for name in _BATCH_LEVEL:
                if name in fields:
                    raise invalid(name, fields[name], f"set {name}= once for the whole batch", item=i)
            if "prompt" not in fields:
                raise invalid("prompt", None, "every item needs a 'prompt'", item=i)
            specs.append(
                validate_job(
                    fields.pop("prompt"),
                    priority=priority,
                    group=group,
                    timeout=fields.pop("timeout", timeout),
                    max_retries=fields.pop("max_retries", max_retries),
                    metadata=fields.pop("metadata", metadata),
                    seed=fields.pop("seed", None),
                    params=fields,
                    check_params=self._check_params,
                    item=i,
                )
            )
        return self._add(specs)

    def _add(self, specs: list[JobSpec]) -> list[Job]:
        self._check_open()
        keys = [self._key_of(spec) for spec in specs]
        records = self.store.add(specs, batch_keys=keys, now=time.time())
        self._publish_written(records)
        self._wake()
        return [self._handle(r) for r in records]

    def _key_of(self, spec: JobSpec) -> str | None:
        if not self._batching or self._batch_key is None:
            return None
        key: str | None = self._batch_key(
            GenerationRequest(job_id=0, prompt=spec.prompt, params=spec.params, seed=spec.seed)
        )
        return key

    # -- reading --------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job with this id; raises ``JobNotFound``."""
        record = self.store.get(job_id)
        self._publish_records([record])
        return self._handle(record)

    def jobs(self, status: str | JobStatus | None = None, group: str | None = None) -> list[Job]:
        """Jobs by status and/or group; queued ones in run order, the others in submit order."""
        if status is not None:
            try:
                status = JobStatus(status)
            except ValueError:
                raise invalid("status", status, ", ".join(s.value for s in JobStatus)) from None
        records = self.store.list_jobs(status=status, group=group)
        self._publish_records(records)
        return [self._handle(r) for r in records]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return {s.value: n for s, n in self.store.counts().items()}

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on the queue's loop for each change; returns ``unsubscribe``."""
        return self._bus.subscribe(callback)

    def subscriber_count(self) -> int:
        """How many callbacks follow this queue's events (widgets included)."""
        return len(self._bus)

    def update_metadata(self, job_id: int, patch: Mapping[str, Any]) -> Job:
        """Deep-merge ``patch`` into the job's metadata, atomically (safe across processes)."""
        record = self.store.update_metadata(job_id, validate_patch(patch))
        self._publish_written([record])
        return self._handle(record)

    def cancel(self, job_id: int) -> None:
        """Cancel a job: at once if waiting, at its next step if running (here or elsewhere)."""
        record = self.store.cancel(job_id, now=time.time())
        self._publish_written([record])

    def retry(self, job_id: int) -> Job:
        """Put a failed or cancelled job back in the queue, at the end of its priority."""
        self._check_open()
        record = self.store.requeue(job_id, now=time.time())
        self._publish_written([record])
        self._wake()
        return self._handle(record)

    # -- live state: positions and steps, read by Job handles and widgets ----------------------------

    def position(self, job_id: int) -> int | None:
        """1 = runs next, over all queued jobs of the database; None when the job is not queued."""
        return self._mirror.position(job_id)

    def head(self, n: int) -> list[int]:
        """The ids of the next ``n`` jobs to run, in run order (from memory: no database read)."""
        return self._mirror.head(n)

    def queued_count(self) -> int:
        """How many jobs are queued (from memory: no database read)."""
        return self._mirror.queued_count()

    def step_of(self, job_id: int) -> tuple[int, int] | None:
        """``(step, total)`` of a job running in this process, else None."""
        return self._steps.get(job_id)

    def preview_of(self, job_id: int) -> Image | None:
        """The latest preview of a job running in this process, else None."""
        return self._previews.get(job_id)

    # -- internals ------------------------------------------------------------------------------

    def _handle(self, record: JobRecord) -> Job:
        if self._mirror.is_stale(record):  # a worker moved it on while we were reading it
            record = self.store.get(record.id)
        state = self._mirror.state(record)
        state.settle()
        job = self._handles.get(record.id)
        if job is None:
            job = self._handles[record.id] = Job(self, state)
        return job

    def _publish_written(self, records: list[JobRecord]) -> None:
        """Records that one write of this process returned: the mirror need not read them back."""
        self._mirror.advance_past_own_write(records)
        self._publish_records(records)

    def _publish_records(self, records: Iterable[JobRecord]) -> None:
        """Apply records to the mirror, tell subscribers, then wake the waiters of jobs that ended."""
        records = list(records)
        for record in records:
            if record.status is not JobStatus.PROCESSING:
                self._steps.pop(record.id, None)
                self._previews.pop(record.id, None)  # the result replaces it
            elif record.cancel_requested:
                self._loop.call(self._stop_local, record.id, JobInterrupted("cancelled"))
        events, touched = self._mirror.apply(records, emit=bool(self._bus))
        if not events and not touched:
            return
        if self._loop.loop.is_closed():  # after close(): nothing is left to deliver to
            self._settle(events, touched)
        else:
            self._loop.call(self._settle, events, touched)

    def _settle(self, events: list[JobEvent], touched: list[JobState]) -> None:
        self._bus.deliver(events)
        for state in touched:
            state.settle()

    def _stop_local(self, job_id: int, reason: JobInterrupted) -> None:
        for worker in self._workers:
            worker.request_stop(job_id, reason)

    def _on_step(self, job_ids: list[int], step: int, total: int, previews: dict[int, Image]) -> None:
        """A generation step finished (on the loop thread), with new previews of some jobs."""
        events = []
        self._previews.update(previews)
        for job_id in job_ids:
            self._steps[job_id] = (step, total)
            record = self._mirror.record_of(job_id)
            events.append(
                JobEvent(
                    kind=EventKind.PROGRESS,
                    job_id=job_id,
                    status=JobStatus.PROCESSING,
                    position=None,
                    progress=step / total,
                    error=record.error if record is not None else None,
                    step=step,
                    total_steps=total,
                )
            )
        self._bus.deliver(events)

    def _recover_dead_owners(self) -> list[JobRecord]:
        """Hand back at once what dead processes of this host held (no lease wait: we can see they
        are gone). Other hosts' holders are left to their leases."""
        dead = dead_on_host(self.store.holders(), host=self.host, alive=alive)
        return self.store.recover_owners(dead, now=time.time()) if dead else []

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in the database thread."""
        return await asyncio.wrap_future(self._db_soon(fn, *args, **kwargs))

    def _db_soon(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Hand a store call to the database thread (from any thread); its future."""
        if self._closed:
            raise QueueClosed()
        try:
            return self._db_executor.submit(fn, *args, **kwargs)
        except RuntimeError:  # shut down by close()
            raise QueueClosed() from None

    def _wake(self) -> None:
        """Wake idle workers; a no-op when none could use it (no workers, paused, already woken)."""
        wakeup = self._wakeup
        if wakeup is not None and self._workers and self._started and not self._paused and not wakeup.is_set():
            self._loop.call(wakeup.set)

    async def _idle(self) -> None:
        """Sleep until woken by a local change or until the next look at the database."""
        assert self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.lease_policy.poll)
        self._wakeup.clear()
        if self._closed:
            raise QueueClosed()

    def _announced(self, revision: int | None) -> None:
        """Another process committed a write (in the store's listener thread; ``None``: writes may
        have been missed): have the watcher read it now rather than at its next poll."""
        if revision is not None:
            if revision <= self._mirror.revision:
                return  # read already
            self._heard = max(self._heard, revision)
        if self._catch_up_scheduled or self._closed:
            return
        self._catch_up_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.loop.call_soon_threadsafe(self._catch_up)

    def _catch_up(self) -> None:
        self._catch_up_scheduled = False
        if self._changed is not None:
            self._changed.set()

    async def _until_changed(self) -> None:
        """Until another process's write is announced, or the next poll. An announced write that
        the last read did not reach (one drawn before it was still in flight) is looked for again
        soon, at doubling intervals."""
        assert self._changed is not None
        if self._heard > self._mirror.revision:
            self._retry = min(2 * self._retry, self.lease_policy.poll)
            timeout = self._retry
        else:
            self._retry = _CATCH_UP_RETRY / 2
            timeout = self.lease_policy.poll
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        if len(self._reads) == _CATCH_UP_BURST:
            early = self._reads[0] + _CATCH_UP_BURST * _CATCH_UP_GAP - time.monotonic()
            if early > 0:
                await asyncio.sleep(early)  # announcements that come meanwhile are read together
        self._changed.clear()

    async def _watch(self) -> None:
        await keep_running(self._watch_once, name="watcher")

    async def _watch_once(self) -> None:
        """Follow other processes' changes; recover stalled jobs."""
        self._reads.append(time.monotonic())
        revision, records = await self._db(self.store.changes_since, self._mirror.revision)
        if records:
            self._publish_records(records)
            if any(r.status is JobStatus.QUEUED for r in records):
                self._wake()
        self._mirror.advance_to(revision)
        # due retries are promoted by the workers, just before they claim (see DeviceWorker._claim)
        if self._started and not self._closed and time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + self.lease_policy.heartbeat
            recovered = await self._db(self.store.recover_stalled, now=time.time())
            recovered += await self._db(self._recover_dead_owners)
            if recovered:
                self._publish_written(recovered)
                self._wake()
        await self._until_changed()

    # -- display: imgnb.widgets (and ipywidgets) load only when a queue is shown -------------------

    def widget(self) -> QueueBoard:
        """The live ``QueueBoard`` (ipywidgets) of this queue, made on first use."""
        from ..widgets.display import queue_board

        return queue_board(self)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, Any]:
        from ..widgets.display import queue_bundle

        return queue_bundle(self)

    def _repr_html_(self) -> str:
        from ..widgets.display import queue_html

        return queue_html(self)

    def __repr__(self) -> str:
        return f"<ImageQueue {self.store!r} {self.state}, {self.queued_count()} queued, devices={self.devices}>"
