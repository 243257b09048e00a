"""Several processes on one database: the device lock, SIGKILL recovery, concurrent metadata."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgnb import ImageQueue, JobStatus
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]
WORKER = [sys.executable, str(Path(__file__).with_name("proc_worker.py"))]
ROOT = str(Path(__file__).resolve().parents[1])


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def read_log(log: Path) -> list[tuple[int, int, float, float]]:
    if not log.exists():
        return []
    return [
        (int(p), int(j), float(s), float(e)) for p, j, s, e in (line.split() for line in log.read_text().splitlines())
    ]


@pytest.mark.slow
def test_two_processes_never_run_two_jobs_on_one_device(make_queue: MakeQueue, db_url: str, tmp_path: Path) -> None:
    client = make_queue(db_url)  # no generator: only submits and watches
    jobs = client.submit_batch([{"prompt": f"p{i}", "seed": i} for i in range(12)])
    log = tmp_path / "runs.log"
    workers = [spawn(db_url, str(log), "--step-time", "0.02", "--exit-when-idle") for _ in range(2)]
    for proc in workers:
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()  # type: ignore[union-attr]
    runs = read_log(log)
    assert sorted(j for _, j, _, _ in runs) == sorted(j.id for j in jobs)  # each ran exactly once
    spans = sorted((s, e) for _, _, s, e in runs)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))
    wait_until(lambda: all(j.status is JobStatus.COMPLETE for j in jobs))  # seen by the client through the database


@pytest.mark.slow
def test_sigkill_mid_job_is_recovered_at_its_old_place(make_queue: MakeQueue, db_path: str, tmp_path: Path) -> None:
    client = make_queue(db_path)  # no generator: it stores, watches and recovers stalled jobs
    victim = client.submit("long one", seed=1)
    log = tmp_path / "runs.log"
    proc = spawn(db_path, str(log), "--step-time", "0.2", "--steps", "100")
    wait_until(lambda: victim.status is JobStatus.PROCESSING)
    later = [client.submit(f"later {i}", seed=i) for i in range(3)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()  # type: ignore[union-attr]
    killed_at = time.monotonic()
    wait_until(lambda: victim.status is JobStatus.QUEUED)  # lease 1 s in tests (15 s by default)
    assert time.monotonic() - killed_at < 5
    assert (victim.position, victim.attempts) == (1, 1)  # its old place, the killed run counted
    assert [j.position for j in later] == [2, 3, 4]
    assert "stopped responding" in (victim.error or "")
    gen = FakeGenerator()
    rescuer = make_queue(db_path, generator=gen)
    for job in (victim, *later):
        job.result(timeout=10)
    assert gen.calls == [victim.id, *(j.id for j in later)]
    assert victim.attempts == 2 and victim.error is None
    assert read_log(log) == []  # the killed process never finished a run
    assert rescuer.counts()["complete"] == 4


def _patch_many(db: str, worker: int) -> None:
    with ImageQueue(db, start=False) as q:
        for i in range(50):
            q.update_metadata(1, {"by": {f"p{worker}": {f"k{i}": i}}})


@pytest.mark.slow
def test_metadata_merge_across_processes(make_queue: MakeQueue, db_path: str) -> None:
    import multiprocessing

    q = make_queue(db_path, start=False)
    job = q.submit("shared", metadata={"by": {"origin": True}})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_patch_many, args=(db_path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    merged = q.get(job.id).metadata["by"]
    assert merged["origin"] is True
    assert {k: len(v) for k, v in merged.items() if k != "origin"} == {f"p{w}": 50 for w in range(4)}
