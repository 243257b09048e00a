"""The scale benchmark's smoke run (``bench_scale.py --quick``) runs to its end and prints every row.

It keeps the benchmark from rotting (``make bench`` is not part of ``make test``): worker processes
on SQLite and PostgreSQL, wake-ups, the scaling table, the idle gap, the overhead and the batch
time. The numbers are the benchmark's to print, not a test's to judge (they depend on the
machine); only their presence and that every job ran are checked here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures._support import running_in_ci
from tests.fixtures.postgres import find_pg_bindir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_scale.py"
LIMIT_S = 110  # under the suite's 120 s per test; the quick run takes about 25 s here
NUMBER = r"\d+\.\d"
WAKE = re.compile(rf"^  (sqlite|postgresql) +(submit -> start|state -> event|cancel -> stop) +p50 +{NUMBER}", re.M)
SCALE = re.compile(r"^  (sqlite|postgresql) +(\d+) +(\d+)$", re.M)
GAP = re.compile(rf"^ +(512|1024)x\d+ +gap p50 +{NUMBER} .* PNG encode \+ write +{NUMBER}", re.M)


def run_quick() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its worker processes too can be killed as one group
    )
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"bench_scale.py --quick ran past {LIMIT_S} s:\n{out}")
    assert proc.returncode == 0, out
    return out


def test_quick_scale_benchmark_prints_every_measure() -> None:
    out = run_quick()
    backends = {"sqlite", "postgresql"} if find_pg_bindir() is not None or running_in_ci() else {"sqlite"}
    assert {(b, m) for b, m in WAKE.findall(out)} == {
        (b, m) for b in backends for m in ("submit -> start", "state -> event", "cancel -> stop")
    }, out
    assert {b for b, _, _ in SCALE.findall(out)} == backends, out
    assert {size for size in GAP.findall(out)} == {"512", "1024"}, out
    assert re.search(rf"^overhead per job, no-op generator, SQLite \(300 jobs\): {NUMBER}", out, re.M), out
    assert re.search(rf"^submit_batch of 10,000 jobs into a file of 10,000: {NUMBER}", out, re.M), out
    assert "Traceback" not in out and "failed" not in out, out
