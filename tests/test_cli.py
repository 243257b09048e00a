"""``imgnb worker`` and ``imgnb status`` as people run them, and the pure pieces behind them.

The commands run as ``python -m imgnb ...`` subprocesses with this checkout first on PYTHONPATH, on
real databases that the test's own ``ImageQueue`` (no pipeline) submits to and watches. Tests wait
on conditions (a job's status, a line of the worker's log), never on time. The status report, the
log lines and the device and factory checks are also tested in-process, without a database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from unittest.mock import patch

import pytest
import sqlalchemy as sa

from imgnb import ImageQueue, JobStatus
from imgnb.cli.devices import check_devices, same_device
from imgnb.cli.failures import BadArgument, StartFailed
from imgnb.cli.pipelines import FactorySpec, build_pipelines, parse_factory, resolve_factory, takes_device
from imgnb.cli.report import build_report, duration, render_json, render_text
from imgnb.cli.status import snapshot
from imgnb.cli.text import database_label, device_label, host_of
from imgnb.cli.worklog import StartInfo, job_line, start_line, stop_line
from imgnb.core.records import JobRecord, JobSpec
from imgnb.store.notify import APPLICATION_NAME
from imgnb.testing import FakeGenerator, MemoryStore
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]
ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "IMGNB_HOST"} | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = "imgnb.gen.tiny:tiny_pipeline"
LONG = {"steps": 500}  # tens of seconds on a CPU: still running when the test's signal arrives
START = 90.0  # seconds a worker may take to import torch and diffusers on a loaded machine


def imgnb(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "imgnb", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=90)


class Command:
    """A running ``python -m imgnb ...``; its output lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgnb", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = START) -> str:
        """The first output line that satisfies ``predicate``, once it is printed."""
        wait_until(lambda: any(map(predicate, self.out)) or self.proc.poll() is not None, timeout=timeout)
        if self.proc.poll() is not None:
            self._join()
        matched = [line for line in self.out if predicate(line)]
        assert matched, f"exited with {self.proc.returncode}; stdout {self.out}, stderr {self.err}"
        return matched[0]

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._join()
        return code

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def commands() -> Iterator[Callable[..., Command]]:
    """``commands(*args, cwd=...)`` starts ``python -m imgnb *args``; all are killed at teardown."""
    started: list[Command] = []

    def start(*args: str, cwd: Path) -> Command:
        command = Command(*args, cwd=cwd)
        started.append(command)
        return command

    yield start
    for command in started:
        command.stop()


def untimed(line: str) -> str:
    """A text log line without its timestamp (checked to be ISO 8601 on the way)."""
    stamp, text = line.split(" ", 1)
    datetime.fromisoformat(stamp)
    return text


def owner_in(start: str) -> str:
    return start.split(" ")[3]  # "<time> imgnb worker <owner> started: ..."


# -- the worker -----------------------------------------------------------------------------------


def test_worker_runs_jobs_and_sigterm_hands_the_running_one_back(
    make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path
) -> None:
    db = str(tmp_path / "jobs.db")
    client = make_queue(db)  # submits and watches; runs nothing
    worker = commands("worker", db, "--pipeline", TINY, "--device", "cpu", cwd=tmp_path)
    quick = client.submit("a watercolor fox", seed=7, steps=2)
    assert len(quick.result(timeout=START)) == 1 and Path(quick.images[0]).is_file()
    long = client.submit("a long one", seed=8, **LONG)
    worker.wait_for(lambda line: f"job {long.id} processing" in line)

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0
    wait_until(lambda: long.status is JobStatus.QUEUED)
    assert (long.attempts, long.position, long.error) == (0, 1, None)  # its place back, the run not counted

    start, *lines = [untimed(line) for line in worker.out]
    owner = owner_in(worker.out[0])
    assert start.startswith(f"imgnb worker {owner} started: database {db}; devices cpu; ")
    assert "pipelines cpu=StableDiffusionPipeline (imgnb/tiny-sd) from imgnb.gen.tiny:tiny_pipeline" in start
    assert all(f"{name} " in start for name in ("imgnb", "torch", "diffusers"))
    assert lines == [
        f"job {quick.id} processing on cpu by {owner}, attempt 1 of 4",
        f"job {quick.id} complete on cpu by {owner}",
        f"job {long.id} processing on cpu by {owner}, attempt 1 of 4",
        "imgnb worker stopping (SIGTERM): running jobs go back to their place; a second signal exits at once",
        f"job {long.id} queued on cpu by {owner}",
        "imgnb worker stopped",
    ]
    assert not any("Traceback" in line for line in worker.err)


