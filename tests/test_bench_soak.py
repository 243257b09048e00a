"""The soak benchmark's smoke run (``bench_soak.py --quick``) runs and finds nothing wrong.

It keeps the benchmark from rotting (``make bench`` is not part of ``make test``) and checks the
queue in passing: with worker processes, SIGKILLs and kills during ``submit_batch``, no job is lost
or completed twice, no process logs "database is locked" or another error, no batch is stored in
part, on SQLite and PostgreSQL; and the restart gap after a SIGKILL and after a normal exit is
measured (its value is the benchmark's to print, not a test's to time).
"""

from __future__ import annotations

import re

from tests.fixtures.benchruns import expected_backends, run_quick_bench

LIMIT_S = 110  # under the suite's 120 s per test; the quick run takes about 40 s here
# backend, scenario, jobs, lost, double, locked, partial, errors ("-": does not apply)
ROW = re.compile(r"^(sqlite|postgresql) +(.+?) +(\d+) +(\d+|-) +(\d+|-) +(\d+) +(\d+|-) +(\d+)$", re.MULTILINE)
GAP = re.compile(
    r"^restart gap \(s\): (\w+) SIGKILL \d+\.\d \(ran first: (?:yes|no), attempts \d+.*"
    r"\| normal exit \d+\.\d \(ran first: (?:yes|no), attempts \d+",
    re.MULTILINE,
)


def test_quick_soak_finds_nothing_wrong() -> None:
    out = run_quick_bench("bench_soak", limit_s=LIMIT_S)
    backends = expected_backends()
    rows = ROW.findall(out)
    assert sorted(r[0] for r in rows) == sorted([*backends] * 3), out
    for backend, scenario, jobs, *counts in rows:
        assert int(jobs) > 0, (backend, scenario)
        assert all(c in ("0", "-") for c in counts), (
            f"{backend} {scenario}: lost/double/locked/partial/errors {counts}\n{out}"
        )
    assert {m.group(1) for m in GAP.finditer(out)} == backends, out
