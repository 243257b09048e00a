"""Soak benchmark: worker processes, SIGKILLs and restarts on one database, SQLite and PostgreSQL.

Each scenario runs on a fresh database of each backend (PostgreSQL: a throwaway server on loopback,
started with ``tests/fixtures/postgres.py``; skipped, with a printed line, where the server binaries
are missing):

1. processes x jobs: 4 worker processes each submit 250 jobs (``submit_batch`` of 1 to 20 jobs, one
   group each) while all four run jobs, each on a device of its own (so their claims race), until
   every job is final;
2. SIGKILL chaos: 300 jobs, 3 worker slots; 60 times a worker is killed with SIGKILL at a random
   moment (0 to 0.2 s after it was seen running a job: in the run, around storing its outcome or in
   the next claim) and a new process is started on the same device, until every job is final;
3. kill during submit: 40 times, a process doing one ``submit_batch`` of 5,000 jobs is killed at a
   random moment of that call (uniform over 1.2x the time an uninterrupted one took);
4. restart gap: a process runs a 10 s job with another queued behind it and, once the generator
   has started, is killed with SIGKILL or ends normally (``sys.exit()`` without ``close()``; the
   time that exit takes is printed too); then a new process on the same host opens a queue on the
   same device: the seconds from its ``ImageQueue(...)`` to the interrupted job running again (its
   ``started_at`` in the database), whether it ran before the job behind it, and its attempts.
   These queues use the default ``LeasePolicy`` (15 s lease); scenarios 1 and 2 use 1 s leases.

Counted, from the database and from each process's ledger and log (``soak_ledger``):

- lost: jobs whose submit returned but that are not complete at the end;
- double: jobs completed by more than one process with the outcome stored (the store accepted a
  ``complete`` outcome from each); generator runs whose outcome was refused or never stored (a
  kill between the generator's return and the commit) are counted apart, as re-runs;
- locked: log records, in any process, saying "database is locked" (or a PostgreSQL lock error);
- partial: ``submit_batch`` groups stored in part (looked at right after each kill and at the end);
- errors: any other log record at ERROR or above, and exits other than 0 or SIGKILL.

Run: ``.venv/bin/python benchmarks/bench_soak.py [--quick] [--backends sqlite,postgresql]``;
``--quick`` is a ~1 minute smoke run with fewer jobs and kills (the test suite runs it), where the
restart gaps, mostly waiting, run beside the other scenarios: their times are then taken under load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import soak_ledger

from imgnb import ImageQueue, JobStatus
from imgnb.core.records import JobRecord
from imgnb.store import SQLStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
SHORT_LEASE = ("--lease", "1.0", "0.2", "0.05")  # lease, heartbeat, poll (s); the gap runs use the default
LOCK_ERROR = re.compile(r"database is locked|deadlock detected|lock timeout|could not obtain lock", re.IGNORECASE)
FINAL = (JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.CANCELLED)
GAP_STEP_TIME = 0.05
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    procs: int = 4
    per_proc: int = 250
    chaos_jobs: int = 300
    chaos_slots: int = 3
    kills: int = 60
    batch: int = 5000
    submit_kills: int = 40
    gap_steps: int = 200  # the interrupted job's run: 200 steps of 0.05 s
    patience: float = 240.0  # seconds to wait for every job to be final before giving up


FULL = Sizes()
QUICK = replace(FULL, per_proc=25, chaos_jobs=60, kills=8, submit_kills=6, patience=60.0)


@dataclass
class Row:
    backend: str
    scenario: str
    jobs: int
    lost: int | None = None
    double: int | None = None
    locked: int = 0
    partial: int | None = None
    errors: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Gap:
    backend: str
    how: str
    seconds: float | None
    ran_first: bool | None
    attempts: int | None
    note: str = ""


@dataclass(frozen=True)
class Backend:
    name: str
    new_db: Callable[[Path], str]  # a fresh database for the scenario whose files go in this folder


# -- child processes ----------------------------------------------------------------------------


@dataclass(eq=False)
class Child:
    popen: subprocess.Popen[str]
    ledger: Path
    log: Path
    killed: bool = False

    def owner(self) -> str | None:
        opened = soak_ledger.entries(self.ledger, "open")
        return opened[0][0] if opened else None

    def opened_at(self) -> float | None:
        opened = soak_ledger.entries(self.ledger, "open")
        return float(opened[0][1]) if opened else None

    def kill(self) -> bool:
        """SIGKILL; True if it was still running."""
        alive = self.popen.poll() is None
        if alive:
            self.popen.send_signal(signal.SIGKILL)
            self.killed = True
        self.popen.wait()
        return alive


class Procs:
    """The child processes of one scenario, each with its ledger and log in ``folder``; any still
    running at the end are killed (the ``with`` block stops by itself even when a check fails)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[Child] = []

    def start(self, script: str, db: str, *args: str, stdin: bool = False) -> Child:
        name = f"{Path(script).stem}-{len(self.children)}"
        ledger, log = self.folder / f"{name}.ledger", self.folder / f"{name}.log"
        with log.open("w") as err:
            popen = subprocess.Popen(
                [sys.executable, str(HERE / script), db, str(ledger), *args],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=ENV,
                text=True,
            )
        child = Child(popen, ledger, log)
        self.children.append(child)
        return child

    def settle(self, store: SQLStore, timeout: float) -> bool:
        """Wait until every child has exited, or until one failed and every job is final (the
        others, waiting for jobs that will never come, are killed on leaving the block)."""

        def settled() -> bool:
            codes = [child.popen.poll() for child in self.children]
            failed = any(code not in (0, None) for code in codes)
            return None not in codes or (failed and all_final(store))

        return wait_for(settled, timeout, interval=0.1)

    def wait_all(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.1, end - time.monotonic()))

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            if child.popen.poll() is None:
                child.kill()
            if child.popen.stdin is not None:
                child.popen.stdin.close()

    def ledger(self, kind: str) -> list[list[str]]:
        return [row for child in self.children for row in soak_ledger.entries(child.ledger, kind)]

    def tally_logs(self, row: Row) -> None:
        """Lock errors and other errors in every child's log, and exits that were not clean."""
        lease_lost = 0
        for child in self.children:
            for level, text in soak_ledger.log_records(child.log):
                if LOCK_ERROR.search(text):
                    row.locked += 1
                elif level in ("ERROR", "CRITICAL"):
                    row.errors += 1
                lease_lost += "lease lost" in text
            code = child.popen.returncode
            if code not in (0, None) and not (child.killed and code == -signal.SIGKILL):
                row.errors += 1
                row.notes.append(f"{child.ledger.stem} exited with {code}")
        if lease_lost:
            row.notes.append(f"{lease_lost} outcomes dropped by a worker that had lost its lease")


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(interval)
    return True


