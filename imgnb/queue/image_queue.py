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
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.batches import batch_specs
from ..core.editing import EDITABLE_STATUSES, Place
from ..core.history import Retention, prunable_statuses, prune_rule
from ..core.leases import LeasePolicy
from ..core.owners import dead_on_host
from ..core.records import (
    AddedJobs,
    BulkChange,
    DeviceState,
    EventKind,
    JobEvent,
    JobRecord,
    JobSpec,
    ModelLoad,
    RemovedJob,
)
from ..core.retry import RetryPolicy
from ..core.states import JobStatus
from ..core.table import TIME_COLUMNS, columns, job_row
from ..core.validation import invalid, parse_priority, validate_job, validate_patch
from ..errors import JobInterrupted, MissingExtra, QueueClosed, QueueConfigError
from ..gen.base import Generator
from ..store import SQLStore, Store
from .events import BatchSubscriber, EventBus, Subscriber
from .files import delete_images as delete_images_of
from .gc_hold import no_collections
from .job import Job, JobState
from .loop import DaemonExecutor, QueueLoop, keep_running, until_set
from .mirror import QueueMirror
from .models import ModelCatalog
from .processes import alive, host_name, new_owner
from .worker import STOP_WAIT, DeviceWorker, WorkerContext

if TYPE_CHECKING:
    import pandas
    from PIL.Image import Image

    from ..widgets import QueueBoard
    from ..widgets.grid import SweepGrid

__all__ = ["ImageQueue"]

log = logging.getLogger("imgnb")

_OPEN: weakref.WeakSet[ImageQueue] = weakref.WeakSet()


@atexit.register
def _close_open_queues() -> None:
    """A process that ends normally (a script's end, ``sys.exit()``, a kernel restart or shutdown)
    hands its running jobs back to their place, uncounted, as ``close()`` does."""
    for queue in list(_OPEN):
        with contextlib.suppress(Exception):  # one queue's trouble must not keep the others' jobs
            queue.close()


T = TypeVar("T")
_CATCH_UP_RETRY = 0.005  # seconds before an announced write a read did not reach is looked for again
_CATCH_UP_BURST, _CATCH_UP_GAP = 4, 0.02  # reads for announced writes: 4 at once, at most 50 a second


