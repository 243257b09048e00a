"""Queue scale benchmark: 100,000 jobs in one SQLite file.

Prints one table: submit rates, position and lookup latency at 1,000 and 100,000 jobs side by
side, rows touched by a state change, per-job overhead with a no-op generator, memory and reopen
time. Run: ``.venv/bin/python benchmarks/bench_queue.py [--jobs 100000]``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from imgnb import GenerationRequest, ImageQueue, JobStatus


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def fill(q: ImageQueue, n: int, chunk: int = 20_000) -> float:
    """Submit n jobs in batches; returns jobs/s."""
    t = time.perf_counter()
    done = 0
    while done < n:
        k = min(chunk, n - done)
        q.submit_batch([{"prompt": f"job {done + i}", "seed": done + i} for i in range(k)])
        done += k
    return n / (time.perf_counter() - t)


def latency(q: ImageQueue, ids: list[int]) -> dict[str, float]:
    rng = random.Random(1)
    jobs = [q.get(rng.choice(ids)) for _ in range(200)]
    pos = timed(lambda: [j.position for j in jobs], 50)  # 200 positions per sample
    per_pos = [t / len(jobs) for t in pos]
    get = timed(lambda: q.get(rng.choice(ids)), 500)
    return {
        "position p50": pct(per_pos, 50),
        "position p99": pct(per_pos, 99),
        "get p50": pct(get, 50),
        "get p99": pct(get, 99),
    }


REOPEN = """
import sys, time
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
import imgnb
before = rss()
t = time.perf_counter()
q = imgnb.ImageQueue(sys.argv[1], start=False)
took = time.perf_counter() - t
assert q.get(int(sys.argv[2])).position == int(sys.argv[3])
print(took, before, rss())
q.close()
"""


def reopen_in_fresh_process(db: Path, job_id: int, position: int) -> tuple[float, float, float]:
    """Time and memory of opening the big queue in a new process, as after a kernel restart."""
    out = subprocess.run(
        [sys.executable, "-c", REOPEN, str(db), str(job_id), str(position)], capture_output=True, text=True, check=True
    ).stdout.split()
    took, before, after = (float(x) for x in out[-3:])
    return took, before, after


def noop(request: GenerationRequest, on_step: object) -> list[Image.Image]:
    on_step(1, 1)  # type: ignore[operator]
    return [Image.new("RGB", (1, 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--noop-jobs", type=int, default=500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows: list[tuple[str, str, str]] = []

    small = ImageQueue(tmp / "small.db", start=False)
    fill(small, 1_000)
    small_ids = [j.id for j in small.jobs(status="queued")]
    small_lat = latency(small, small_ids)
    small.close()

    q = ImageQueue(tmp / "big.db", start=False)
    t = time.perf_counter()
    for i in range(2_000):
        q.submit(f"one by one {i}")
    one_by_one = 2_000 / (time.perf_counter() - t)
    batch_rate = fill(q, args.jobs - 2_000)
    ids = [j.id for j in q.jobs(status="queued")]
    big_lat = latency(q, ids)
    for key in small_lat:
        rows.append((key + " (ms)", f"{small_lat[key]:.4f}", f"{big_lat[key]:.4f}"))

    # a state change touches one row: count rows stamped with the revision it wrote
    victim = ids[len(ids) // 2]
    t0 = time.perf_counter()
    q.cancel(victim)
    cancel_ms = (time.perf_counter() - t0) * 1000
    rev = q.get(victim).record.revision
    q.close()
    with sqlite3.connect(tmp / "big.db") as conn:
        (touched,) = conn.execute("SELECT COUNT(*) FROM imgnb_job WHERE revision = ?", (rev,)).fetchone()

    reopen_s, rss_before, rss_after = reopen_in_fresh_process(tmp / "big.db", ids[-1], len(ids) - 1)

    # overhead per job with a no-op generator, through the whole queue (claim, run, store, events)
    with ImageQueue(tmp / "noop.db", generator=noop, start=False) as nq:
        jobs = nq.submit_batch([{"prompt": f"n{i}"} for i in range(args.noop_jobs)])
        t = time.perf_counter()
        nq.start()
        jobs[-1].result(timeout=600)
        noop_ms = (time.perf_counter() - t) * 1000 / args.noop_jobs
        assert all(j.status is JobStatus.COMPLETE for j in jobs)

    print(f"imgnb queue benchmark, SQLite {sqlite3.sqlite_version}, {args.jobs:,} jobs\n")
    print(f"{'measure':34} {'1,000 jobs':>12} {f'{args.jobs:,} jobs':>14} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:34} {a:>12} {b:>14} {float(b) / float(a):>7.2f}")
    print()
    print(f"{'submit one by one (jobs/s)':34} {one_by_one:>12,.0f}")
    print(f"{'submit_batch (jobs/s)':34} {batch_rate:>12,.0f}")
    print(f"{'cancel at 100k (ms)':34} {cancel_ms:>12.2f}")
    print(f"{'rows written by that cancel':34} {touched:>12}")
    print(f"{'reopen with 100k queued (s)':34} {reopen_s:>12.3f}   (a new process, as after a restart)")
    print(f"{'memory of that queue (MiB RSS)':34} {rss_after - rss_before:>12.0f}   ({rss_after:.0f} in all)")
    print(f"{'overhead per no-op job (ms)':34} {noop_ms:>12.2f}")


if __name__ == "__main__":
    main()
