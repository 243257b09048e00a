"""A worker process for the multi-process tests: runs a queue on DB until killed or idle.

Each run appends ``pid job_id start end`` to LOG, so the test can check that no two runs on one
device overlapped and that no job ran twice unnoticed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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
    args = parser.parse_args()

    def generator(request: GenerationRequest, on_step: object) -> list[Image.Image]:
        start = time.time()
        for step in range(1, args.steps + 1):
            time.sleep(args.step_time)
            on_step(step, args.steps)  # type: ignore[operator]
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
