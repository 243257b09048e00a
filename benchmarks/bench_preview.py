"""Preview benchmark: what live previews cost the generation thread, side by side with previews off.

Runs the same jobs through ``DiffusersGenerator`` with previews on (the default 0.25 s interval, and
every step) and off, rounds interleaved, and prints per step:

- the time spent making previews (the previewer timed directly, and its share of the step time);
- the wall-clock ratio of the runs with previews on to those with them off (the median of the
  rounds' ratios), which also counts the x0 tap on the scheduler; on a shared machine its jitter
  is larger than the previews' share, so the directly timed share is the figure to read.

Pipelines: the tiny SD 1.x one, and with ``--full-size`` SD 1.5's architecture with random weights
(``bench_generation.sd15_random``): fp16 on CUDA when there is one, else fp32 on the CPU.
Run: ``.venv/bin/python benchmarks/bench_preview.py [--full-size] [--size 512] [--steps 4]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from bench_generation import sd15_random

from imgnb.core.records import GenerationRequest
from imgnb.gen import DiffusersGenerator, tiny_pipeline


class TimedPreviewer:
    """Stands in for a generator's previewer and adds up the time spent in it."""

    def __init__(self, previewer: Any) -> None:
        self.previewer = previewer
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.previewer(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def discard(step: int, total: int, previews: Any = None) -> None:
    """The queue's ``on_step`` hands previews on; here they are dropped."""


def run(gen: DiffusersGenerator, requests: list[GenerationRequest]) -> float:
    start = time.perf_counter()
    for request in requests:
        gen(request, discard)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full-size", action="store_true", help="SD 1.5-sized random pipeline")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (64 tiny, 512 full size)")
    parser.add_argument("--steps", type=int, default=None, help="steps per job (20 tiny, 4 full size on CPU)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (8 tiny, 1 full size)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.full_size:
        pipe = sd15_random("cuda", torch.float16) if cuda else sd15_random("cpu", torch.float32)
        label = "SD 1.5-sized, random weights, " + ("fp16, CUDA" if cuda else "fp32, CPU")
        size, steps, jobs = args.size or 512, args.steps or (20 if cuda else 4), args.jobs or 1
    else:
        pipe, label = tiny_pipeline(), "tiny SD pipeline, CPU"
        size, steps, jobs = args.size or 64, args.steps or 20, args.jobs or 8
    label += f", torch threads={torch.get_num_threads()}"
    params = {"steps": steps, "width": size, "height": size, "guidance_scale": 7.5}
    prompts = [f"a lighthouse, study {i}" for i in range(jobs)]
    requests = [GenerationRequest(job_id=i, prompt=p, params=params, seed=i) for i, p in enumerate(prompts)]
    off = DiffusersGenerator(pipe, previews=False)
    ways: dict[str, DiffusersGenerator] = {"off": off}
    timers: dict[str, TimedPreviewer] = {}
    for name, interval in (("default (0.25 s)", 0.25), ("every step", 0.0)):
        gen = DiffusersGenerator(pipe, preview_interval=interval)
        timers[name] = gen.previewer = TimedPreviewer(gen.previewer)  # type: ignore[assignment]
        ways[name] = gen
    run(off, requests[:1])  # warm up
    walls: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so that a machine speeding up or slowing down weighs on all alike
        for name, gen in ways.items():
            walls[name].append(run(gen, requests))
    base = statistics.median(walls["off"])
    print(f"imgnb preview benchmark: {label}; {jobs} job(s) x {steps} steps, {size}x{size}; {args.rounds} rounds\n")
    header = ("step ms", "previews/job", "ms/preview", "preview share", "wall vs off")
    print(f"{'previews':18} {header[0]:>9} {header[1]:>13} {header[2]:>11} {header[3]:>14} {header[4]:>12}")
    print(f"{'off':18} {1000 * base / (jobs * steps):9.2f} {'':>13} {'':>11} {'':>14} {1.0:12.3f}")
    for name, timer in timers.items():
        wall = statistics.median(walls[name])
        ratio = statistics.median(on / off for on, off in zip(walls[name], walls["off"], strict=True))
        share = timer.seconds / sum(walls[name])
        per_preview = 1000 * timer.seconds / max(timer.calls, 1)
        print(
            f"{name:18} {1000 * wall / (jobs * steps):9.2f} {timer.calls / (jobs * args.rounds):13.1f} "
            f"{per_preview:11.3f} {100 * share:13.3f}% {ratio:12.3f}"
        )


if __name__ == "__main__":
    main()
