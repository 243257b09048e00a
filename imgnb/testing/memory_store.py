"""``MemoryStore``: the ``Store`` interface held in one process's memory.

It passes the same contract tests as ``SQLStore`` on SQLite and PostgreSQL, which is what shows
that ``Store`` is an interface and not a description of one SQL schema. It is also a fast store
for tests of the queue that need no database. Nothing survives the process, and two queues share
it only when they are given the same object.
"""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.affinity import Waiting, pick
from ..core.editing import EDITABLE_STATUSES, Place, Renumbering, check_editable, check_target, move_before, new_seqs
from ..core.history import pruned_ids
from ..core.merge import merge_patch
from ..core.ordering import OrderKey, order_keys
from ..core.records import AddedJobs, BulkChange, JobRecord, JobSpec, RemovedJob, requeued
from ..core.retry import has_runs_left
from ..core.revisions import Run, unread_spans
from ..core.states import FINAL_STATUSES, JobStatus, check_transition
from ..errors import JobNotFound
from ..store import Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Jobs, device locks and leases in a dict, behind one lock (every call is one transaction)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[int, JobRecord] = {}
        self._batch_keys: dict[int, str | None] = {}
        self._passed_over: dict[int, int] = {}  # claims that took a later job first (model affinity)
        self._devices: dict[str, tuple[str | None, float | None]] = {}  # name -> (owner, lease_until)
        self._revision = 0
        self._next_seq = 0
        self._next_id = 1
        self._images_dir = Path(tempfile.gettempdir()) / f"imgnb-memory-{id(self):x}"

    def __repr__(self) -> str:
        return "MemoryStore()"

    # -- helpers --------------------------------------------------------------------------------

    def _bump(self) -> int:
        self._revision += 1
        return self._revision

    def _one(self, job_id: int) -> JobRecord:
        record = self._jobs.get(job_id)
        if record is None:
            raise JobNotFound(f"no job with id {job_id}")
        return record

    def _put(self, record: JobRecord, **values: Any) -> JobRecord:
        updated = replace(record, **values)
        self._jobs[record.id] = updated
        return updated

    def _take_seq(self, n: int) -> int:
        first = self._next_seq
        self._next_seq += n
        return first

    def _where(self, test: Callable[[JobRecord], bool]) -> list[JobRecord]:
        return [r for r in self._jobs.values() if test(r)]

    # -- Store ----------------------------------------------------------------------------------

    def add(self, specs: Sequence[JobSpec], *, batch_keys: Sequence[str | None], now: float) -> AddedJobs:
        if not specs:
            return AddedJobs(specs, [], first_seq=0, revision=0, now=now)
        with self._lock:
            rev = self._bump()
            first = self._take_seq(len(specs))
            ids = range(self._next_id, self._next_id + len(specs))
            self._next_id += len(specs)
            added = AddedJobs(specs, ids, first_seq=first, revision=rev, now=now)
            for record, key in zip(added, batch_keys, strict=True):  # stored apart from the caller's specs
                self._jobs[record.id] = replace(
                    record, params=copy.deepcopy(record.params), metadata=copy.deepcopy(record.metadata)
                )
                self._batch_keys[record.id] = key
            return added

    def get(self, job_id: int) -> JobRecord:
        with self._lock:
            return self._one(job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        group: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[JobRecord]:
        with self._lock:
            found = self._where(
                lambda r: (status is None or r.status is JobStatus(status)) and (group is None or r.group == group)
            )
        if status is JobStatus.QUEUED:
            found.sort(key=lambda r: (r.order_key, r.id), reverse=newest_first)
        else:
            found.sort(key=lambda r: r.id, reverse=newest_first)
        return found[offset:] if limit is None else found[offset : offset + limit]

    def counts(self) -> dict[JobStatus, int]:
        with self._lock:
            counts = dict.fromkeys(JobStatus, 0)
            for record in self._jobs.values():
                counts[record.status] += 1
            return counts

    def queued_snapshot(self) -> tuple[int, list[tuple[int, OrderKey]]]:
        with self._lock:
            return self._revision, [(r.id, r.order_key) for r in self._jobs.values() if r.status is JobStatus.QUEUED]

    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        with self._lock:
            spans = unread_spans(revision, self._revision, applied)
            changed = self._where(lambda r: any(after < r.revision <= upto for after, upto in spans))
            return self._revision, sorted(changed, key=lambda r: (r.revision, r.id))

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
        with self._lock:
            holder, until = self._devices.get(device, (None, None))
            if holder not in (None, owner) and until is not None and until >= now:
                return []
            served = None if serves is None else frozenset(serves)
            queued = sorted(
                self._where(
                    lambda r: r.status is JobStatus.QUEUED and (served is None or r.model is None or r.model in served)
                ),
                key=lambda r: r.order_key,
            )
            if not queued:
                return []
            window = [Waiting(r.priority, r.model, self._passed_over.get(r.id, 0)) for r in queued[: affinity + 1]]
            k = pick(window, loaded=loaded, affinity=affinity)
            for passed in queued[:k]:
                self._passed_over[passed.id] = self._passed_over.get(passed.id, 0) + 1
            head = queued[k]
            key = self._batch_keys.get(head.id)
            chosen = [head]
            if batch_size > 1 and key is not None and head.attempts == 0:
                mates = [r for r in queued if r is not head and self._batch_keys.get(r.id) == key and r.attempts == 0]
                chosen += mates[: batch_size - 1]
            rev = self._bump()
            self._devices[device] = (owner, now + lease)
            label = f"{device}#{head.id}" if len(chosen) > 1 else None
            return [
                self._put(
                    r,
                    status=JobStatus.PROCESSING,
                    owner=owner,
                    device=device,
                    lease_until=now + lease,
                    attempts=r.attempts + 1,
                    started_at=now,
                    updated_at=now,
                    progress=0.0,
                    cancel_requested=False,
                    batch=label,
                    revision=rev,
                )
                for r in chosen
            ]

    def renew(self, *, owner: str, device: str, job_ids: Sequence[int], now: float, lease: float) -> set[int]:
        with self._lock:
            rev = self._bump()
            if self._devices.get(device, (None, None))[0] == owner:
                self._devices[device] = (owner, now + lease)
            asked = set()
            for job_id in job_ids:
                record = self._jobs.get(job_id)
                if record is not None and record.owner == owner and record.status is JobStatus.PROCESSING:
                    self._put(record, lease_until=now + lease, revision=rev)
                    if record.cancel_requested:
                        asked.add(job_id)
            return asked

    def release_device(self, *, owner: str, device: str) -> None:
        with self._lock:
            self._bump()
            if self._devices.get(device, (None, None))[0] == owner:
                self._devices[device] = (None, None)

    def _running(self, job_id: int, owner: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None or record.owner != owner or record.status is not JobStatus.PROCESSING:
            return None
        return record

    def set_progress(self, job_id: int, *, owner: str, progress: float, now: float) -> None:
        with self._lock:
            rev = self._bump()
            record = self._running(job_id, owner)
            if record is not None:
                self._put(record, progress=progress, updated_at=now, revision=rev)

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
        check_transition(JobStatus.PROCESSING, status)
        final = status is not JobStatus.PENDING
        with self._lock:
            rev = self._bump()
            record = self._running(job_id, owner)
            if record is None:
                return None
            progress = 1.0 if status is JobStatus.COMPLETE else record.progress if final else 0.0
            return self._put(
                record,
                status=status,
                updated_at=now,
                lease_until=None,
                error=error,
                run_at=record.run_at if final else (now if run_at is None else run_at),
                finished_at=now if final else None,
                images=tuple(images),
                progress=progress,
                revision=rev,
            )

    def cancel(self, job_id: int, *, now: float) -> JobRecord:
        with self._lock:
            current = self._one(job_id)
            if current.status is JobStatus.PROCESSING:
                values: dict[str, Any] = {"cancel_requested": True}
            else:
                check_transition(current.status, JobStatus.CANCELLED)
                values = {"status": JobStatus.CANCELLED, "finished_at": now, "error": None}
            return self._put(current, updated_at=now, revision=self._bump(), **values)

    def requeue(self, job_id: int, *, now: float) -> JobRecord:
        with self._lock:
            current = self._one(job_id)
            check_transition(current.status, JobStatus.QUEUED)
            self._passed_over.pop(job_id, None)
            return self._put(
                current,
                seq=self._take_seq(1),
                **requeued(now),
                revision=self._bump(),
            )

    def promote_due(self, *, now: float) -> list[JobRecord]:
        with self._lock:
            due = self._where(lambda r: r.status is JobStatus.PENDING and r.run_at <= now)
            if not due:
                return []
            rev = self._bump()
            return [self._put(r, status=JobStatus.QUEUED, updated_at=now, revision=rev) for r in due]

    def recover_stalled(self, *, now: float) -> list[JobRecord]:
        with self._lock:
            stalled = self._where(
                lambda r: r.status is JobStatus.PROCESSING and r.lease_until is not None and r.lease_until < now
            )
            return self._recover(stalled, now=now, why="stopped responding") if stalled else []

    def holders(self) -> set[str]:
        with self._lock:
            running = {r.owner for r in self._jobs.values() if r.status is JobStatus.PROCESSING and r.owner}
            return running | {holder for holder, _ in self._devices.values() if holder is not None}

    def recover_owners(self, owners: Collection[str], *, now: float) -> list[JobRecord]:
        if not owners:
            return []
        with self._lock:
            for name, (holder, _) in list(self._devices.items()):
                if holder in owners:
                    self._devices[name] = (None, None)
            held = self._where(lambda r: r.status is JobStatus.PROCESSING and r.owner in owners)
            return self._recover(held, now=now, why="died (its process is gone)")

    def _recover(self, lost_jobs: list[JobRecord], *, now: float, why: str) -> list[JobRecord]:
        rev = self._bump()
        recovered = []
        for lost in lost_jobs:
            said = f"its worker {lost.owner} {why} during attempt {lost.attempts}"
            values: dict[str, Any] = (
                {"status": JobStatus.QUEUED, "error": f"{said}; re-queued"}
                if has_runs_left(attempts=lost.attempts, max_retries=lost.max_retries)
                else {"status": JobStatus.ERROR, "error": f"{said}; no retries left", "finished_at": now}
            )
            recovered.append(self._put(lost, lease_until=None, progress=0.0, updated_at=now, revision=rev, **values))
        return recovered

    def abandon(self, *, owner: str, now: float) -> list[JobRecord]:
        with self._lock:
            rev = self._bump()
            for name, (holder, _) in list(self._devices.items()):
                if holder == owner:
                    self._devices[name] = (None, None)
            held = self._where(lambda r: r.owner == owner and r.status is JobStatus.PROCESSING)
            return [
                self._put(
                    r,
                    status=JobStatus.QUEUED,
                    attempts=r.attempts - 1,
                    lease_until=None,
                    progress=0.0,
                    started_at=None,
                    updated_at=now,
                    revision=rev,
                )
                for r in held
            ]

    def update_metadata(self, job_id: int, patch: Mapping[str, Any]) -> JobRecord:
        with self._lock:
            current = self._one(job_id)
            return self._put(current, metadata=merge_patch(current.metadata, patch), revision=self._bump())

    def recently_finished(self, *, limit: int, group: str | None = None) -> list[JobRecord]:
        with self._lock:
            done = self._where(
                lambda r: r.status.is_final and r.finished_at is not None and (group is None or r.group == group)
            )
        return sorted(done, key=lambda r: (r.finished_at, r.id), reverse=True)[:limit]

    def prune(
        self,
        *,
        statuses: Collection[JobStatus],
        group: str | None,
        finished_before: float | None,
        keep_last: int | None,
    ) -> list[RemovedJob]:
        if not set(statuses) <= FINAL_STATUSES:
            raise ValueError(f"only finished jobs are pruned, not {sorted(set(statuses) - FINAL_STATUSES)}")
        with self._lock:
            matching = self._where(lambda r: r.status in statuses and (group is None or r.group == group))
            chosen = pruned_ids(
                ((r.id, r.finished_at) for r in matching), finished_before=finished_before, keep_last=keep_last
            )
            if chosen:
                self._bump()
            removed = [self._jobs.pop(job_id) for job_id in chosen]
            for record in removed:
                self._batch_keys.pop(record.id, None)
                self._passed_over.pop(record.id, None)
        return [RemovedJob(id=r.id, status=r.status, images=r.images) for r in removed]

    def cancel_all(self, *, statuses: Collection[JobStatus], group: str | None, now: float) -> BulkChange:
        if not set(statuses) <= EDITABLE_STATUSES:
            raise ValueError(
                f"only waiting jobs are cancelled in bulk, not {sorted(set(statuses) - EDITABLE_STATUSES)}"
            )
        with self._lock:
            waiting = self._where(lambda r: r.status in statuses and (group is None or r.group == group))
            change = BulkChange(
                ids=tuple(sorted(r.id for r in waiting)),
                revision=self._bump(),
                values={"status": JobStatus.CANCELLED, "finished_at": now, "error": None, "updated_at": now},
            )
            for record in waiting:
                self._jobs[record.id] = change.applied_to(record)
            return change

    def requeue_failed(self, *, group: str | None, now: float) -> BulkChange:
        with self._lock:
            failed = self._where(lambda r: r.status is JobStatus.ERROR and (group is None or r.group == group))
            failed.sort(key=lambda r: (r.seq, r.id))
            first, rev = self._take_seq(len(failed)), self._bump()
            change = BulkChange(
                ids=tuple(r.id for r in failed),
                revision=rev,
                values=requeued(now),
                keys=tuple(order_keys(priority=[r.priority for r in failed], seq=range(first, first + len(failed)))),
            )
            for record in failed:
                self._passed_over.pop(record.id, None)  # as a requeue by hand
                self._jobs[record.id] = change.applied_to(record)
            return change

    def set_priority(self, job_id: int, priority: int, *, now: float) -> JobRecord:
        with self._lock:
            current = self._one(job_id)
            check_editable(job_id, current.status, "given another priority")
            if current.priority == priority:
                return current
            return self._put(current, priority=priority, seq=self._take_seq(1), updated_at=now, revision=self._bump())

    def move(self, job_id: int, *, to: Place | int, now: float) -> list[JobRecord]:
        with self._lock:
            current = self._one(job_id)
            check_editable(job_id, current.status, "moved")
            if isinstance(to, Place):
                plan = Renumbering((job_id,), below=to is Place.FRONT)
            else:
                target = self._one(to)
                check_target(job_id, current.priority, target.id, target.status, target.priority)
                waiting = self._where(lambda r: r.status in EDITABLE_STATUSES and r.priority == current.priority)
                plan = move_before([r.id for r in sorted(waiting, key=lambda r: (r.seq, r.id))], job_id, target.id)
            if not plan.ids:
                return []
            lowest = min(r.seq for r in self._jobs.values())
            taken = 0 if plan.below else self._take_seq(len(plan.ids))
            rev = self._bump()
            seqs = new_seqs(plan, lowest=lowest, taken=taken)
            moved = [self._put(self._jobs[i], seq=seq, updated_at=now, revision=rev) for i, seq in seqs.items()]
        return sorted(moved, key=lambda r: r.seq)

    def default_images_dir(self) -> Path:
        return self._images_dir

    def close(self) -> None:
        """Nothing to release: the jobs live as long as this object."""
