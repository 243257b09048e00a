"""A worker process for the multi-process tests: runs a queue on DB until killed or idle.

Each run appends ``pid job_id start end`` to LOG, so the test can check that no two runs on one
device overlapped and that no job ran twice unnoticed. A job's ``steps`` and ``step_time``
parameters override ``--steps`` and ``--step-time``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from PIL import Image

from imgnb import GenerationRequest, ImageQueue, LeasePolicy, RetryPolicy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("log")
    parser.add_argument("--step-time", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--exit-when-idle", action="store_true")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument(
        "--exit-while-running", action="store_true", help="sys.exit(0) without close() once a job runs here"
    )
    parser.add_argument("--die-after-write", action="store_true", help="SIGKILL itself once a job's images are written")
    args = parser.parse_args()
    if args.die_after_write:
        import imgnb.queue.worker as worker_module

        write = worker_module.save_images

        def write_then_die(*given: Any) -> list[str]:
            write(*given)
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable")

        worker_module.save_images = write_then_die

    def generator(request: GenerationRequest, on_step: object) -> list[Image.Image]:
        start = time.time()
        steps = int(request.params.get("steps", args.steps))  # a job may ask for its own
        step_time = float(request.params.get("step_time", args.step_time))
        for step in range(1, steps + 1):
            time.sleep(step_time)
            on_step(step, steps)  # type: ignore[operator]
        with open(args.log, "a") as log:
            log.write(f"{os.getpid()} {request.job_id} {start} {time.time()}\n")
        return [Image.new("RGB", (8, 8), (request.seed % 256, 0, 0))]

    generator.device = "gpu0"  # type: ignore[attr-defined]  # every process shares this one "device"
    lease = LeasePolicy(lease=args.lease, heartbeat=min(0.2, args.lease / 3), poll=0.02)
    images = os.path.join(os.path.dirname(os.path.abspath(args.log)), "images")
    retry = RetryPolicy(base_delay=0.05)
    if args.exit_while_running:  # the interpreter's normal exit, with no close(): atexit must hand back
        q = ImageQueue(args.db, generator=generator, lease=lease, retry_policy=retry, images_dir=images)
        print("ready", flush=True)
        while not q.jobs(status="processing"):
            time.sleep(0.01)
        print("exiting", flush=True)
        sys.exit(0)
    with ImageQueue(args.db, generator=generator, lease=lease, retry_policy=retry, images_dir=images) as q:
        print("ready", flush=True)
        while True:
            time.sleep(0.2)
            if args.exit_when_idle and not q.jobs(status="queued") and not q.jobs(status="processing"):
                return


if __name__ == "__main__":
    main()