def test_worker_runs_named_models_and_leaves_the_others(
    make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path
) -> None:
    db = str(tmp_path / "jobs.db")
    client = make_queue(db)
    models = ["--model", f"sd={TINY}", "--model", "xl=tests.cli_factories:tiny_sdxl", "--max-loaded", "1"]
    worker = commands("worker", db, *models, "--affinity", "2", "--device", "cpu", cwd=tmp_path)
    elsewhere = client.submit("for another machine", model="flux", steps=2)
    jobs = client.submit_batch([{"prompt": f"{m} {i}", "model": m, "steps": 2} for i in range(2) for m in ("sd", "xl")])
    unnamed = client.submit("no model: the first one", steps=2)
    for job in [*jobs, unnamed]:
        assert len(job.result(timeout=START)) == 1
    assert [j.attempts for j in [*jobs, unnamed]] == [1] * 5
    assert (elsewhere.status, elsewhere.attempts, elsewhere.position) == (JobStatus.QUEUED, 0, 1)
    start = untimed(worker.out[0])
    assert (
        f"models sd ({TINY}), xl (tests.cli_factories:tiny_sdxl) loaded on demand, at most 1 per device; affinity 2"
    ) in start
    assert "pipelines" not in start


def test_a_second_signal_exits_at_once_while_closing(
    make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path
) -> None:
    db = str(tmp_path / "jobs.db")
    client = make_queue(db)
    worker = commands("worker", db, "--pipeline", TINY, "--device", "cpu", "--json", cwd=tmp_path)
    long = client.submit("a long one", **LONG)
    worker.wait_for(lambda line: json.loads(line).get("status") == "processing")
    # Hold SQLite's write lock: closing cannot hand the job back, so the worker is still closing
    # when the second signal comes, however fast this machine is.
    lock = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")
        worker.proc.send_signal(signal.SIGINT)
        worker.wait_for(lambda line: json.loads(line)["event"] == "stopping")
        worker.proc.send_signal(signal.SIGINT)
        assert worker.finish(timeout=10) == 128 + signal.SIGINT
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert worker.err[-1].startswith("imgnb worker: second SIGINT: exiting at once")
    start, running, stopping = (json.loads(line) for line in worker.out)
    assert (start["event"], start["devices"], start["batch_size"]) == ("start", ["cpu"], 1)
    assert start["pipelines"] == {"cpu": {"class": "StableDiffusionPipeline", "model": "imgnb/tiny-sd"}}
    assert {"imgnb", "torch", "diffusers", "python"} <= set(start["versions"])
    del running["time"]
    assert running == {
        "event": "job",
        "job_id": long.id,
        "status": "processing",
        "device": "cpu",
        "worker": start["worker"],
        "host": host_of(start["worker"]),
        "attempts": 1,
        "error": None,
    }
    assert (stopping["event"], stopping["signal"]) == ("stopping", "SIGINT")
    # Not handed back (that leaves attempts at 0 and no error): it left at once. This host's queue
    # then sees the worker's process is gone and recovers the job, the interrupted run counted.
    wait_until(lambda: long.status is JobStatus.QUEUED)
    assert long.attempts == 1 and f"its worker {start['worker']} died" in (long.error or "")