def all_final(store: SQLStore) -> bool:
    counts = store.counts()
    return all(n == 0 for status, n in counts.items() if status not in FINAL)


def outcomes(row: Row, procs: Procs, records: dict[int, JobRecord], submitted: set[int], *, kills: bool) -> None:
    """lost and double, from the database and the ledgers; re-runs and unrecorded outcomes as notes."""
    complete = {i for i, r in records.items() if r.status is JobStatus.COMPLETE}
    row.lost = len(submitted - complete)
    stored = Counter(int(job_id) for (job_id,) in procs.ledger("stored"))
    row.double = sum(1 for n in stored.values() if n > 1)
    generated = Counter(int(job_id) for job_id, _t in procs.ledger("gen"))
    reruns = sum(max(0, n - max(1, stored[job_id])) for job_id, n in generated.items())
    if reruns:
        row.notes.append(f"{reruns} generator runs repeated without a second stored outcome")
    unrecorded = len(complete - set(stored))
    if unrecorded and not kills:  # without kills every stored outcome has its ledger line
        row.errors += 1
        row.notes.append(f"{unrecorded} complete jobs have no 'stored' line: the ledger store is not called")
    elif unrecorded:
        row.notes.append(f"{unrecorded} stored outcomes unrecorded (killed between commit and ledger line)")
    phantom = set(records) - submitted
    if phantom:
        row.errors += 1
        row.notes.append(f"{len(phantom)} jobs in the database that no submit returned")
    unfinished = Counter(r.status.value for r in records.values() if r.status is not JobStatus.COMPLETE)
    if unfinished:
        row.notes.append("not complete: " + ", ".join(f"{n} {s}" for s, n in sorted(unfinished.items())))


