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

from imgnb import ImageQueue, JobStatus, LeasePolicy
from imgnb.queue.processes import HOST_ENV
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]
WORKER = [sys.executable, str(Path(__file__).with_name("proc_worker.py"))]
ROOT = str(Path(__file__).resolve().parents[1])


def spawn(*args: str, host: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    if host is not None:
        env[HOST_ENV] = host  # a process that says it runs on another machine
    proc = subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def read_log(log: Path) -> list[tuple[int, int, float, float]]:
    if not log.exists():
        return []
    return [
        (int(p), int(j), float(s), float(e)) for p, j, s, e in (line.split() for line in log.read_text().splitlines())
    ]


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


@pytest.mark.parametrize(
    ("host", "said"),
    [
        (None, "died (its process is gone)"),  # this host: its pid is gone, seen at once
        ("another-machine", "stopped responding"),  # another host: found when its lease runs out
    ],
)
def test_sigkill_mid_job_is_recovered_at_its_old_place(
    make_queue: MakeQueue, db_path: str, tmp_path: Path, host: str | None, said: str
) -> None:
    client = make_queue(db_path)  # no generator: it stores, watches and recovers stalled jobs
    victim = client.submit("long one", seed=1)
    log = tmp_path / "runs.log"
    proc = spawn(db_path, str(log), "--step-time", "0.2", "--steps", "100", host=host)
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
    assert said in (victim.error or "")
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


@pytest.mark.parametrize("how", ["sigkill", "normal exit"])
def test_a_new_queue_runs_the_interrupted_job_first_and_at_once(
    make_queue: MakeQueue, db_path: str, tmp_path: Path, how: str
) -> None:
    """The restart a notebook user sees: the interrupted job is the next to run, within seconds,
    under the default 15 s lease (so no lease is waited for)."""
    client = make_queue(db_path)
    victim = client.submit("interrupted", seed=1)
    later = client.submit("behind it", seed=2)
    log = tmp_path / "runs.log"
    args = ["--step-time", "0.1", "--steps", "100", "--lease", "15"]
    if how == "sigkill":
        proc = spawn(db_path, str(log), *args)
        wait_until(lambda: victim.status is JobStatus.PROCESSING)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    else:
        proc = spawn(db_path, str(log), *args, "--exit-while-running")
        assert proc.stdout is not None and proc.stdout.readline().strip() == "exiting"  # it runs the job now
        assert proc.wait(timeout=5) == 0  # without waiting out the 10 s generation
        wait_until(lambda: victim.status is JobStatus.QUEUED and victim.attempts == 0)  # handed back, uncounted
    proc.stdout.close()  # type: ignore[union-attr]
    gen = FakeGenerator()
    opened = time.monotonic()
    make_queue(db_path, generator=gen, lease=LeasePolicy())  # the default 15 s lease
    victim.result(timeout=10)
    assert time.monotonic() - opened < 5  # not the 15 s lease (measured in benchmarks/bench_soak.py)
    later.result(timeout=10)
    assert gen.calls == [victim.id, later.id]  # the interrupted job ran first
    assert victim.attempts == (1 if how == "normal exit" else 2)  # a normal exit's run is not counted
    assert read_log(log) == []  # the interrupted generation was stopped, not finished and thrown away
