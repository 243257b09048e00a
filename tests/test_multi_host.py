"""Several machines on one PostgreSQL database: two worker processes that say they run on other
hosts (``IMGNB_HOST``) and a notebook-side queue with no generator, as a lab would run them.

Jobs are shared out; each host has its own lock on its ``gpu0``; a worker killed with SIGKILL
mid-job is recovered by the other host once its lease runs out (1 s here: another host's process
cannot be seen dead, only silent); and the notebook's positions and progress follow all of it.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from imgnb import ImageQueue, JobStatus
from imgnb.core.records import EventKind, JobEvent
from tests.fixtures.queues import wait_until
from tests.test_processes import read_log, spawn

pytestmark = pytest.mark.postgres

MakeQueue = Callable[..., ImageQueue]
HOSTS = ("lab-gpu-a", "lab-gpu-b")


@pytest.fixture
def workers(pg_db_url: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """A worker process per host, each with a device called gpu0 and a 1 s lease."""
    procs = {host: spawn(pg_db_url, str(tmp_path / "runs.log"), "--steps", "3", host=host) for host in HOSTS}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]


def host_of(owner: str | None) -> str:
    return (owner or "").split(":")[0]


def test_two_hosts_share_the_queue_and_take_over_each_others_jobs(
    pg_db_url: str, make_queue: MakeQueue, workers: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    notebook = make_queue(pg_db_url)  # no generator: it submits and watches
    log = tmp_path / "runs.log"

    # jobs are shared out, one at a time per host, both hosts at once
    first = notebook.submit_batch([{"prompt": f"short {i}", "step_time": 0.03} for i in range(12)])
    for job in first:
        job.result(timeout=30)
    runs = read_log(log)
    assert sorted(j for _, j, _, _ in runs) == sorted(j.id for j in first)  # each ran once
    by_pid = {pid: sorted((s, e) for p, _, s, e in runs if p == pid) for pid in {p for p, _, _, _ in runs}}
    assert len(by_pid) == 2  # on both hosts
    for spans in by_pid.values():  # one at a time on each host's gpu0
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert {host_of(j.record.owner) for j in first} == set(HOSTS)
    engine = sa.create_engine(pg_db_url)
    with engine.connect() as conn:
        locks = list(conn.execute(sa.text("SELECT name FROM imgnb_device")).scalars())
    engine.dispose()
    assert sorted(locks) == [f"{host}/gpu0" for host in HOSTS]

    # a host dies mid-job; the other takes the job over once its lease runs out
    seen: list[JobEvent] = []
    long = notebook.submit("long", steps=40, step_time=0.05)
    shorts = notebook.submit_batch([{"prompt": f"after {i}", "step_time": 0.03} for i in range(15)])
    notebook.subscribe(lambda e: seen.append(e) if e.job_id == long.id else None)
    head = notebook.head(16)  # in run order: what no host has taken yet, from the front
    assert len(head) >= 13 and head == [j.id for j in (long, *shorts)][-len(head) :]
    wait_until(lambda: long.status is JobStatus.PROCESSING and long.progress > 0)  # progress from the other host
    dead = host_of(long.record.owner)
    (alive,) = set(HOSTS) - {dead}
    wait_until(lambda: shorts[-1].position is not None and shorts[-1].position < 14)  # the other host goes on
    workers[dead].send_signal(signal.SIGKILL)
    assert workers[dead].wait(timeout=10) == -signal.SIGKILL
    long.result(timeout=30)
    assert host_of(long.record.owner) == alive and long.attempts == 2 and long.progress == 1.0
    statuses = [e.status for e in seen if e.kind is EventKind.STATUS]
    assert statuses[-1] is JobStatus.COMPLETE and JobStatus.ERROR not in statuses
    for job in shorts:
        job.result(timeout=30)
    assert {host_of(j.record.owner) for j in shorts} >= {alive}
    assert [j.position for j in (long, *shorts)] == [None] * 16 and notebook.queued_count() == 0
    assert long.id not in [j for p, j, _, _ in read_log(log) if p == workers[dead].pid]  # its run never ended