# -- the scenarios ------------------------------------------------------------------------------


def processes_x_jobs(backend: Backend, sizes: Sizes, folder: Path, rng: random.Random) -> Row:
    db = backend.new_db(folder)
    total = sizes.procs * sizes.per_proc
    row = Row(backend.name, f"{sizes.procs} procs x {sizes.per_proc}", total)
    with Procs(folder) as procs:
        for i in range(sizes.procs):
            procs.start(
                "soak_worker.py", db, "--device", f"soak{i}", "--steps", "2", "--step-time", "0.002", *SHORT_LEASE,
                "--submit", str(sizes.per_proc), "--group", f"p{i}", "--seed", str(rng.randrange(2**31)),
                "--until-done", str(total), "--deadline", str(sizes.patience),
            )  # fmt: skip
        store = SQLStore(db)
        try:
            if not procs.settle(store, timeout=sizes.patience + 30):
                row.notes.append(f"gave up waiting for the workers after {sizes.patience + 30:g} s")
            records = {r.id: r for r in store.list_jobs()}
        finally:
            store.close()
        batches = {group: [int(i) for i in ids.split(",")] for group, ids in procs.ledger("batch")}
        in_db = Counter(r.group for r in records.values())
        row.partial = sum(1 for g, n in in_db.items() if g is not None and n != len(batches.get(g, [])))
        outcomes(row, procs, records, {i for ids in batches.values() for i in ids}, kills=False)
        procs.tally_logs(row)
    return row


def sigkill_chaos(backend: Backend, sizes: Sizes, folder: Path, rng: random.Random) -> Row:
    db = backend.new_db(folder)
    with ImageQueue(db, start=False) as q:  # stores the jobs; runs nothing
        items = [{"prompt": f"chaos #{i}", "seed": i} for i in range(sizes.chaos_jobs)]
        submitted = {j.id for j in q.submit_batch(items, group="chaos", max_retries=100)}
    worker = (
        "--steps", "5", "--step-time", "0.03", *SHORT_LEASE,
        "--until-done", str(sizes.chaos_jobs), "--deadline", str(sizes.patience),
    )  # fmt: skip
    store = SQLStore(db)
    kills = mid_job = 0
    with Procs(folder) as procs:
        slots = [procs.start("soak_worker.py", db, "--device", f"slot{s}", *worker) for s in range(sizes.chaos_slots)]

        def running() -> list[int]:
            owners = {r.owner for r in store.list_jobs(status=JobStatus.PROCESSING)}
            return [s for s, child in enumerate(slots) if child.owner() in owners]

        while kills < sizes.kills and not all_final(store):
            wait_for(running, timeout=5)  # when none runs a job within 5 s, kill one anyway
            slot = rng.choice(running() or range(sizes.chaos_slots))
            time.sleep(rng.uniform(0, 0.2))  # the random moment is the point here
            mid_job += slot in running()
            kills += slots[slot].kill()
            slots[slot] = procs.start("soak_worker.py", db, "--device", f"slot{slot}", *worker)
        finished = wait_for(lambda: all_final(store), timeout=sizes.patience, interval=0.2)
        procs.wait_all(timeout=30)
        records = {r.id: r for r in store.list_jobs()}
        store.close()
        row = Row(backend.name, f"SIGKILL chaos, {kills} kills", sizes.chaos_jobs)
        row.notes.append(f"{mid_job} of the kills hit a process while it held a running job")
        outcomes(row, procs, records, submitted, kills=True)
        procs.tally_logs(row)
    if not finished:
        row.notes.append(f"gave up waiting for every job to be final after {sizes.patience:g} s")
    return row


