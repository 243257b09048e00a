"""Scale benchmark: wake-ups across processes, PostgreSQL scaling, the device's idle gap, overhead.

Everything is measured in one run and printed side by side:

1. wake-ups, PostgreSQL and SQLite: a notebook-side queue (no generator) in this process and a
   worker process (``scale_worker.py``), both with the default ``LeasePolicy`` (0.25 s poll):
   - submit -> start: from ``submit()`` here to the job's generator starting there, on an idle
     queue (the worker has waited 20-70 ms since its last job);
   - state -> event: from the generator's return there to this queue's ``complete`` event (the
     worker writes a 1x1 PNG and commits in between);
   - cancel -> stop: from ``cancel()`` here to the running job's next step raising there (steps
     of 2 ms);
2. PostgreSQL scaling: claims + finishes per second with 1, 2, 4 and 8 worker processes, each on a
   device of its own, no-op generator, jobs submitted beforehand; and the same on SQLite. The
   workers are headless, as ``imgnb worker`` runs them; beside the table, the most processes once
   more with workers that follow every change at once, as a notebook's queue does;
3. the idle gap of one device between the end of one generator call and the start of the next,
   for a generator that returns a 512x512 or 1024x1024 image after sleeping (the GIL free, as
   while a GPU computes) twice as long as PNG-encoding and writing that image takes, which is
   measured first, in the same run, and printed beside;
4. overhead per job with a no-op generator (1x1 image), SQLite, through the whole queue, beside
   what the store and the file system alone take for it (PNG, then the finish in the next
   claim's commit, on one thread), and
   beside what one hand-over between two threads costs here (a job takes several: the device,
   writer, database and loop threads each wake the next);
5. one ``submit_batch`` of 100,000 jobs into a file that holds 100,000 jobs already (SQLite),
   beside the driver's bare ``executemany`` of the same rows into the same file.

Time stamps cross processes as ``time.monotonic()``, one clock for the whole machine (Linux).
PostgreSQL runs as a throwaway server on loopback (``tests/fixtures/postgres.py``); without its
binaries those rows are skipped, saying so. ``--quick`` is a ~30 s smoke run with fewer rounds and
jobs (the test suite runs it).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgnb import GenerationRequest, ImageQueue, JobStatus
from imgnb.core.records import Claim, EventKind, Finish, JobEvent, JobSpec
from imgnb.queue.files import save_images
from imgnb.store import SQLStore

_SPEC = JobSpec(prompt="p", params={}, seed=1, priority=1, group=None, timeout=None, max_retries=0, metadata={})
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "scale_worker.py"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
}


@dataclass(frozen=True, kw_only=True)
class Sizes:
    wake_rounds: int = 100
    sqlite_wake_rounds: int = 40
    scale_procs: tuple[int, ...] = (1, 2, 4, 8)
    scale_jobs: int = 3000
    gap_jobs: int = 30
    noop_jobs: int = 2000
    handovers: int = 20_000
    batch: int = 100_000


QUICK = Sizes(
    wake_rounds=10,
    sqlite_wake_rounds=5,
    scale_procs=(1, 2),
    scale_jobs=200,
    gap_jobs=3,
    noop_jobs=300,
    handovers=3000,
    batch=10_000,
)


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"p50 {pct(samples, 50) * 1000:7.1f}  p99 {pct(samples, 99) * 1000:7.1f}  max {max(samples) * 1000:7.1f}"


# -- worker processes --------------------------------------------------------------------------


class Worker:
    """A ``scale_worker.py`` process; its ``start``/``stop`` lines are collected by a thread."""

    def __init__(self, db: str, folder: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), db, str(folder / "images"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"scale_worker.py did not start: {line!r}")
        self.seen: dict[tuple[str, int], float] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            what, job, at = line.split()
            with self._cond:
                self.seen[(what, int(job))] = float(at)
                self._cond.notify_all()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_for(self, what: str, job: int, timeout: float = 30.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: (what, job) in self.seen, timeout):
                raise TimeoutError(f"no {what} of job {job} from the worker in {timeout} s")
            return self.seen[(what, job)]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait(timeout=30) != 0:
            raise RuntimeError(f"scale_worker.py exited {self.proc.returncode}")


# -- 1. wake-ups -------------------------------------------------------------------------------


@dataclass
class Wakeups:
    submit_to_start: list[float]
    state_to_event: list[float]
    cancel_to_stop: list[float]


def wakeups(db: str, folder: Path, rounds: int) -> Wakeups:
    rng = random.Random(1)
    worker = Worker(db, folder, "--device", "wake")
    worker.go()
    completed: dict[int, float] = {}
    done: dict[int, threading.Event] = {}

    def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.STATUS and event.status is JobStatus.COMPLETE:
            completed.setdefault(event.job_id, time.monotonic())
        if event.status.is_final and event.job_id in done:
            done[event.job_id].set()

    result = Wakeups([], [], [])
    with ImageQueue(db, images_dir=folder / "images") as q:
        q.subscribe(on_event)
        for _ in range(rounds):
            time.sleep(rng.uniform(0.02, 0.07))  # the worker is idle, waiting for work
            submitted = time.monotonic()
            job = q.submit("wake up")
            done[job.id] = threading.Event()
            result.submit_to_start.append(worker.wait_for("start", job.id) - submitted)
            if not done[job.id].wait(30):
                raise TimeoutError(f"job {job.id} did not end")
            result.state_to_event.append(completed[job.id] - worker.wait_for("end", job.id))
        for _ in range(rounds):
            job = q.submit("cancel me", steps=5000, step_time=0.002)
            done[job.id] = threading.Event()
            worker.wait_for("start", job.id)
            time.sleep(rng.uniform(0.01, 0.05))
            asked = time.monotonic()
            q.cancel(job.id)
            result.cancel_to_stop.append(worker.wait_for("stop", job.id) - asked)
            if not done[job.id].wait(30):
                raise TimeoutError(f"job {job.id} was not cancelled")
    worker.close()
    return result


# -- 2. scaling --------------------------------------------------------------------------------


@dataclass
class Throughput:
    per_second: float
    lock_waits: float | None  # PostgreSQL: sessions of this database waiting for a lock, on average
    cpu_busy: float  # the share of the machine's CPU time that was busy meanwhile (all processes)
    cpu_per_job: float  # busy CPU seconds of the machine per job


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (Linux)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle and waiting for I/O
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def throughput(db: str, folder: Path, procs: int, jobs: int, *, watching: bool = False) -> Throughput:
    """Claims + finishes per second of ``procs`` no-op worker processes, each on its own device:
    jobs over the time from the first start to the last finish, as the database recorded them.
    On PostgreSQL, the sessions waiting for a lock are counted every 10 ms meanwhile. The workers
    are headless, as ``imgnb worker`` makes them, or ``watching`` every change as a notebook does."""
    with ImageQueue(db, start=False, images_dir=folder / "images") as q:
        q.submit_batch([{"prompt": f"job {i}"} for i in range(jobs)])
        watch = ["--watching"] if watching else []
        workers = [Worker(db, folder, "--noop", "--device", f"d{i}", *watch) for i in range(procs)]
        done = threading.Event()
        waits: list[int] = []
        sampler = threading.Thread(target=sample_lock_waits, args=(db, done, waits), daemon=True)
        if "://" in db:
            sampler.start()
        busy_before, total_before = cpu_times()
        for worker in workers:
            worker.go()
        deadline = time.monotonic() + 600
        while q.counts()["complete"] < jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{procs} workers did not finish {jobs} jobs")
            time.sleep(0.1)  # a look now and then: the time measured is the database's own
        busy_after, total_after = cpu_times()
        done.set()
        for worker in workers:
            worker.close()
        finished = q.jobs(status="complete")
    if sampler.is_alive():
        sampler.join()
    first = min(j.started_at for j in finished if j.started_at is not None)
    last = max(j.finished_at for j in finished if j.finished_at is not None)
    busy = busy_after - busy_before
    return Throughput(
        jobs / (last - first).total_seconds(),
        statistics.mean(waits) if waits else None,
        cpu_busy=busy / (total_after - total_before),
        cpu_per_job=busy / jobs,
    )


def sample_lock_waits(url: str, done: threading.Event, waits: list[int]) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        while not done.wait(0.01):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            waits.append(int(row[0]) if row else 0)


# -- 3-5. one process --------------------------------------------------------------------------


def photo_like(size: int) -> Image.Image:
    """Smooth colour fields with fine grain: PNG makes about 1.4 bytes a pixel of it, as of a photo."""
    rng = random.Random(size)
    small = Image.frombytes("RGB", (16, 16), bytes(rng.randrange(256) for _ in range(16 * 16 * 3)))
    smooth = small.resize((size, size), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((size, size), 30).convert("RGB")
    return Image.blend(smooth, grain, 0.05)


def encode_seconds(image: Image.Image, rounds: int) -> list[float]:
    """Seconds to write the PNG the queue writes (with its text chunks), to memory."""
    out = []
    request = GenerationRequest(job_id=1, prompt="a lighthouse at dusk", params={"steps": 4}, seed=1)
    for _ in range(rounds):
        started = time.perf_counter()
        save_images(Path(tempfile.gettempdir()) / "imgnb-bench-encode", request, [image])
        out.append(time.perf_counter() - started)
    return out


def idle_gaps(folder: Path, size: int, jobs: int, gen_time: float) -> list[float]:
    """Seconds the device sat idle between consecutive generator calls (all jobs queued up front)."""
    image = photo_like(size)
    calls: list[tuple[float, float]] = []

    def generator(request: GenerationRequest, on_step: Any) -> list[Image.Image]:
        began = time.perf_counter()
        time.sleep(gen_time)  # the accelerator at work: the GIL is free meanwhile
        on_step(1, 1)
        calls.append((began, time.perf_counter()))
        return [image]

    with ImageQueue(folder / f"gap{size}.db", generator={"gpu": generator}, start=False) as q:
        handles = q.submit_batch([{"prompt": f"gap {i}"} for i in range(jobs)])
        q.start()
        handles[-1].result(timeout=600)
    return [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(calls)]


def noop_overhead(folder: Path, jobs: int) -> float:
    image = Image.new("RGB", (1, 1))

    def noop(request: GenerationRequest, on_step: Any) -> list[Image.Image]:
        on_step(1, 1)
        return [image]

    with ImageQueue(folder / "noop.db", generator={"gpu": noop}, start=False) as q:
        handles = q.submit_batch([{"prompt": f"n{i}"} for i in range(jobs)])
        began = time.perf_counter()
        q.start()
        handles[-1].result(timeout=600)
        took = time.perf_counter() - began
        assert all(h.status is JobStatus.COMPLETE for h in handles)
    return took / jobs


def store_work(folder: Path, jobs: int) -> float:
    """What one no-op job costs the store and the file system when nothing else runs: its PNG
    written, then its finish stored with the next job's claim (one commit, as a busy worker
    does), called one after the other on one thread (the queue's floor per job)."""
    image = Image.new("RGB", (1, 1))
    store = SQLStore(str(folder / "store-work.db"))
    try:
        store.add([_SPEC] * jobs, batch_keys=[None] * jobs, now=time.time())
        began = time.perf_counter()
        (claimed,) = store.claim(owner="w", device="d", now=time.time(), lease=30)
        for left in range(jobs - 1, -1, -1):
            paths = save_images(folder / "store-work", claimed.request(), [image])
            finish = Finish(claimed.id, "w", JobStatus.COMPLETE, time.time(), images=paths)
            if left:
                _, (claimed,) = store.finish_and_claim([finish], Claim("w", "d", time.time(), 30))
            else:
                store.finish(finish.job_id, **finish.outcome())
        return (time.perf_counter() - began) / jobs
    finally:
        store.close()


def handover_seconds(rounds: int) -> float:
    """One hand-over between two threads: a call put on a queue that a sleeping thread waits on,
    as the worker's threads hand a job on (half of a measured round trip)."""
    there: queue.SimpleQueue[int] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(rounds):
            back.put(there.get())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    began = time.perf_counter()
    for i in range(rounds):
        there.put(i)
        back.get()
    took = time.perf_counter() - began
    thread.join()
    return took / rounds / 2


def batch_seconds(folder: Path, n: int) -> tuple[float, float]:
    """``submit_batch`` of ``n`` jobs into a file of ``n``, and the same rows inserted by the
    driver alone (``sqlite3`` ``executemany`` of the columns ``add`` writes) into a copy of that
    file as it was: the floor under the queue's validation, bookkeeping and handles."""
    path = folder / "batch.db"
    with ImageQueue(path, start=False) as q:
        q.submit_batch([{"prompt": f"already there {i}", "seed": i} for i in range(n)])
    shutil.copy(path, folder / "bare.db")
    with ImageQueue(path, start=False) as q:
        items = [{"prompt": f"job {i}", "seed": i} for i in range(n)]
        began = time.perf_counter()
        q.submit_batch(items)
        queue_took = time.perf_counter() - began
    now = time.time()
    columns = ("seq", "status", "priority", "prompt", "params", "seed", "meta", "timeout", "max_retries",
               "attempts", "progress", "images", "created_at", "updated_at", "run_at", "cancel_requested",
               "passed_over", "revision")  # fmt: skip
    rows = [
        (10 * n + i, "queued", 1, f"job {i}", "{}", i, "{}", 300.0, 3, 0, 0.0, "[]", now, now, now, 0, 0, 10 * n)
        for i in range(n)
    ]
    insert = f"INSERT INTO imgnb_job ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    conn = sqlite3.connect(folder / "bare.db", isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        bare_took = time.perf_counter() - began
    finally:
        conn.close()
    return queue_took, bare_took


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    tmp = Path(tempfile.mkdtemp(prefix="imgnb-bench-scale-"))
    sys.path.insert(0, str(ROOT))  # the tests' throwaway PostgreSQL server
    from tests.fixtures.postgres import throwaway_databases

    skipped: list[str] = []
    with throwaway_databases(skipped) as new_db:
        wake: dict[str, Wakeups] = {}
        scale: dict[str, dict[int, Throughput]] = {}
        if new_db is not None:
            wake["postgresql"] = wakeups(new_db("wake"), tmp / "pg-wake", sizes.wake_rounds)
            scale["postgresql"] = {
                k: throughput(new_db(f"scale{k}"), tmp / f"pg-scale{k}", k, sizes.scale_jobs) for k in sizes.scale_procs
            }
            most = sizes.scale_procs[-1]
            watching = throughput(new_db("watching"), tmp / "pg-watching", most, sizes.scale_jobs, watching=True)
        wake["sqlite"] = wakeups(str(tmp / "wake.db"), tmp / "sqlite-wake", sizes.sqlite_wake_rounds)
        scale["sqlite"] = {
            k: throughput(str(tmp / f"scale{k}.db"), tmp / f"sqlite-scale{k}", k, sizes.scale_jobs)
            for k in sizes.scale_procs
        }
    encode = {size: encode_seconds(photo_like(size), 5) for size in (512, 1024)}
    gen_time = {size: 2 * pct(encode[size], 50) for size in (512, 1024)}
    gaps = {size: idle_gaps(tmp, size, sizes.gap_jobs, gen_time[size]) for size in (512, 1024)}
    overhead = noop_overhead(tmp, sizes.noop_jobs)
    floor = store_work(tmp, sizes.noop_jobs)
    handover = handover_seconds(sizes.handovers)
    batch, bare = batch_seconds(tmp, sizes.batch)

    print(f"imgnb scale benchmark{' (--quick)' if args.quick else ''}, {os.cpu_count()} CPUs\n")
    for line in skipped:
        print(line)
    print("wake-ups across processes (ms), default LeasePolicy (0.25 s poll)")
    for backend, w in wake.items():
        print(f"  {backend:10} submit -> start  {ms(w.submit_to_start)}  ({len(w.submit_to_start)} rounds)")
        print(f"  {backend:10} state -> event   {ms(w.state_to_event)}")
        print(f"  {backend:10} cancel -> stop   {ms(w.cancel_to_stop)}")
    print("\nclaims + finishes per second, no-op generator, one device per worker process")
    print(f"  {'processes':10} " + " ".join(f"{k:>9}" for k in sizes.scale_procs))
    for backend, row in scale.items():
        first = row[sizes.scale_procs[0]].per_second
        print(f"  {backend:10} " + " ".join(f"{row[k].per_second:9.0f}" for k in sizes.scale_procs))
        print(f"  {'  vs 1':10} " + " ".join(f"{row[k].per_second / first:9.2f}" for k in sizes.scale_procs))
        if backend == "postgresql":
            print(f"  {'  lock wait':10} " + " ".join(f"{row[k].lock_waits or 0:9.2f}" for k in sizes.scale_procs))
        print(f"  {'  CPU busy':10} " + " ".join(f"{row[k].cpu_busy:9.0%}" for k in sizes.scale_procs))
        print(f"  {'  CPU/job':10} " + " ".join(f"{row[k].cpu_per_job * 1000:7.2f}ms" for k in sizes.scale_procs))
        if backend == "postgresql":
            headless = row[most]
            print(
                f"  {most} workers that follow every change at once, as a notebook's queue does:"
                f" {watching.per_second:.0f} jobs/s, CPU/job {watching.cpu_per_job * 1000:.2f} ms"
                f" (headless: {headless.per_second:.0f} jobs/s, {headless.cpu_per_job * 1000:.2f} ms)"
            )
    print("  (lock wait: sessions waiting for a lock, on average over the run; CPU busy: of the whole")
    print("   machine, every process and the database server together; CPU/job: its busy time per job)")
    print(f"\nidle gap of the device between generator calls (ms), {sizes.gap_jobs} jobs")
    for size in (512, 1024):
        print(
            f"  {size:4}x{size:<4} gap {ms(gaps[size])} | PNG encode + write {pct(encode[size], 50) * 1000:6.1f}"
            f" | generator call {gen_time[size] * 1000:.0f}"
        )
    print(f"\noverhead per job, no-op generator, SQLite ({sizes.noop_jobs} jobs): {overhead * 1000:.3f} ms")
    print(f"  PNG + finish in the next claim, by hand: {floor * 1000:.3f} ms (queue x{overhead / floor:.2f})")
    print(f"  one hand-over between two threads (a wake-up): {handover * 1e6:.1f} us")
    print(f"submit_batch of {sizes.batch:,} jobs into a file of {sizes.batch:,}: {batch:.2f} s")
    print(f"  the driver's bare executemany of the same rows, same file: {bare:.2f} s (queue x{batch / bare:.2f})")


if __name__ == "__main__":
    main()
