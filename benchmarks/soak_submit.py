"""The batch submitter of the soak benchmark: one ``submit_batch`` of many jobs, to be killed.

It opens a queue that runs nothing, builds the items, notes ``go`` in its ledger, calls
``submit_batch`` once with all the items as one group, notes ``done`` and closes. The benchmark
kills it with SIGKILL at a random moment after ``go`` and then checks that the group is stored
whole or not at all. Its log goes to stderr, which the benchmark keeps (``capture_logs``).

Run by ``bench_soak.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import soak_ledger

from imgnb import ImageQueue


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--group", required=True)
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args()
    soak_ledger.capture_logs()

    with ImageQueue(args.db, start=False) as q:
        items = [{"prompt": f"{args.group} #{i}", "seed": i} for i in range(args.jobs)]
        soak_ledger.append(args.ledger, "go", time.time())
        q.submit_batch(items, group=args.group)
        soak_ledger.append(args.ledger, "done", time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