def submitting(child: Child) -> bool:
    """The submitter is in its ``submit_batch`` call (or already ended)."""
    return bool(soak_ledger.entries(child.ledger, "go")) or child.popen.poll() is not None


def kill_during_submit(backend: Backend, sizes: Sizes, folder: Path, rng: random.Random) -> Row:
    db = backend.new_db(folder)
    store = SQLStore(db)
    seen_partial: set[str] = set()
    landed = 0
    with Procs(folder) as procs:
        # one uninterrupted submit first: how long the call takes, to spread the kills over it
        first = procs.start("soak_submit.py", db, "--group", "whole", "--jobs", str(sizes.batch))
        first.popen.wait(timeout=300)
        (go,), (done,) = soak_ledger.entries(first.ledger, "go"), soak_ledger.entries(first.ledger, "done")
        span = float(done[0]) - float(go[0])
        for i in range(sizes.submit_kills):
            child = procs.start("soak_submit.py", db, "--group", f"kill{i}", "--jobs", str(sizes.batch))
            wait_for(partial(submitting, child), timeout=60)
            time.sleep(rng.uniform(0, 1.2 * span))  # the random moment is the point here
            landed += child.kill()
            if len(store.list_jobs(group=f"kill{i}")) not in (0, sizes.batch):
                seen_partial.add(f"kill{i}")
        procs.wait_all(timeout=30)
        returned = {f"kill{i}" for i, c in enumerate(procs.children[1:]) if soak_ledger.entries(c.ledger, "done")}
        counts = Counter(r.group for r in store.list_jobs())
        store.close()
        groups = [f"kill{i}" for i in range(sizes.submit_kills)]
        row = Row(backend.name, f"kill in submit_batch, {sizes.submit_kills}x", sizes.batch * sizes.submit_kills)
        row.partial = len(seen_partial | {g for g in groups if counts[g] not in (0, sizes.batch)})
        row.lost = sum(sizes.batch - counts[g] for g in returned) + sizes.batch - counts["whole"]
        whole = sum(1 for g in groups if counts[g] == sizes.batch)
        row.notes.append(
            f"{landed} kills landed before the process ended; {whole} batches stored whole, "
            f"{sum(1 for g in groups if counts[g] == 0)} absent; one submit_batch took {span:.2f} s"
        )
        procs.tally_logs(row)
    return row


def restart_gap(backend: Backend, how: str, sizes: Sizes, folder: Path) -> Gap:
    """A job interrupted by ``how`` (SIGKILL or a normal exit), then a new process's queue."""
    db = backend.new_db(folder)
    with ImageQueue(db, start=False) as q:
        victim = q.submit("interrupted", seed=1).id
        behind = q.submit("queued behind", seed=2).id
    store = SQLStore(db)
    note = ""
    with Procs(folder) as procs:
        steps = ("--steps", str(sizes.gap_steps), "--step-time", str(GAP_STEP_TIME))
        first = procs.start("soak_worker.py", db, "--device", "gpu", *steps, "--stdin", stdin=True)
        if not wait_for(lambda: soak_ledger.entries(first.ledger, "start"), timeout=60):
            return Gap(backend.name, how, None, None, None, "the first process never started the job")
        if how == "SIGKILL":
            first.kill()
        else:
            assert first.popen.stdin is not None
            asked = time.monotonic()
            first.popen.stdin.write("exit\n")
            first.popen.stdin.flush()
            first.popen.wait(timeout=sizes.gap_steps * GAP_STEP_TIME + 60)
            note = f"; exit took {time.monotonic() - asked:.1f} s, left it {store.get(victim).status.value}"
        second = procs.start("soak_worker.py", db, "--device", "gpu", "--until-done", "2", "--deadline", "120")
        second.popen.wait(timeout=150)
        x, y = store.get(victim), store.get(behind)
        store.close()
        opened, owner = second.opened_at(), second.owner()
    if x.status is not JobStatus.COMPLETE or x.owner != owner or opened is None or x.started_at is None:
        return Gap(backend.name, how, None, None, x.attempts, f"not run again by the new process: {x.status.value}")
    ran_first = y.started_at is not None and x.started_at < y.started_at
    return Gap(backend.name, how, x.started_at - opened, ran_first, x.attempts, note)


