"""The quickstart, end to end: ``python -m imgnb.demo`` (what ``make demo`` runs).

Builds the tiny offline Stable Diffusion pipeline, submits a few jobs (one urgent, a batch), prints
positions and progress while they run, and lists the PNG files with their seeds. Run it twice: the
second run finds the first run's jobs in ``runs/demo.db``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import ImageQueue, JobEvent, JobStatus, tiny_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="runs/demo.db", help="SQLite file (or SQLAlchemy URL) for the queue")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)

    before = 0
    if Path(args.db).exists():
        with ImageQueue(args.db, start=False) as old:
            before = len(old.jobs())
        print(f"{args.db} already holds {before} jobs from earlier runs; they are kept.")

    started = time.perf_counter()
    pipe = tiny_pipeline()
    took = time.perf_counter() - started
    print(f"loaded torch and built the tiny pipeline in {took:.1f} s (random weights, no download)")

    with ImageQueue(args.db, pipeline=pipe, start=False) as q:
        common = {"steps": args.steps, "width": 64, "height": 64, "guidance_scale": 7.5}
        jobs = [q.submit("a watercolor fox", seed=7, **common)]
        jobs += q.submit_batch(
            [{"prompt": f"a lighthouse at dusk, study {i}", "seed": 100 + i, **common} for i in range(3)],
            group="lighthouses",
        )
        jobs.append(q.submit("an urgent sketch of a cat", priority="high", **common))
        print("\nqueued (position 1 runs next):")
        for job in sorted(jobs, key=lambda j: j.position or 0):
            print(f"  #{job.position}  job {job.id:<4} {job.priority:<6} seed={job.seed:<11} {job.prompt!r}")

        finished: list[str] = []
        q.subscribe(lambda e: finished.append(_line(e)) if e.status.is_final else None)
        q.start()
        for job in sorted(jobs, key=lambda j: j.position or 0):
            job.result(timeout=300)
        print("\nfinished in run order:")
        for line in finished:
            print(" ", line)
        print("\nimages (seed and parameters are in each PNG's text chunks):")
        for job in jobs:
            assert job.status is JobStatus.COMPLETE
            print(f"  job {job.id:<4} {job.images[0]}")
        print(
            f"\n{len(jobs)} jobs done in {time.perf_counter() - started:.1f} s; the database now holds "
            f"{before + len(jobs)} jobs. Next: `.venv/bin/jupyter lab notebooks/01_quickstart.ipynb`."
        )


def _line(event: JobEvent) -> str:
    return f"job {event.job_id:<4} {event.status.value}" + (f": {event.error}" if event.error else "")


if __name__ == "__main__":
    main()