BAD_WORKER_ARGUMENTS = [
    pytest.param(["--pipeline", "no_such_module_xyz:build"], 2, "no module named 'no_such_module_xyz'", id="module"),
    pytest.param(["--pipeline", "tests.cli_factories:nope"], 2, "has no attribute 'nope'", id="attr"),
    pytest.param(
        ["--pipeline", "tests.cli_factories:NOT_CALLABLE"], 2, "NOT_CALLABLE is a int, not a callable", id="int"
    ),
    pytest.param(
        ["--pipeline", "tests.cli_factories:broken"],
        1,
        "tests.cli_factories:broken() raised RuntimeError: no weights here (its second line)",
        id="factory-raises",
    ),
    pytest.param(
        ["--pipeline", "tests.cli_factories:not_a_pipeline"],
        2,
        "returned a FakeGenerator, not a diffusers pipeline",
        id="not-a-pipeline",
    ),
    # devices are checked before the factory runs (it would raise)
    pytest.param(["--pipeline", "tests.cli_factories:broken", "--device", "cuda:99"], 2, "'cuda:99'", id="gpu"),
    pytest.param(["--pipeline", "tiny_pipeline"], 2, "'tiny_pipeline' is not MODULE:FACTORY", id="malformed"),
    pytest.param([], 2, "give --pipeline MODULE:FACTORY, or --model NAME=MODULE:FACTORY, or both", id="no-pipeline"),
    pytest.param(["--pipeline", TINY, "--batch-size", "0"], 2, "'0' is not an integer >= 1", id="batch-size"),
    pytest.param(["--model", TINY], 2, f"{TINY!r} is not NAME=MODULE:FACTORY", id="model-unnamed"),
    pytest.param(["--model", f"={TINY}"], 2, "with a NAME of 1 to 200 characters", id="model-empty-name"),
    pytest.param(
        ["--model", f"a={TINY}", "--model", "a=tests.cli_factories:tiny_sdxl"],
        2,
        "given more than once: a",
        id="model-twice",
    ),
    pytest.param(
        ["--model", "sdxl=no_such_module_xyz:build"],
        2,
        "--model sdxl=no_such_module_xyz:build: no module named 'no_such_module_xyz'",
        id="model-module",
    ),
    pytest.param(
        ["--pipeline", TINY, "--model", f"imgnb/tiny-sd={TINY}"],
        2,
        "that is the name of --pipeline's model",
        id="model-clash",
    ),
    pytest.param(["--model", f"a={TINY}", "--affinity", "-1"], 2, "'-1' is not an integer >= 0", id="affinity"),
    pytest.param(["--model", f"a={TINY}", "--max-loaded", "0"], 2, "'0' is not an integer >= 1", id="max-loaded"),
]