# -- backends and the report --------------------------------------------------------------------


def sqlite_backend() -> Backend:
    return Backend("sqlite", lambda folder: str(folder / "jobs.db"))


def fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def report(rows: list[Row], gaps: list[Gap], skipped: list[str]) -> None:
    head = f"{'backend':10} {'scenario':28} {'jobs':>7} {'lost':>5} {'double':>6} {'locked':>6} {'partial':>7}"
    print(f"\n{head} {'errors':>6}")
    for r in rows:
        print(
            f"{r.backend:10} {r.scenario:28} {r.jobs:>7} {fmt(r.lost):>5} {fmt(r.double):>6} "
            f"{r.locked:>6} {fmt(r.partial):>7} {r.errors:>6}"
        )
    for line in skipped:
        print(line)
    for r in rows:
        for note in r.notes:
            print(f"  note: {r.backend} {r.scenario}: {note}")
    parts: dict[str, list[str]] = {}
    for g in gaps:
        if g.seconds is None:
            parts.setdefault(g.backend, []).append(f"{g.how} not measured ({g.note})")
            continue
        first = "yes" if g.ran_first else "no"
        parts.setdefault(g.backend, []).append(
            f"{g.how} {g.seconds:.1f} (ran first: {first}, attempts {g.attempts}{g.note})"
        )
    for backend, text in parts.items():
        print(f"restart gap (s): {backend} " + " | ".join(text))


SCENARIOS: dict[str, Callable[[Backend, Sizes, Path, random.Random], Row]] = {
    "procs": processes_x_jobs,
    "chaos": sigkill_chaos,
    "submit": kill_during_submit,
}
GAPS = {"kill": "SIGKILL", "exit": "normal exit"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run: fewer jobs and kills")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    rng = random.Random(args.seed)
    names = args.backends.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="imgnb-soak-"))
    rows: list[Row] = []
    gaps: list[Gap] = []
    skipped: list[str] = []
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up on the way out

    def folder(backend: Backend, scenario: str) -> Path:
        path = tmp / f"{backend.name}_{scenario}"
        path.mkdir()
        return path

    def timed(name: str, fn: Callable[..., T], *args: object) -> T:
        t = time.monotonic()
        result = fn(*args)
        print(f"{name}: {time.monotonic() - t:.0f} s", flush=True)
        return result

    def gap(backend: Backend, key: str) -> Gap:
        try:
            return timed(
                f"{backend.name} gap {key}", restart_gap, backend, GAPS[key], sizes, folder(backend, f"gap_{key}")
            )
        except Exception as exc:  # reported in the table rather than ending the run
            traceback.print_exc()
            return Gap(backend.name, GAPS[key], None, None, None, f"the benchmark failed: {exc!r}")

    def scenario(backend: Backend, key: str) -> Row:
        try:
            return timed(f"{backend.name} {key}", SCENARIOS[key], backend, sizes, folder(backend, key), rng)
        except Exception as exc:
            traceback.print_exc()
            return Row(backend.name, key, 0, errors=1, notes=[f"the benchmark failed: {exc!r}"])

    sys.path.insert(0, str(ROOT))  # the tests' throwaway PostgreSQL server
    from tests.fixtures.postgres import throwaway_databases

    try:
        with contextlib.ExitStack() as stack:
            backends = [sqlite_backend()] if "sqlite" in names else []
            if "postgresql" in names and (new_pg := stack.enter_context(throwaway_databases(skipped))) is not None:
                backends.append(Backend("postgresql", lambda folder, new=new_pg: new(folder.name)))
            cases = [(b, key) for b in backends for key in GAPS]
            # --quick: the restart gaps (mostly waiting) run beside the other scenarios, timed under load
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, len(cases))))
            running = [pool.submit(gap, b, key) for b, key in cases] if args.quick else []
            rows = [scenario(b, key) for b in backends for key in SCENARIOS]
            gaps = [f.result() for f in running] if args.quick else [gap(b, key) for b, key in cases]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, gaps, skipped)
    print(f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
