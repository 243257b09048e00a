"""A worker process of the soak benchmark: runs jobs from one database and writes a ledger.

It runs a queue with a ``FakeGenerator`` on one device and notes in its ledger (``soak_ledger``)
when its queue opened, what it submitted, each generator return and each completed outcome the
store accepted from it. Its log goes to stderr, which the benchmark keeps (``capture_logs``).
Ways to end:

- ``--until-done TOTAL``: once TOTAL jobs exist and all are final, close the queue and exit 0;
- ``--stdin``: a line ``exit`` calls ``sys.exit()`` with the queue still open (the interpreter's
  normal exit path, as a script that forgets ``close()``); end of input closes the queue;
- SIGKILL from the benchmark, at any moment.

Run by ``bench_soak.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soak_ledger
from PIL import Image

from imgnb import GenerationRequest, ImageQueue, JobStatus, LeasePolicy
from imgnb.gen.base import OnStep
from imgnb.store import SQLStore
from imgnb.testing import FakeGenerator

FINAL = {JobStatus.COMPLETE.value, JobStatus.ERROR.value, JobStatus.CANCELLED.value}


@dataclass(kw_only=True)
class LedgerGenerator(FakeGenerator):
    """A FakeGenerator that notes each call and each returned image in the ledger."""

    ledger: Path

    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        soak_ledger.append(self.ledger, "start", request.job_id, time.time())
        images = super().__call__(request, on_step)
        soak_ledger.append(self.ledger, "gen", request.job_id, time.time())
        return images


class LedgerStore(SQLStore):
    """The SQL store, noting each completed outcome it stored for this process (after the commit)."""

    def __init__(self, db: str, ledger: Path) -> None:
        super().__init__(db)
        self.ledger = ledger

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        record = super().finish(*args, **kwargs)
        self._note([record])
        return record

    def finish_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        """The finishes a claim took into its transaction (or stored alone, when it found nothing)."""
        finished, claimed = super().finish_and_claim(*args, **kwargs)
        self._note(finished)
        return finished, claimed

    def _note(self, records: list[Any]) -> None:
        for record in records:
            if record is not None and record.status is JobStatus.COMPLETE:
                soak_ledger.append(self.ledger, "stored", record.id)


def submit_share(q: ImageQueue, ledger: Path, jobs: int, prefix: str, rng: random.Random) -> None:
    """Submit ``jobs`` jobs in batches of 1 to 20, each batch its own group."""
    done = 0
    while done < jobs:
        size = min(jobs - done, rng.randint(1, 20))
        group = f"{prefix}-{done}"
        items = [{"prompt": f"{group} #{i}", "seed": rng.randrange(2**31)} for i in range(size)]
        handles = q.submit_batch(items, group=group)
        soak_ledger.append(ledger, "batch", group, ",".join(str(j.id) for j in handles))
        done += size


def all_final(q: ImageQueue, total: int) -> bool:
    counts = q.counts()
    return sum(counts.values()) >= total and sum(n for s, n in counts.items() if s not in FINAL) == 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--device", default="soak")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--step-time", type=float, default=0.0)
    lease_help = "default: LeasePolicy()"
    parser.add_argument("--lease", type=float, nargs=3, metavar=("LEASE", "HEARTBEAT", "POLL"), help=lease_help)
    parser.add_argument("--submit", type=int, default=0, help="jobs this process submits first")
    parser.add_argument("--group", default="soak", help="group prefix of the submitted batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until-done", type=int, metavar="TOTAL")
    parser.add_argument("--stdin", action="store_true")
    parser.add_argument("--deadline", type=float, default=300.0, help="--until-done gives up after this (exit 3)")
    args = parser.parse_args()
    soak_ledger.capture_logs()

    generator = LedgerGenerator(steps=args.steps, step_time=args.step_time, device=args.device, ledger=args.ledger)
    lease = LeasePolicy(lease=args.lease[0], heartbeat=args.lease[1], poll=args.lease[2]) if args.lease else None
    opened = time.time()
    q = ImageQueue(
        args.db,
        generator={args.device: generator},
        lease=lease,
        images_dir=args.ledger.parent / "images",
        store=LedgerStore(args.db, args.ledger),
    )
    soak_ledger.append(args.ledger, "open", q.owner, opened)
    if args.submit:
        submit_share(q, args.ledger, args.submit, args.group, random.Random(args.seed))
    if args.stdin:
        for line in sys.stdin:
            if line.strip() == "exit":
                sys.exit(0)  # the queue is left open on purpose
        q.close()
        return 0
    if args.until_done is not None:
        end = time.monotonic() + args.deadline
        while not all_final(q, args.until_done):
            if time.monotonic() > end:
                q.close()
                return 3
            time.sleep(0.05)  # polling the condition above, not waiting for something to happen
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
