"""A worker process of the scale benchmark: one queue, one device, driven through stdin.

It opens ``ImageQueue(DB, start=False)`` with a generator on ``--device``, prints ``ready``, starts
the queue on a line ``go`` and closes it at the end of its input. The generator notes on stdout,
as ``start JOB T`` and ``stop JOB T`` (``time.monotonic()``, which every process of the machine
shares), when a job began and when a cancellation reached it at a step, and as ``end JOB T`` when
its generator returned, so the benchmark can time wake-ups across processes.

- ``--noop``: return a 1x1 image at once (throughput runs);
- otherwise run the job's ``steps`` parameter (default 1) steps of ``step_time`` seconds (default 0).

Run by ``bench_scale.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from imgnb import GenerationRequest, ImageQueue, LeasePolicy
from imgnb.errors import JobInterrupted
from imgnb.gen.base import OnStep

_out = threading.Lock()


def say(*words: object) -> None:
    with _out:
        print(*words, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("images", type=Path)
    parser.add_argument("--device", default="d0")
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("--poll", type=float, help="LeasePolicy.poll (default: the default policy's)")
    parser.add_argument("--watching", action="store_true", help="follow every change at once, as a notebook does")
    args = parser.parse_args()
    image = Image.new("RGB", (1, 1))

    def generator(request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        if args.noop:
            return [image]
        say("start", request.job_id, time.monotonic())
        steps, step_time = int(request.params.get("steps", 1)), float(request.params.get("step_time", 0.0))
        for step in range(1, steps + 1):
            time.sleep(step_time)
            try:
                on_step(step, steps)
            except JobInterrupted:
                say("stop", request.job_id, time.monotonic())
                raise
        say("end", request.job_id, time.monotonic())
        return [image]

    lease = LeasePolicy() if args.poll is None else LeasePolicy(poll=args.poll)
    q = ImageQueue(
        args.db,
        generator={args.device: generator},
        start=False,
        lease=lease,
        images_dir=args.images,
        headless=not args.watching,
    )
    say("ready")
    for line in sys.stdin:
        if line.strip() == "go":
            q.start()
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