class ImageQueue:
    """A persistent queue of text-to-image jobs, run one at a time per device.

    ``db`` is an SQLite file path (created with its folder) or an SQLAlchemy URL such as
    ``postgresql+psycopg://user@host/db``; several processes may share one database. Without a
    generator, pipeline or models the queue only stores and watches jobs (other processes run them).

    What runs the jobs, one of:

    - ``pipeline=pipe``: one diffusers pipeline (or a dict of them by device), the one-model
      shortcut; the model is named after ``pipe.name_or_path``, or ``"default"`` when it has none.
    - ``models={"sd15": load_sd15, "sdxl": load_sdxl}``: several models by name, each a pipeline,
      a generator, or a loader ``load(device) -> pipeline`` called when a job first needs that
      model on a device (see ``imgnb.gen.loading``; declare a loader's pipeline class with
      ``@imgnb.loader(StableDiffusionXLPipeline)`` and jobs for it are checked at submit without
      loading it; otherwise only as JSON, and against the pipeline when they run). Jobs name their
      model with ``submit(..., model="sdxl")``; jobs stored without one run on the first model.
    - ``generator=``: any ``generator(request, on_step) -> images`` (or a dict by device), unnamed.

    ``devices`` lists the devices that run jobs, one worker and one lock each (default: the
    pipeline's device, or the accelerator torch sees, else ``"cpu"``). A device keeps at most
    ``max_loaded`` models its loaders made: loading another unloads the least recently used one
    first and gives its memory back. A job's timeout does not count the time its model took to load.

    ``affinity`` (default 0: strict order) lets a worker whose device holds a model take a job for
    that model up to ``affinity`` places behind the head of the queue, at the head's priority, to
    save a reload; no job is passed over more than ``affinity`` times (see ``core.affinity``).

    ``headless=True`` (the ``imgnb worker`` command): nothing in this process shows other
    processes' jobs, so their claims and finishes are not read as they are announced but at each
    lease heartbeat (5 s by default); a submit, cancel, edit or hand-back still wakes it at once.
    Each worker process reading every other's two writes per job made 8 of them slower than 1
    (see the README's scaling table). Events about other processes' jobs come that much later.
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        generator: Generator | Mapping[str, Generator] | None = None,
        pipeline: Any = None,
        models: Mapping[str, Any] | None = None,
        devices: Iterable[str] | None = None,
        max_loaded: int = 1,
        affinity: int = 0,
        start: bool = True,
        images_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 1,
        retry_policy: RetryPolicy | None = None,
        lease: LeasePolicy | None = None,
        store: Store | None = None,
        previews: bool = True,
        preview_interval: float = 0.25,
        keep: Retention | None = None,
        headless: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QueueConfigError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1 (1: batching off)")
        if not (isinstance(preview_interval, (int, float)) and preview_interval > 0):
            raise QueueConfigError(f"preview_interval={preview_interval!r} is invalid; allowed: seconds > 0")
        if keep is not None and not isinstance(keep, Retention):
            raise QueueConfigError(f"keep={keep!r} is invalid; allowed: None (keep every job) or imgnb.Retention(...)")
        self.keep = keep  # automatic pruning, on open and then every keep.every seconds
        self._next_retention = 0.0  # monotonic time of the next automatic prune
        for name, value in (("max_loaded", max_loaded), ("affinity", affinity)):
            least = 1 if name == "max_loaded" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise QueueConfigError(f"{name}={value!r} is invalid; allowed: an integer >= {least}")
        self._catalog = ModelCatalog(
            generator=generator,
            pipeline=pipeline,
            models=models,
            devices=list(devices) if devices is not None else None,
            previews=previews,
            preview_interval=float(preview_interval),
        )
        self.retry_policy = retry_policy or RetryPolicy()
        self.lease_policy = lease or LeasePolicy()
        self.host = host_name()
        self.owner = str(new_owner())  # host:pid:process start:token, so same-host death is seen at once
        self.store: Store = store or SQLStore(os.fspath(db))
        self.images_dir = Path(images_dir) if images_dir is not None else self.store.default_images_dir()
        self._batching = batch_size > 1
        # A queue of this host that died (killed, crashed) left its jobs processing: take them back
        # now, before the first claim, so the interrupted job is the next to run at its old place.
        self._recover_dead_owners()
        self._mirror = QueueMirror(*self.store.queued_snapshot())
        self._steps: dict[int, tuple[int, int]] = {}
        self._previews: dict[int, Image] = {}  # the latest preview of each job running here
        self._loading: dict[int, ModelLoad] = {}  # the model load each job running here waits for
        self._loop = QueueLoop()
        self._bus = EventBus()
        self._db_executor = DaemonExecutor("imgnb-db")
        # held while a write of this process is made and the mirror advanced past it from what the
        # write returned, and while the watcher reads other processes' changes: the watcher never
        # reads this process's rows back. A read between the commit and the advance decoded all
        # 100,000 rows of a batch or a bulk retry again, 2-3 s on the database thread, measured here.
        self._writing = threading.RLock()  # a subscriber called back inside a write may write too
        self._closed = False
        self._started = False
        self._paused = False
        self._claim_gate = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None  # another process's write was announced
        self._heard = 0  # the highest revision announced by another process (written by the listener)
        self._catch_up_scheduled = False
        self._retry = _CATCH_UP_RETRY / 2  # the watcher's next quick look (doubled before use)
        self._reads: collections.deque[float] = collections.deque(maxlen=_CATCH_UP_BURST)  # when it read last
        # how often the watcher reads unannounced: headless, what it must hear is announced, and a
        # lost session is caught up when it is opened again (see Store.listen); the look at each
        # poll was a third of an idle worker's CPU
        self._follow_every = self.lease_policy.heartbeat if headless else self.lease_policy.poll
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
            wrap=self._loop.wrap,
            may_claim=lambda: self._started and not self._paused and not self._closed,
            claim_gate=self._claim_gate,
            wait_for_work=self._idle,
            report_loading=self._on_loading,
        )
        self._workers = [
            DeviceWorker(
                context,
                device=d,
                lock_name=f"{self.host}/{d}",
                models=self._catalog.for_device(d, max_loaded=max_loaded),
                batch_size=batch_size,
                affinity=affinity,
            )
            for d in self._catalog.devices
        ]
        _OPEN.add(self)
        self._run_on_loop(self._start_background)
        self._stop_listening = self.store.listen(self._announced, work_only=bool(headless))
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
        """Start no new job; a running one finishes. A claim already under way when this is called
        ends first, so that none takes a job submitted after this returns."""
        with self._claim_gate:
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

    @property
    def models(self) -> list[str]:
        """The names of the models this queue runs, in the order given (the first runs the jobs
        stored without one); empty for a ``generator=`` queue and one that runs no jobs."""
        return list(self._catalog.names)

    def device_states(self) -> list[DeviceState]:
        """Per device of this process: the models it holds and the one it is loading, if any."""
        return [w.models.state() for w in self._workers]

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
            worker.models.clear()  # the loaded models' memory goes back once a running call ends
        self._db_executor.shutdown(wait=True)
        returned = self.store.abandon(owner=self.owner, now=time.time())
        self._publish_written(returned)
        for worker in self._workers:  # handed back already: now let each generation stop at its step
            if not worker.wait_stopped(STOP_WAIT):
                log.warning("imgnb: the generation on %s did not stop within %g s", worker.device, STOP_WAIT)
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
        model: str | None = None,
        **params: Any,
    ) -> Job:
        """Store one job and return its live handle. ``params`` go to the generator.

        ``model`` names one of the queue's ``models``; with one model it may be left out. An unknown
        one is refused (``InvalidJob`` naming the known ones), as are parameters that model does
        not take, before anything is stored.
        """
        model = self._catalog.resolve(model)
        spec = validate_job(
            prompt,
            priority=priority,
            group=group,
            timeout=timeout,
            max_retries=max_retries,
            metadata=metadata,
            seed=seed,
            params=params,
            check_params=self._catalog.check_params(model),
            model=model,
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
        model: str | None = None,
    ) -> list[Job]:
        """Store several jobs at once, all or none, consecutive in the queue.

        Each item is a dict with ``prompt`` and optionally ``seed``, ``timeout``, ``max_retries``,
        ``metadata``, ``model`` and generation parameters; ``priority`` and ``group`` are set for
        the batch, ``model`` and the others are defaults an item may override.
        """
        specs = batch_specs(
            items,
            priority=priority,
            group=group,
            timeout=timeout,
            max_retries=max_retries,
            metadata=metadata,
            model=model,
            resolve=self._catalog.resolve,
            check_params=self._catalog.check_params,
        )
        return self._add(specs)

    def _add(self, specs: list[JobSpec]) -> list[Job]:
        self._check_open()
        keys = [self._key_of(spec) for spec in specs]
        with self._writing, no_collections():  # see gc_hold: 100,000 jobs of a submit_batch
            added = self.store.add(specs, batch_keys=keys, now=time.time())
            change = added.change()
            self._publish_bulk(change)  # inside: the watcher must not read back what this knows
        self._wake()
        states = self._mirror.bulk_states(change, functools.partial(self._read_added, added))
        with no_collections():
            return [self._handle_of(state) for state in states]

    def _key_of(self, spec: JobSpec) -> str | None:
        return self._catalog.batch_key(spec) if self._batching else None

    # -- reading --------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job with this id; raises ``JobNotFound``."""
        record = self.store.get(job_id)
        self._publish_records([record])
        return self._handle(record)

    def jobs(
        self,
        status: str | JobStatus | None = None,
        group: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[Job]:
        """Jobs by status and/or group; queued ones in run order, the others in submit order, both
        reversed by ``newest_first``. ``offset`` and ``limit`` read one page: ``q.jobs("complete",
        limit=50, newest_first=True)`` costs 50 rows at any size of history."""
        status = _status(status)
        for name, value, least in (("limit", limit, 0), ("offset", offset, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise invalid(name, value, "an integer >= 0" + (" or None (every job)" if name == "limit" else ""))
        records = self.store.list_jobs(
            status=status, group=group, limit=limit, offset=offset, newest_first=bool(newest_first)
        )
        self._publish_records(records)
        return [self._handle(r) for r in records]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return {s.value: n for s, n in self.store.counts().items()}

    def subscribe(self, callback: Subscriber | BatchSubscriber, *, batches: bool = False) -> Callable[[], None]:
        """Call ``callback(event)`` on the queue's loop for each change; returns ``unsubscribe``.

        ``batches=True``: call ``callback(events)`` once per batch instead, a sequence of the events
        that one change made (a bulk cancel of 100,000 jobs: one ``BulkEvents``, whose events are
        made only when read, then its position events), for a subscriber that redraws once a burst."""
        return self._bus.subscribe(callback, batches=batches)

    def subscriber_count(self) -> int:
        """How many callbacks follow this queue's events (widgets included)."""
        return len(self._bus)

    def update_metadata(self, job_id: int, patch: Mapping[str, Any]) -> Job:
        """Deep-merge ``patch`` into the job's metadata, atomically (safe across processes)."""
        (record,) = self._edit(self.store.update_metadata, job_id, validate_patch(patch))
        return self._handle(record)

    def cancel(self, job_id: int) -> None:
        """Cancel a job: at once if waiting, at its next step if running (here or elsewhere)."""
        self._edit(self.store.cancel, job_id, now=time.time())

    def retry(self, job_id: int) -> Job:
        """Put a failed or cancelled job back in the queue, at the end of its priority."""
        self._check_open()
        (record,) = self._edit(self.store.requeue, job_id, now=time.time())
        self._wake()
        return self._handle(record)

    def recent(self, n: int = 8, *, group: str | None = None) -> list[Job]:
        """The ``n`` jobs that finished last (complete, error or cancelled), newest first."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise invalid("n", n, "an integer >= 0")
        records = self.store.recently_finished(limit=n, group=group)
        self._publish_records(records)
        return [self._handle(r) for r in records]

    # -- history: pruning and export -------------------------------------------------------------

    def prune(
        self,
        *,
        older_than: float | timedelta | None = None,
        keep_last: int | None = None,
        status: str | JobStatus | None = None,
        group: str | None = None,
        delete_images: bool = False,
    ) -> int:
        """Remove finished jobs (complete, error, cancelled; never waiting or running ones) and
        return how many. ``older_than``: only those that finished longer ago (seconds or a
        timedelta); ``keep_last=N``: never the N that finished last among those matching ``status``
        and ``group``; with neither, every matching finished job. ``delete_images=True`` deletes
        their image files too.

        A pruned job is gone for every process: ``get`` raises ``JobNotFound``. A handle to it keeps
        reading the last state this process saw (its images, if deleted, cannot be loaded)."""
        seconds, keep = prune_rule(older_than, keep_last)
        statuses = prunable_statuses(status)
        self._check_open()
        removed = self._prune_now(statuses, group, seconds, keep, delete_images=bool(delete_images))
        self._forget(removed)
        return len(removed)

    def _prune_now(
        self,
        statuses: frozenset[JobStatus],
        group: str | None,
        seconds: float | None,
        keep_last: int | None,
        *,
        delete_images: bool,
    ) -> list[RemovedJob]:
        """The prune itself, blocking (in the caller's thread, or the database thread for retention)."""
        removed = self.store.prune(
            statuses=statuses,
            group=group,
            finished_before=None if seconds is None else time.time() - seconds,
            keep_last=keep_last,
        )
        if delete_images:
            delete_images_of([path for r in removed for path in r.images])
        return removed

    def _forget(self, removed: list[RemovedJob]) -> None:
        events = self._mirror.forget(removed, emit=bool(self._bus))
        if events and not self._loop.loop.is_closed():
            self._loop.call(self._bus.deliver, events)

    async def _retain_if_due(self) -> None:
        """Automatic retention (``keep=``), from the watcher: on open, then every ``keep.every`` s."""
        keep = self.keep
        if keep is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + keep.every
        removed = await self._db(
            self._prune_now,
            prunable_statuses(None),
            None,
            keep.older_than_seconds,
            keep.keep_last,
            delete_images=keep.delete_images,
        )
        self._forget(removed)

    def to_dataframe(self, status: str | JobStatus | None = None, group: str | None = None) -> pandas.DataFrame:
        """Every job (of ``status`` and/or ``group``) as a pandas DataFrame, one row per job, by id:
        id, status, model, prompt, seed, each generation parameter in a column of its own, priority,
        group, attempts, error, created/started/finished times (UTC, timezone-aware), ``waited_s``
        (submit to the start of its last run), ``run_s`` (that run), ``images`` (paths), and the
        metadata flattened into ``metadata.<key>.<key>`` columns. CSV or Parquet: ``df.to_csv(...)``.

        Needs pandas (``pip install 'imgnb[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingExtra(
                "to_dataframe needs pandas, which is not installed: pip install 'imgnb[pandas]'"
            ) from None
        rows = [job_row(r) for r in self.store.list_jobs(status=_status(status), group=group)]
        frame = pd.DataFrame(rows, columns=columns(rows))
        for name in TIME_COLUMNS:
            frame[name] = pd.to_datetime(frame[name], unit="s", utc=True)
        return frame

    # -- editing waiting jobs ----------------------------------------------------------------------

    def set_priority(self, job_id: int, priority: str) -> Job:
        """Give a queued or pending job another priority ('high', 'normal' or 'low'): it goes to
        the end of that priority's queue. ``IllegalTransition`` for a job that does not wait."""
        level = parse_priority(priority)
        self._check_open()
        (record,) = self._edit(self.store.set_priority, job_id, int(level), now=time.time())
        return self._handle(record)

    def move(self, job_id: int, *, to: str | None = None, before: Job | int | None = None) -> Job:
        """Move a queued or pending job within its priority: ``to="front"``, ``to="back"``, or
        ``before=`` another waiting job of the same priority (a ``Job`` or an id). One transaction;
        every process's positions follow. ``IllegalTransition`` when a job does not wait or the
        priorities differ, and then nothing moves."""
        if (to is None) == (before is None):
            raise invalid("to", to, "either to='front' or 'back', or before=<job>, not both")
        where: Place | int
        if to is not None:
            try:
                where = Place(to)
            except ValueError:
                raise invalid("to", to, "'front' or 'back'") from None
        else:
            where = before.id if isinstance(before, Job) else before  # type: ignore[assignment]
        self._check_open()
        records = self._edit(self.store.move, job_id, to=where, now=time.time())
        mine = [r for r in records if r.id == job_id]
        return self._handle(mine[0]) if mine else self.get(job_id)

    def cancel_all(self, *, status: str | JobStatus | None = None, group: str | None = None) -> int:
        """Cancel every waiting job (``status``: 'queued' or 'pending' only; both by default) of
        ``group`` in one transaction; returns how many. Running jobs go on (``cancel`` each one)."""
        wanted = _status(status)
        if wanted is not None and wanted not in EDITABLE_STATUSES:
            raise invalid("status", status, "None (queued and pending), 'queued' or 'pending'")
        statuses = EDITABLE_STATUSES if wanted is None else frozenset({wanted})
        self._check_open()
        change = self._bulk_edit(self.store.cancel_all, statuses=statuses, group=group, now=time.time())
        return len(change.ids)

    def retry_failed(self, *, group: str | None = None) -> list[Job]:
        """Put every job in error (of ``group``) back in the queue in one transaction, each at the
        end of its priority, in their old order; returns their handles (each one's record is read
        from the database when first asked for: its status and position are known at once)."""
        self._check_open()
        change = self._bulk_edit(self.store.requeue_failed, group=group, now=time.time())
        self._wake()
        states = self._mirror.bulk_states(change, self._read_state)
        with no_collections():  # see gc_hold: 100,000 handles
            return [self._handle_of(state) for state in states]

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

    def loading_of(self, job_id: int) -> ModelLoad | None:
        """The model load a job running in this process waits for, else None."""
        return self._loading.get(job_id)

    # -- internals ------------------------------------------------------------------------------

    def _handle(self, record: JobRecord) -> Job:
        if self._mirror.is_stale(record):  # a worker moved it on while we were reading it
            record = self.store.get(record.id)
        state = self._mirror.state(record)
        state.settle()
        return self._handle_of(state)

    def _handle_of(self, state: JobState) -> Job:
        """The one live handle of a job's state (made if none is alive)."""
        job = state.handle() if state.handle is not None else None
        return job if job is not None else Job(self, state)

    def _read_state(self, state: JobState) -> None:
        """Read the record of a state a bulk edit made (unread: see ``JobState``); one newer than the
        state is applied as any change seen in the database (events, waiters)."""
        record = self.store.get(state.job_id)
        self._publish_records([record])
        self._mirror.state(record)  # stores it in the state (the same revision, or a newer one)

    def _read_added(self, added: AddedJobs, state: JobState) -> None:
        """``_read_state`` of a state a submit made: a job still as it was added is built from what
        was stored, without reading it back."""
        if state.revision == added.revision:
            self._mirror.state(added.record_of(state.job_id))
        else:
            self._read_state(state)

    def _edit(self, write: Callable[..., JobRecord | list[JobRecord]], *args: Any, **kwargs: Any) -> list[JobRecord]:
        """``write(*args, **kwargs)``, a store write that returns what it changed, and the mirror
        brought past it, inside ``_writing``: the watcher never reads these rows back."""
        with self._writing:
            written = write(*args, **kwargs)
            records = written if isinstance(written, list) else [written]
            self._publish_written(records)
        return records

    def _bulk_edit(self, write: Callable[..., BulkChange], **kwargs: Any) -> BulkChange:
        """``_edit`` for a write made alike to many jobs (a bulk cancel or retry)."""
        with self._writing:
            change = write(**kwargs)
            self._publish_bulk(change)
        return change

    def _publish_bulk(self, change: BulkChange) -> None:
        """What one bulk write of this process changed: the mirror need not read it back."""
        batches, touched = self._mirror.apply_bulk(change, emit=bool(self._bus))
        if batches or touched:
            self._loop.call(self._settle, batches, touched)

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
                self._loading.pop(record.id, None)
            elif record.cancel_requested:
                self._loop.call(self._stop_local, record.id, JobInterrupted("cancelled"))
        events, touched = self._mirror.apply(records, emit=bool(self._bus))
        if not events:  # none to deliver first: the waiters wake from here, the loop left alone
            for state in touched:
                state.settle()
        elif self._loop.loop.is_closed():  # after close(): nothing is left to deliver to
            self._settle([events], touched)
        else:
            self._loop.call(self._settle, [events], touched)

    def _settle(self, batches: list[Sequence[JobEvent]], touched: list[JobState]) -> None:
        for events in batches:
            self._bus.deliver(events)
        for state in touched:
            state.settle()

    def _stop_local(self, job_id: int, reason: JobInterrupted) -> None:
        for worker in self._workers:
            worker.request_stop(job_id, reason)

    def _on_step(self, job_ids: list[int], step: int, total: int, previews: dict[int, Image]) -> None:
        """A generation step finished, with new previews of some jobs (in the generation thread): kept
        at once, and told to the subscribers on the loop, when there are any. A headless worker has
        none, and the hop to the loop for each step was a tenth of its loop's time per no-op job."""
        self._previews.update(previews)
        for job_id in job_ids:
            self._steps[job_id] = (step, total)
        if self._bus:
            self._loop.call(self._tell_step, job_ids, step, total)

    def _tell_step(self, job_ids: list[int], step: int, total: int) -> None:
        events = []
        for job_id in job_ids:
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

    def _on_loading(self, job_ids: list[int], load: ModelLoad | None) -> None:
        """A model load for these running jobs began (``load``) or ended (None), on the loop thread."""
        events = []
        for job_id in job_ids:
            if load is None:
                self._loading.pop(job_id, None)
            else:
                self._loading[job_id] = load
            record = self._mirror.record_of(job_id)
            events.append(
                JobEvent(
                    kind=EventKind.MODEL,
                    job_id=job_id,
                    status=JobStatus.PROCESSING,
                    position=None,
                    progress=0.0,
                    error=record.error if record is not None else None,
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
        return await self._loop.wrap(self._db_soon(fn, *args, **kwargs))

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
        await until_set(self._wakeup, self.lease_policy.poll)
        self._wakeup.clear()
        if self._closed:
            raise QueueClosed()

    def _announced(self, revision: int | None) -> None:
        """Another process committed a write (in the store's listener thread; ``None``: writes may
        have been missed): have the watcher read it now rather than at its next poll."""
        if revision is not None:
            if self._mirror.has_applied(revision):
                return  # read already, or this process's own write
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
            timeout = self._follow_every
        await until_set(self._changed, timeout)
        if len(self._reads) == _CATCH_UP_BURST:
            early = self._reads[0] + _CATCH_UP_BURST * _CATCH_UP_GAP - time.monotonic()
            if early > 0:
                await asyncio.sleep(early)  # announcements that come meanwhile are read together
        self._changed.clear()

    def _changes(self) -> tuple[int, list[JobRecord]] | None:
        """In the database thread: the changes since the mirror's revision, or None while a write
        of this process is being made (its rows are this process's own: they are not read back)."""
        if not self._writing.acquire(blocking=False):
            return None
        try:
            revision, applied = self._mirror.unread()
            return self.store.changes_since(revision, applied=applied)
        finally:
            self._writing.release()

    async def _watch(self) -> None:
        try:
            await keep_running(self._watch_once, name="watcher")
        except asyncio.CancelledError:
            # close() cancels it after it marks the queue closed; anything else that cancels it is
            # the borrowed loop shutting down (``asyncio.run`` cancels every task as it ends): the
            # queue can run nothing more, so it closes now, handing its running jobs back, rather
            # than leaving its threads polling the database for the rest of the process
            if not self._closed:
                self.close()
            raise

    async def _watch_once(self) -> None:
        """Follow other processes' changes; recover stalled jobs."""
        self._reads.append(time.monotonic())
        changes = await self._db(self._changes)
        if changes is None:  # a submit is being stored: look again soon, once it is
            self._heard = max(self._heard, self._mirror.revision + 1)
        else:
            revision, records = changes
            if records:
                self._publish_records(records)
                if any(r.status is JobStatus.QUEUED for r in records):
                    self._wake()
            self._mirror.advance_to(revision)
        # due retries are promoted by the workers, just before they claim (see DeviceWorker._claim)
        if self._started and not self._closed and time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + self.lease_policy.heartbeat
            for worker in self._workers:  # its own leases first: they may have run out in a stall
                await worker.renew()
            recovered = await self._db(self.store.recover_stalled, now=time.time())
            recovered += await self._db(self._recover_dead_owners)
            if recovered:
                self._publish_written(recovered)
                self._wake()
        await self._retain_if_due()
        await self._until_changed()

    # -- display: imgnb.widgets (and ipywidgets) load only when a queue is shown -------------------

    def widget(self) -> QueueBoard:
        """The live ``QueueBoard`` (ipywidgets) of this queue, made on first use."""
        from ..widgets.display import queue_board

        return queue_board(self)

    def grid(self, group: str, *, rows: str, cols: str) -> SweepGrid:
        """A live grid of the group's jobs by two of their fields, e.g. ``rows="prompt", cols="seed"``."""
        from ..widgets.display import sweep_grid

        return sweep_grid(self, group, rows=rows, cols=cols)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, Any]:
        from ..widgets.display import queue_bundle

        return queue_bundle(self)

    def _repr_html_(self) -> str:
        from ..widgets.display import queue_html

        return queue_html(self)

    def __repr__(self) -> str:
        return f"<ImageQueue {self.store!r} {self.state}, {self.queued_count()} queued, devices={self.devices}>"


def _status(status: object) -> JobStatus | None:
    """A status as asked for (``"queued"`` or ``JobStatus.QUEUED``), or ``InvalidJob``."""
    if status is None:
        return None
    try:
        return JobStatus(status)  # type: ignore[arg-type]
    except ValueError:
        raise invalid("status", status, ", ".join(s.value for s in JobStatus)) from None
