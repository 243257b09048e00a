"""The scale benchmark's smoke run (``bench_scale.py --quick``) runs to its end and prints every row.

It keeps the benchmark from rotting (``make bench`` is not part of ``make test``): worker processes
on SQLite and PostgreSQL, wake-ups, the scaling table, the idle gap, the overhead and the batch
time. The numbers are the benchmark's to print, not a test's to judge (they depend on the
machine); only their presence and that every job ran are checked here.
"""

from __future__ import annotations

import re

from tests.fixtures.benchruns import expected_backends, run_quick_bench

LIMIT_S = 110  # under the suite's 120 s per test; the quick run takes about 25 s here
NUMBER = r"\d+\.\d"
WAKE = re.compile(rf"^  (sqlite|postgresql) +(submit -> start|state -> event|cancel -> stop) +p50 +{NUMBER}", re.M)
SCALE = re.compile(r"^  (sqlite|postgresql) +(\d+) +(\d+)$", re.M)
CPU = re.compile(r"^    CPU busy +(\d+%) +(\d+%)", re.M)
WATCHING = re.compile(
    rf"^  2 workers that follow every change at once.*: \d+ jobs/s, CPU/job {NUMBER}.* \(headless:", re.M
)
GAP = re.compile(rf"^ +(512|1024)x\d+ +gap p50 +{NUMBER} .* PNG encode \+ write +{NUMBER}", re.M)


def test_quick_scale_benchmark_prints_every_measure() -> None:
    out = run_quick_bench("bench_scale", limit_s=LIMIT_S)
    backends = expected_backends()
    assert {(b, m) for b, m in WAKE.findall(out)} == {
        (b, m) for b in backends for m in ("submit -> start", "state -> event", "cancel -> stop")
    }, out
    assert {b for b, _, _ in SCALE.findall(out)} == backends, out
    assert len(CPU.findall(out)) == len(backends), out  # the machine's CPU use beside each row
    assert len(WATCHING.findall(out)) == ("postgresql" in backends), out  # and beside it, watching workers
    assert {size for size in GAP.findall(out)} == {"512", "1024"}, out
    assert re.search(rf"^overhead per job, no-op generator, SQLite \(300 jobs\): {NUMBER}", out, re.M), out
    assert re.search(rf"^  PNG \+ finish in the next claim, by hand: {NUMBER}.* \(queue x{NUMBER}", out, re.M)
    assert re.search(rf"^  one hand-over between two threads \(a wake-up\): {NUMBER} us$", out, re.M), out
    assert re.search(rf"^submit_batch of 10,000 jobs into a file of 10,000: {NUMBER}", out, re.M), out
    assert re.search(rf"^  the driver's bare executemany of the same rows, same file: {NUMBER}.* \(queue x", out, re.M)
    assert "Traceback" not in out and "failed" not in out, out
