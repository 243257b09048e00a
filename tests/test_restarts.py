"""Restarts a researcher can trust: owner identities, dead owners on this host recovered at once,
the device lock of an offloaded pipeline, and a close() during a run that logs nothing spurious.
(The process-level restarts, SIGKILL and a normal exit, are in test_processes.py.)"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from imgnb import ImageQueue, JobStatus, LeasePolicy
from imgnb.core.owners import Owner, dead_on_host
from imgnb.core.records import JobRecord, JobSpec
from imgnb.core.revisions import Run
from imgnb.gen import tiny_pipeline
from imgnb.queue.processes import alive, new_owner
from imgnb.store import SQLStore
from imgnb.testing import FakeGenerator, MemoryStore
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vm:12:170000:ab12", Owner(host="vm", pid=12, started=170000, token="ab12")),
        ("::1:12:170000:ab12", Owner(host="::1", pid=12, started=170000, token="ab12")),  # an IPv6 host
        ("vm:12:ab12", None),  # the format of an older imgnb: not judged
        ("vm:x:170000:ab12", None),
    ],
)
def test_owner_round_trips(text: str, expected: Owner | None) -> None:
    assert Owner.parse(text) == expected
    if expected is not None:
        assert str(expected) == text


def test_dead_on_host_judges_only_this_host() -> None:
    holders = ["a:1:100:t", "a:2:200:t", "b:3:300:t", "legacy:7:x"]
    living = {(1, 100)}  # pid 2 is gone; pid 3 lives on another host, which we cannot see
    assert dead_on_host(holders, host="a", alive=lambda pid, started: (pid, started) in living) == ["a:2:200:t"]


def test_a_reused_pid_is_not_the_dead_owner() -> None:
    me = new_owner()
    assert alive(me.pid, me.started)
    assert not alive(me.pid, me.started - 500)  # same pid, another start time: a different process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid, me.started)


def test_a_dead_local_owner_is_recovered_when_a_queue_opens(make_queue: MakeQueue, db_path: str) -> None:
    """Opening a queue recovers what a dead process of this host held, without waiting for the
    15 s lease, and the job keeps its place at the head."""
    store = MemoryStore()
    first, second = store.add([_spec("interrupted"), _spec("behind")], batch_keys=[None, None], now=time.time())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    ghost = str(Owner(host=new_owner().host, pid=child.pid, started=new_owner().started, token="dead"))
    store.claim(owner=ghost, device="host/gpu", now=time.time(), lease=15)
    assert store.holders() == {ghost}
    gen = FakeGenerator()
    q = make_queue(db_path, store=store, generator=gen, lease=LeasePolicy())
    job, after = q.get(first.id), q.get(second.id)
    job.result(timeout=10)
    after.result(timeout=10)
    assert gen.calls == [first.id, second.id] and job.attempts == 2
    assert store.holders() - {q.owner} == set()


def test_an_offloaded_pipeline_locks_the_device_it_computes_on(make_queue: MakeQueue, db_path: str) -> None:
    pipe = tiny_pipeline()

    class Offloaded(type(pipe)):  # type: ignore[misc]
        """As under enable_model_cpu_offload(): the weights sit on the CPU, the compute is on the GPU."""

        @property
        def _execution_device(self) -> torch.device:
            return torch.device("cuda:0")

    offloaded = Offloaded(**pipe.components)
    assert str(offloaded.device) == "cpu"
    q = make_queue(db_path, pipeline=offloaded, start=False)
    assert q.devices == ["cuda:0"]


def test_close_during_a_run_logs_nothing_spurious(
    make_queue: MakeQueue, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for trial in range(10):
        db = str(tmp_path / f"t{trial}.db")
        q = make_queue(db, generator=FakeGenerator(step_time=0.01, steps=200))
        job = q.submit("closed under it")
        wait_until(lambda job=job: job.status is JobStatus.PROCESSING and job.progress > 0)
        q.close()
        with ImageQueue(db, start=False) as check:
            back = check.get(job.id)
            assert (back.status, back.attempts) == (JobStatus.QUEUED, 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _spec(prompt: str) -> JobSpec:
    return JobSpec(prompt=prompt, params={}, seed=1, priority=1, group=None, timeout=None, max_retries=3, metadata={})


class StallsOnce(SQLStore):
    """An SQLStore whose next read of other processes' changes, once ``stall`` is set, holds the
    database thread for ``seconds``: as a long garbage collection or a slow disk would."""

    def __init__(self, db: str, seconds: float) -> None:
        super().__init__(db)
        self.seconds = seconds
        self.stall = threading.Event()

    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        if self.stall.is_set():
            self.stall.clear()
            time.sleep(self.seconds)  # the stall itself, not a wait for anything
        return super().changes_since(revision, applied=applied)


def test_a_queue_that_stalled_longer_than_its_lease_does_not_take_back_its_own_running_job(
    make_queue: MakeQueue, db_path: str
) -> None:
    """After a stall, the look for stalled jobs and the job's heartbeat are both due: the queue
    renews what it holds first. Before, its own look could find the lease run out, put the job back
    and drop the outcome of the run still going, so the job ran twice."""
    lease = LeasePolicy(lease=1.0, heartbeat=0.2, poll=0.02)
    store = StallsOnce(db_path, seconds=2.0)
    gen = FakeGenerator(steps=300, step_time=0.01)
    q = make_queue(db_path, store=store, generator=gen, lease=lease)
    job = q.submit("long")
    wait_until(lambda: q.step_of(job.id) is not None)
    store.stall.set()
    assert job.result(timeout=30)
    assert gen.calls == [job.id] and job.attempts == 1