def assert_refused(result: subprocess.CompletedProcess[str], code: int, message: str, command: str = "worker") -> None:
    """Refused with ``code`` and one line naming the problem, before anything was started."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert [line for line in lines if line.startswith(f"imgnb {command}:")] == lines[-1:]
    assert lines[-1].startswith(f"imgnb {command}: error: ") and message in lines[-1], lines[-1]
    assert result.stdout == "" and "Traceback" not in result.stderr


@pytest.mark.parametrize(("arguments", "code", "message"), BAD_WORKER_ARGUMENTS)
def test_worker_refuses_bad_arguments_before_claiming(
    arguments: list[str], code: int, message: str, make_queue: MakeQueue, tmp_path: Path
) -> None:
    db = str(tmp_path / "jobs.db")
    waiting = make_queue(db).submit("must stay queued", steps=2)
    assert_refused(imgnb("worker", db, *arguments, cwd=tmp_path), code, message)
    assert (waiting.status, waiting.attempts) == (JobStatus.QUEUED, 0)
    assert waiting.record.owner is None  # never claimed


def unreachable_postgres() -> str:
    return f"postgresql+psycopg://imgnb:secret@127.0.0.1:{_closed_port()}/imgnb"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


@pytest.mark.parametrize(
    ("make_db", "code", "message"),
    [
        pytest.param(lambda tmp: str(tmp), 2, "is a folder", id="folder"),
        pytest.param(lambda tmp: _write(tmp / "notes.txt", "hello"), 2, "is not an SQLite database", id="not-sqlite"),
        pytest.param(
            lambda tmp: unreachable_postgres(), 1, "cannot open postgresql+psycopg://imgnb:***@", id="unreachable"
        ),
        pytest.param(lambda tmp: "nosuchdb://x/y", 2, "Can't load plugin: sqlalchemy.dialects:nosuchdb", id="dialect"),
    ],
)
def test_worker_refuses_a_database_it_cannot_use(
    make_db: Callable[[Path], str], code: int, message: str, tmp_path: Path
) -> None:
    # the database is opened before torch is imported: the factory, which would fail, is never reached
    result = imgnb("worker", make_db(tmp_path), "--pipeline", "tests.cli_factories:broken", cwd=tmp_path)
    assert_refused(result, code, message)
    assert "secret" not in result.stderr


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- status ---------------------------------------------------------------------------------------


@pytest.fixture
def busy_queue(make_queue: MakeQueue, tmp_path: Path) -> tuple[ImageQueue, dict[str, Any]]:
    """A queue with a job in each status but pending: one complete, one failed, one cancelled, one
    running (for minutes) and two waiting behind it."""
    q = make_queue(str(tmp_path / "jobs.db"), generator=FakeGenerator(step_time=0.001))
    done = q.submit("done", seed=1)
    failed = q.submit("fail on purpose", max_retries=0)
    done.result(timeout=30)
    wait_until(lambda: failed.status is JobStatus.ERROR)
    slow = q.submit("a slow one", steps=200_000)
    wait_until(lambda: slow.status is JobStatus.PROCESSING)
    later = q.submit("later", group="g")
    urgent = q.submit("an urgent sketch", priority="high")
    q.cancel(q.submit("cancelled").id)
    return q, {"done": done, "failed": failed, "slow": slow, "later": later, "urgent": urgent}


def test_status_shows_counts_running_jobs_head_and_throughput(
    busy_queue: tuple[ImageQueue, dict[str, Any]], tmp_path: Path
) -> None:
    q, jobs = busy_queue
    db = str(tmp_path / "jobs.db")
    result = imgnb("status", db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"imgnb status of {db} at ")
    assert lines[1] == "jobs: 0 pending, 2 queued, 1 processing, 1 complete, 1 error, 1 cancelled (6 in all)"
    assert lines[2] == "completed in the last 1 / 5 / 15 min: 1 / 1 / 1 (0.1 jobs/min over 15 min)"
    running = lines.index("running (1):")
    assert lines[running + 1].split() == ["JOB", "HOST", "DEVICE", "PROGRESS", "FOR", "ATTEMPT", "WORKER", "PROMPT"]
    row = lines[running + 2].split()
    assert row[:3] == [str(jobs["slow"].id), host_of(q.owner), "fake"]
    assert row[5:] == ["attempt", "1", "of", "4", q.owner, "a", "slow", "one"]
    head = lines.index("next in the queue (2 of 2 queued):")
    assert [line.split() for line in lines[head + 2 :]] == [
        ["1", str(jobs["urgent"].id), "high", "-", "an", "urgent", "sketch"],
        ["2", str(jobs["later"].id), "normal", "g", "later"],
    ]


def test_status_json(busy_queue: tuple[ImageQueue, dict[str, Any]], tmp_path: Path) -> None:
    q, jobs = busy_queue
    db = str(tmp_path / "jobs.db")
    result = imgnb("status", db, "--json", "--head", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["database"] == db and data["total"] == 6
    assert data["counts"] == {"pending": 0, "queued": 2, "processing": 1, "complete": 1, "error": 1, "cancelled": 1}
    (running,) = data["running"]
    assert {k: running[k] for k in ("job_id", "worker", "host", "device", "attempts", "prompt")} == {
        "job_id": jobs["slow"].id,
        "worker": q.owner,
        "host": host_of(q.owner),
        "device": "fake",
        "attempts": 1,
        "prompt": "a slow one",
    }
    assert 0.0 <= running["progress"] < 1.0 and running["started_at"] <= data["time"]
    assert data["head"] == [
        {"position": 1, "job_id": jobs["urgent"].id, "priority": "high", "group": None, "prompt": "an urgent sketch"}
    ]
    assert data["completed"] == {"1": 1, "5": 1, "15": 1}


def test_status_watch_refreshes_until_ctrl_c(
    make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path
) -> None:
    db = str(tmp_path / "jobs.db")
    client = make_queue(db)
    watch = commands("status", db, "--watch", "0.05", "--json", cwd=tmp_path)
    watch.wait_for(lambda line: json.loads(line)["counts"]["queued"] == 0)
    job = client.submit("seen by the next refresh")
    seen = json.loads(watch.wait_for(lambda line: json.loads(line)["counts"]["queued"] == 1))
    assert seen["head"][0]["job_id"] == job.id
    watch.proc.send_signal(signal.SIGINT)
    assert watch.finish() == 0
    assert watch.err == []


def test_status_refuses_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    assert_refused(imgnb("status", str(missing), cwd=tmp_path), 2, f"no database at {missing}", command="status")
    assert not missing.exists()


# -- PostgreSQL and several hosts ----------------------------------------------------------------


@pytest.mark.postgres
def test_worker_and_status_on_postgresql(
    pg_db_url: str, make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path
) -> None:
    client = make_queue(pg_db_url)
    worker = commands("worker", pg_db_url, "--pipeline", TINY, "--device", "cpu", "--json", cwd=tmp_path)
    job = client.submit("a fox on the server", steps=2)
    job.result(timeout=START)
    long = client.submit("a long one", **LONG)
    worker.wait_for(lambda line: json.loads(line).get("job_id") == long.id)
    start = json.loads(worker.out[0])
    assert start["database"] == pg_db_url.replace("postgresql+psycopg", "postgresql+psycopg", 1)
    # headless: the worker hears what may give it work, not the claims and finishes of others
    wait_until(lambda: sorted(listens(pg_db_url)) == ["LISTEN imgnb", "LISTEN imgnb_work"])  # client's, worker's
    status = imgnb("status", pg_db_url, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["counts"]["complete"], data["counts"]["processing"], data["completed"]["1"]) == (1, 1, 1)
    assert [(r["job_id"], r["worker"], r["device"]) for r in data["running"]] == [(long.id, start["worker"], "cpu")]
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.err
    wait_until(lambda: long.status is JobStatus.QUEUED)
    assert long.attempts == 0


def listens(url: str) -> list[str]:
    """The last statement of every listening session: what each one LISTENs on."""
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        query = "SELECT query FROM pg_stat_activity WHERE application_name = :name"
        return list(conn.execute(sa.text(query), {"name": APPLICATION_NAME}).scalars())


def test_host_option_names_the_worker(
    make_queue: MakeQueue, commands: Callable[..., Command], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGNB_HOST", "lab-a")
    if host_of(make_queue(str(tmp_path / "probe.db"), start=False).owner) != "lab-a":
        pytest.skip("ImageQueue does not read IMGNB_HOST yet (it comes with the owner-identity change)")
    monkeypatch.delenv("IMGNB_HOST")
    db = str(tmp_path / "jobs.db")
    client = make_queue(db)
    worker = commands("worker", db, "--pipeline", TINY, "--device", "cpu", "--host", "lab-a", "--json", cwd=tmp_path)
    long = client.submit("a long one", **LONG)
    worker.wait_for(lambda line: json.loads(line).get("job_id") == long.id)
    data = json.loads(imgnb("status", db, "--json", cwd=tmp_path).stdout)
    assert [(r["job_id"], r["host"], r["device"]) for r in data["running"]] == [(long.id, "lab-a", "cpu")]


# -- pure pieces ----------------------------------------------------------------------------------

NOW = 1_750_000_000.0


def record(job_id: int, status: JobStatus, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": job_id,
        "seq": job_id,
        "status": status,
        "priority": 1,
        "group": None,
        "prompt": f"prompt {job_id}",
        "params": {},
        "seed": 0,
        "metadata": {},
        "timeout": None,
        "max_retries": 3,
        "created_at": NOW - 100,
        "updated_at": NOW - 10,
        "run_at": NOW - 100,
    }
    return JobRecord(**(base | fields))


def test_report_counts_completions_per_window_and_names_hosts_and_devices() -> None:
    running = record(
        4,
        JobStatus.PROCESSING,
        owner="gpu1:77:ab",
        device="gpu1/cuda:1",
        progress=0.25,
        started_at=NOW - 184,
        attempts=2,
    )
    report = build_report(
        database="postgresql+psycopg://imgnb:***@db/imgnb",
        now=NOW,
        counts={"queued": 12, "processing": 1, "complete": 4},
        running=[running],
        head=[record(7, JobStatus.QUEUED, priority=2), record(5, JobStatus.QUEUED, group="g", prompt="x" * 80)],
        finished_at=[NOW - 30, NOW - 200, NOW - 800, NOW - 2000, None],
    )
    assert report.completed == {1: 1, 5: 2, 15: 3}
    assert report.counts == {"pending": 0, "queued": 12, "processing": 1, "complete": 4, "error": 0, "cancelled": 0}
    text = render_text(report)
    assert text.splitlines()[1:3] == [
        "jobs: 0 pending, 12 queued, 1 processing, 4 complete, 0 error, 0 cancelled (17 in all)",
        "completed in the last 1 / 5 / 15 min: 1 / 2 / 3 (0.2 jobs/min over 15 min)",
    ]
    assert "  4    gpu1  cuda:1  25%       3m04s  attempt 2 of 4  gpu1:77:ab  prompt 4" in text
    assert "next in the queue (2 of 12 queued):" in text
    assert "  1    7    high      -      prompt 7" in text
    assert f"  2    5    normal    g      {'x' * 59}…" in text
    data = render_json(report)
    assert json.loads(json.dumps(data))["completed"] == {"1": 1, "5": 2, "15": 3}
    assert data["running"][0] | {} == {
        "job_id": 4,
        "worker": "gpu1:77:ab",
        "host": "gpu1",
        "device": "cuda:1",
        "progress": 0.25,
        "started_at": NOW - 184,
        "attempts": 2,
        "max_retries": 3,
        "prompt": "prompt 4",
    }
    assert data["total"] == 17


def test_status_reads_only_the_head_and_the_last_minutes(make_queue: MakeQueue, tmp_path: Path) -> None:
    """1,000 jobs finished over 30 minutes (more than a first page of finished jobs): the windows
    count exactly, and only the head of the queue is read."""
    store = MemoryStore()
    spec = JobSpec(prompt="p", params={}, seed=0, priority=1, group=None, timeout=None, max_retries=0, metadata={})
    store.add([spec] * 1_012, batch_keys=[None] * 1_012, now=NOW - 3_600)
    ages = [i * 1.8 for i in range(1_000)]  # seconds before NOW: 0 to 1,798
    for age in reversed(ages):  # the oldest first
        (claimed,) = store.claim(owner="w", device="d", now=NOW - age - 1, lease=60)
        failed = age == ages[1]  # an error is not a completion
        status = JobStatus.ERROR if failed else JobStatus.COMPLETE
        store.finish(claimed.id, owner="w", status=status, now=NOW - age, error="x" if failed else None)
    listed: list[int | None] = []
    original = store.list_jobs

    def list_jobs(**kwargs: Any) -> list[JobRecord]:
        listed.append(kwargs.get("limit"))
        return original(**kwargs)

    store.list_jobs = list_jobs  # type: ignore[method-assign]
    q = make_queue(str(tmp_path / "unused.db"), store=store, start=False)
    with patch("time.time", return_value=NOW):
        report = snapshot(q, database="db", head=3)
    expected = {m: sum(1 for a in ages if a <= m * 60 and a != ages[1]) for m in (1, 5, 15)}
    assert report.completed == expected and expected[15] > 256  # past the first page
    assert [w.job_id for w in report.head] == [1_001, 1_002, 1_003]
    assert listed == [None, 3]  # the running jobs (none here), then the head: never every queued job


def test_report_of_an_idle_queue() -> None:
    empty = build_report(database="jobs.db", now=NOW, counts={}, running=[], head=[], finished_at=[])
    assert render_text(empty).splitlines()[3:] == ["", "running: none", "", "queue: empty"]
    hidden = build_report(database="jobs.db", now=NOW, counts={"queued": 3}, running=[], head=[], finished_at=[])
    assert render_text(hidden).splitlines()[-1] == "queue: 3 queued"  # --head 0


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (184, "3m04s"), (3720, "1h02m"), (-5, "0s")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_text_pieces() -> None:
    import sqlalchemy as sa

    assert (
        database_label(sa.make_url("postgresql+psycopg://u:secret@h:5432/db")) == "postgresql+psycopg://u:***@h:5432/db"
    )
    assert database_label(sa.make_url("sqlite+pysqlite:////data/jobs.db")) == "/data/jobs.db"
    assert (host_of("gpu1:12:ab"), host_of(None)) == ("gpu1", None)
    assert device_label("gpu1/cuda:0", "gpu1:12:ab") == "cuda:0"
    assert device_label("other/cuda:0", "gpu1:12:ab") == "other/cuda:0"  # not its owner's host: kept whole


def test_worker_log_lines() -> None:
    run = record(3, JobStatus.PROCESSING, owner="gpu1:12:ab", device="gpu1/cuda:0", attempts=2, error="old failure")
    text = job_line(NOW, job_id=3, status=JobStatus.PROCESSING, error="old failure", record=run, as_json=False)
    assert untimed(text) == "job 3 processing on cuda:0 by gpu1:12:ab, attempt 2 of 4"  # an old error is not news
    failed = job_line(NOW, job_id=3, status=JobStatus.ERROR, error="Boom:\n  out of memory", record=run, as_json=False)
    assert untimed(failed) == "job 3 error on cuda:0 by gpu1:12:ab: Boom: out of memory"
    data = json.loads(job_line(NOW, job_id=3, status=JobStatus.ERROR, error="Boom", record=run, as_json=True))
    assert datetime.fromisoformat(data.pop("time")).timestamp() == NOW
    assert data == {
        "event": "job",
        "job_id": 3,
        "status": "error",
        "device": "cuda:0",
        "worker": "gpu1:12:ab",
        "host": "gpu1",
        "attempts": 2,
        "error": "Boom",
    }
    info = StartInfo(
        database="db",
        devices=["cuda:0", "cuda:1"],
        pipelines={"cuda:0": {"class": "P", "model": "m"}, "cuda:1": {"class": "P", "model": ""}},
        factory="mod:f",
        models={},
        max_loaded=1,
        affinity=0,
        batch_size=4,
        worker="gpu1:12:ab",
        images_dir="/shared",
        versions={"imgnb": "1", "torch": "2"},
    )
    assert untimed(start_line(NOW, info, as_json=False)) == (
        "imgnb worker gpu1:12:ab started: database db; devices cuda:0, cuda:1; pipelines cuda:0=P (m), "
        "cuda:1=P from mod:f; affinity 0; batch size 4; images in /shared; imgnb 1, torch 2"
    )
    assert json.loads(start_line(NOW, info, as_json=True))["pipelines"]["cuda:1"] == {"class": "P", "model": ""}
    assert json.loads(stop_line(NOW, signal_name="SIGTERM", done=True, as_json=True))["event"] == "stopped"


def test_devices_are_checked_and_named_once() -> None:
    assert check_devices(["cpu", "cpu:0"][:1]) == ["cpu"]
    with pytest.raises(BadArgument, match="given twice"):
        check_devices(["cpu", "cpu:0"])
    with pytest.raises(BadArgument, match="cuda:99"):
        check_devices(["cuda:99"])
    with pytest.raises(BadArgument, match="not a device name torch knows"):
        check_devices(["gpu0"])
    with pytest.raises(BadArgument, match="imgnb runs jobs on"):
        check_devices(["meta"])
    if sys.platform != "darwin":  # elsewhere torch has no MPS backend to offer
        with pytest.raises(BadArgument, match="torch sees no mps device"):
            check_devices(["mps"])
    assert same_device("cuda:0", "cuda:0") and same_device("mps:0", "mps") and same_device("cpu", "cpu")
    assert not same_device("cuda:1", "cuda:0") and not same_device("cuda:0", "cpu")


def test_factory_specs_and_device_parameters() -> None:
    assert parse_factory("imgnb.gen.tiny:tiny_pipeline") == FactorySpec("imgnb.gen.tiny", "tiny_pipeline")
    assert parse_factory("models:Loader.build") == FactorySpec("models", "Loader.build")
    for bad in ("tiny_pipeline", "a:", ":f", "a b:c", "a:b:c"):
        with pytest.raises(Exception, match="is not MODULE:FACTORY"):
            parse_factory(bad)

    def with_device(device: str = "cpu") -> None: ...

    def keyword_only(*, device: str) -> None: ...

    def forwards(**kwargs: Any) -> None: ...

    assert takes_device(with_device) and takes_device(keyword_only)
    assert not takes_device(forwards) and not takes_device(lambda: None) and not takes_device(print)
    with pytest.raises(BadArgument, match=r"in .* or on the Python path"):
        resolve_factory(FactorySpec("no_such_module_xyz", "f"))
    assert resolve_factory(parse_factory("tests.cli_factories:broken")).__name__ == "broken"


def test_pipelines_are_built_per_device_and_checked() -> None:
    from imgnb.gen.tiny import tiny_pipeline

    spec = parse_factory("tests.cli_factories:tiny_without_device")
    factory = resolve_factory(spec)
    assert set(build_pipelines(spec, factory, ["cpu"])) == {"cpu"}  # called with no arguments, used where it is
    shared = tiny_pipeline()

    def cached(device: str) -> Any:
        return shared

    with pytest.raises(BadArgument, match="each device needs its own"):
        build_pipelines(FactorySpec("m", "cached"), cached, ["cpu", "cpu:1"])
    broken = parse_factory("tests.cli_factories:broken")
    with pytest.raises(StartFailed, match=r"^--pipeline tests.cli_factories:broken\(\) raised RuntimeError: no"):
        build_pipelines(broken, resolve_factory(broken), ["cpu"])
