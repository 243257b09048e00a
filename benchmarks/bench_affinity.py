"""Model affinity benchmark: how many model loads, and how long, with affinity 0, 8 and 32.

200 jobs alternate at random between two models on one device that holds one model at a time
(``max_loaded=1``); each model's loader sleeps ``--load`` seconds (2 by default), as a checkpoint
read from disk would, and returns a ``FakeGenerator`` (no torch). The same job sequence runs with
each affinity; the table prints, side by side, the loads made, the time they took (measured by the
queue), the total time, and the fairness cost: the most jobs submitted after a job that started
before it (bounded by the affinity). Run:
``python benchmarks/bench_affinity.py [--jobs 200] [--load 2.0] [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
import time
from pathlib import Path

from imgnb import ImageQueue
from imgnb.testing import FakeGenerator

AFFINITIES = (0, 8, 32)


def run(
    models: list[str], affinity: int, *, load: float, steps: int, step_time: float, folder: Path
) -> dict[str, float]:
    def loader(device: str) -> FakeGenerator:
        time.sleep(load)  # reading a checkpoint
        return FakeGenerator(steps=steps, step_time=step_time)

    q = ImageQueue(
        folder / f"affinity{affinity}.db",
        models={"a": loader, "b": loader},
        devices=["bench"],
        affinity=affinity,
        start=False,
        images_dir=folder / f"images{affinity}",
    )
    try:
        jobs = q.submit_batch([{"prompt": f"job {i}", "model": m, "seed": i} for i, m in enumerate(models)])
        t = time.perf_counter()
        q.start()
        for job in jobs:
            job.result(timeout=3600)
        total = time.perf_counter() - t
        state = q.device_states()[0]
        started = sorted(jobs, key=lambda j: j.record.started_at or 0.0)
        overtaken = max(sum(o.id > j.id for o in started[:i]) for i, j in enumerate(started))
        return {"loads": state.loads, "load s": state.load_seconds, "total s": total, "overtaken": overtaken}
    finally:
        q.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--load", type=float, default=2.0, help="seconds each model load sleeps")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-time", type=float, default=0.01, help="seconds per generation step")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="60 jobs, 0.2 s loads (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.load = 60, 0.2
    rng = random.Random(args.seed)
    models = [rng.choice("ab") for _ in range(args.jobs)]
    switches = sum(x != y for x, y in itertools.pairwise(models))
    print(
        f"{args.jobs} jobs, models chosen at random ({switches} switches in submit order), loads of "
        f"{args.load:g} s, {args.steps} steps of {args.step_time:g} s, one device holding one model"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            n: run(models, n, load=args.load, steps=args.steps, step_time=args.step_time, folder=Path(tmp))
            for n in AFFINITIES
        }
    base = results[0]
    print(f"{'':<28}" + "".join(f"{f'affinity={n}':>16}" for n in AFFINITIES))
    rows = [
        ("model loads", "loads", "{:.0f}"),
        ("time loading (s)", "load s", "{:.1f}"),
        ("total time (s)", "total s", "{:.1f}"),
        ("most later jobs run first", "overtaken", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:<28}" + "".join(f"{fmt.format(results[n][key]):>16}" for n in AFFINITIES))
    print(
        f"{'total time vs affinity=0':<28}"
        + "".join(f"{results[n]['total s'] / base['total s']:>16.2f}" for n in AFFINITIES)
    )


if __name__ == "__main__":
    main()
