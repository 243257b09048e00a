"""The plain records that travel between the layers. Pure: no I/O.

Times are epoch seconds (UTC) here and in the database; the public ``Job`` turns them into
timezone-aware datetimes at the edge.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, NamedTuple, overload

from .ordering import OrderKey, order_key_of, order_keys, run_order_fields
from .states import JobStatus

__all__ = [
    "AddedJobs",
    "BulkChange",
    "Claim",
    "DeviceState",
    "EventKind",
    "Finish",
    "GenerationRequest",
    "JobEvent",
    "JobRecord",
    "JobSpec",
    "ModelLoad",
    "RemovedJob",
    "requeued",
]


class JobSpec(NamedTuple):
    """A validated job, ready to be stored (it has no id yet). A named tuple, not a frozen dataclass:
    a ``submit_batch`` makes 100,000, and a dataclass's frozen ``__init__`` cost three times as much.
    Make it with keywords."""

    prompt: str
    params: dict[str, Any]
    seed: int
    priority: int
    group: str | None
    timeout: float | None
    max_retries: int
    metadata: dict[str, Any]
    model: str | None = None  # the model it runs on, by its name in the queue's models=; None: the only one


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """One stored job, as the database holds it."""

    id: int
    seq: int
    status: JobStatus
    priority: int
    group: str | None
    prompt: str
    params: dict[str, Any]
    seed: int
    metadata: dict[str, Any]
    timeout: float | None
    max_retries: int
    attempts: int = 0
    error: str | None = None
    progress: float = 0.0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float
    images: tuple[str, ...] = ()
    owner: str | None = None
    device: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    batch: str | None = None  # the batched pipeline call it ran in, if any
    model: str | None = None  # the model it runs on; None: the queue's only (or first) model
    revision: int = 0

    @property
    def order_key(self) -> OrderKey:
        return order_key_of(self)

    def request(self) -> GenerationRequest:
        return GenerationRequest(job_id=self.id, prompt=self.prompt, params=self.params, seed=self.seed)


class Claim(NamedTuple):
    """What ``Store.claim`` is asked, as one value: for a call that claims after other writes
    (``Store.finish_and_claim``). ``store.claim(**claim._asdict())`` is the claim alone."""

    owner: str
    device: str
    now: float
    lease: float
    batch_size: int = 1
    loaded: Collection[str | None] = ()
    affinity: int = 0
    serves: Collection[str] | None = None


class Finish(NamedTuple):
    """How one run of a job ended, as ``Store.finish`` is told it, kept for a later call: a
    worker's finishes wait in it for the next claim, to be stored in its transaction
    (``Store.finish_and_claim``)."""

    job_id: int
    owner: str
    status: JobStatus
    now: float
    error: str | None = None
    images: Sequence[str] = ()
    run_at: float | None = None

    def outcome(self) -> dict[str, Any]:
        """The keyword arguments of ``Store.finish`` (all but the job's id)."""
        return {"owner": self.owner, "status": self.status, "now": self.now, "error": self.error,
                "images": self.images, "run_at": self.run_at}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """What a generator gets: ``generator(request, on_step) -> list[PIL.Image.Image]``."""

    job_id: int
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


class EventKind(StrEnum):
    STATUS = "status"  # the job changed status (error, attempts and times may have changed with it)
    POSITION = "position"  # its place in the queue moved
    PROGRESS = "progress"  # a generation step finished
    MODEL = "model"  # the model the running job needs began or ended loading on its device
    REMOVED = "removed"  # pruned from the database (``status`` is the last one it had)


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """One change to one job, as ``ImageQueue.subscribe`` callbacks receive it."""

    kind: EventKind
    job_id: int
    status: JobStatus
    position: int | None
    progress: float
    error: str | None
    step: int | None = None
    total_steps: int | None = None


@dataclass(frozen=True, kw_only=True)
class ModelLoad:
    """A model being loaded on a device, for the jobs that wait for it."""

    model: str
    device: str
    since: float  # epoch seconds


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """Which models one device of this process holds, and what it is loading."""

    device: str
    loaded: tuple[str, ...]  # least recently used first
    loading: ModelLoad | None = None
    loads: int = 0  # models loaded on it so far (the ones given as pipelines are not counted)
    load_seconds: float = 0.0  # time those loads took, in all


@dataclass(frozen=True, kw_only=True)
class RemovedJob:
    """A job a prune deleted: enough to forget it in memory and to delete its image files."""

    id: int
    status: JobStatus
    images: tuple[str, ...] = ()


def requeued(now: float) -> dict[str, Any]:
    """What putting a finished job back in the queue by hand resets, as ``JobRecord`` fields: the
    one declaration of a fresh start (its new ``seq`` is set beside it)."""
    return {
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "error": None,
        "progress": 0.0,
        "images": (),
        "started_at": None,
        "finished_at": None,
        "run_at": now,
        "owner": None,
        "device": None,
        "batch": None,
        "cancel_requested": False,
        "updated_at": now,
    }


@dataclass(frozen=True, kw_only=True)
class BulkChange:
    """One change made alike to many jobs in one write (a bulk cancel, a bulk retry): which jobs,
    the revision it was stamped with and the fields it set. It says what their records would, at a
    fraction of the cost: building 100,000 records takes about a second, longer than the write itself.

    A change that puts jobs back in the queue also gives each one's run-order key (``keys``, in the
    order of ``ids``, which is then their run order): the only fields it sets that differ by job."""

    ids: tuple[int, ...]
    revision: int
    values: Mapping[str, Any]  # JobRecord field -> the value each of these jobs now has ("status" among them)
    keys: tuple[OrderKey, ...] = ()  # queued by the change: each job's run-order key, as ``ids``

    @property
    def status(self) -> JobStatus:
        status: JobStatus = self.values["status"]
        return status

    def applied_to(self, record: JobRecord) -> JobRecord:
        """``record`` (one of these jobs, as it was) after this change."""
        fields = dict(self.values)
        if self.keys:
            fields.update(run_order_fields(self.key_of[record.id]))
        return replace(record, revision=self.revision, **fields)

    @cached_property
    def key_of(self) -> dict[int, OrderKey]:
        """Job id -> its run-order key (for a change that queued the jobs)."""
        return dict(zip(self.ids, self.keys, strict=True))


class AddedJobs(Sequence[JobRecord]):
    """The jobs one ``Store.add`` stored, in the order given: a sequence of their records, each made
    when read. A ``submit_batch`` of 100,000 jobs spent longer building their records than
    inserting them, and its caller reads few; ``change()`` tells the queue's mirror about all of
    them at once, as it is told of a bulk retry.

    The records are the specs as stored: their JSON made its round trip at validation."""

    def __init__(
        self, specs: Sequence[JobSpec], ids: Sequence[int], *, first_seq: int, revision: int, now: float
    ) -> None:
        assert len(specs) == len(ids), "one id per spec"
        self._specs = specs
        self.ids = ids
        self.first_seq = first_seq
        self.revision = revision
        self.now = now

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> JobRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobRecord]: ...

    def __getitem__(self, index: int | slice) -> JobRecord | list[JobRecord]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(len(self))[index]]
        return self._record(range(len(self))[index])

    def record_of(self, job_id: int) -> JobRecord:
        """The record of one of these jobs, by its id."""
        return self._record(self._index_of[job_id])

    @cached_property
    def _index_of(self) -> dict[int, int]:
        return {job_id: i for i, job_id in enumerate(self.ids)}

    def _record(self, i: int) -> JobRecord:
        spec, now = self._specs[i], self.now
        return JobRecord(
            id=self.ids[i],
            seq=self.first_seq + i,
            status=JobStatus.QUEUED,
            priority=spec.priority,
            group=spec.group,
            prompt=spec.prompt,
            params=spec.params,
            seed=spec.seed,
            metadata=spec.metadata,
            timeout=spec.timeout,
            max_retries=spec.max_retries,
            model=spec.model,
            created_at=now,
            updated_at=now,
            run_at=now,
            revision=self.revision,
        )

    def change(self) -> BulkChange:
        """The add as one ``BulkChange``: these jobs, queued at its revision, each at its key."""
        seqs = range(self.first_seq, self.first_seq + len(self))
        keys = order_keys(priority=[spec.priority for spec in self._specs], seq=seqs)
        queued = {"status": JobStatus.QUEUED}
        return BulkChange(ids=tuple(self.ids), revision=self.revision, values=queued, keys=tuple(keys))
