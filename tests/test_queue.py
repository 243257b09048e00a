"""The queue end to end over a real SQLite file, with the fake generator from imgnb.testing."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from imgnb import (
    EventKind,
    IllegalTransition,
    ImageQueue,
    InvalidJob,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobNotFound,
    JobStatus,
    JobWaitTimeout,
    NotADatabase,
    QueueConfigError,
    RetryPolicy,
    SchemaVersionError,
)
from imgnb.core.records import JobRecord
from imgnb.store import SQLStore
from imgnb.store.schema import SCHEMA_VERSION
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import FAST_LEASE, wait_until

MakeQueue = Callable[..., ImageQueue]


def test_submit_runs_and_stores_reproducible_images(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    job = q.submit("a watercolor fox", steps=3, seed=7, metadata={"who": "me"})
    images = job.result(timeout=10)
    assert job.status is JobStatus.COMPLETE and job.progress == 1.0 and job.position is None
    assert [im.size for im in images] == [(16, 16)]
    assert len(job.images) == 1 and Path(job.images[0]).parent == Path(q.images_dir).resolve()
    with Image.open(job.images[0]) as png:
        assert png.text["prompt"] == "a watercolor fox" and png.text["seed"] == "7" and png.text["steps"] == "3"
    assert job.created_at.tzinfo is UTC
    assert job.created_at <= job.started_at <= job.finished_at <= job.updated_at
    assert (job.attempts, job.seed, job.params, job.metadata) == (1, 7, {"steps": 3}, {"who": "me"})
    again = q.submit("a watercolor fox", steps=3, seed=7).result(timeout=10)
    assert again[0].tobytes() == images[0].tobytes()  # same seed and parameters, same pixels


def test_priority_then_fifo(make_queue: MakeQueue, db_url: str) -> None:
    gen = FakeGenerator()
    q = make_queue(db_url, generator=gen, start=False)
    jobs = [q.submit(f"job {i}", priority=p) for i, p in enumerate(["low", "normal", "high", "normal", "high", "low"])]
    assert [j.position for j in jobs] == [5, 3, 1, 4, 2, 6]
    assert [j.status for j in jobs] == [JobStatus.QUEUED] * 6
    q.start()
    for j in jobs:
        j.result(timeout=10)
    assert gen.calls == [jobs[i].id for i in (2, 4, 1, 3, 0, 5)]


def test_batch_stays_together_in_order(make_queue: MakeQueue, db_path: str) -> None:
    gen = FakeGenerator()
    q = make_queue(db_path, generator=gen, start=False)
    first = q.submit("first")
    batch = q.submit_batch([{"prompt": f"b{i}", "seed": i} for i in range(3)], group="sweep-1")
    last = q.submit("last")
    urgent = q.submit("urgent", priority="high")
    assert [j.position for j in (urgent, first, *batch, last)] == [1, 2, 3, 4, 5, 6]
    assert [j.group for j in batch] == ["sweep-1"] * 3 and [j.seed for j in batch] == [0, 1, 2]
    assert [j.id for j in q.jobs(group="sweep-1")] == [j.id for j in batch]
    q.start()
    last.result(timeout=10)
    assert gen.calls == [j.id for j in (urgent, first, *batch, last)]


def test_batch_handles_read_what_was_stored_without_a_query_and_follow_later_changes(
    make_queue: MakeQueue, db_url: str
) -> None:
    q = make_queue(db_url, start=False)
    jobs = q.submit_batch(
        [{"prompt": "a", "seed": 1, "steps": 2}, {"prompt": "b", "metadata": {"k": [2]}, "timeout": 9}],
        metadata={"k": [1]},
    )
    reads: list[int] = []
    store_get = q.store.get
    q.store.get = lambda job_id: reads.append(job_id) or store_get(job_id)  # type: ignore[method-assign]
    assert (jobs[0].prompt, jobs[0].seed, jobs[0].params, jobs[0].metadata, jobs[0].timeout) == (
        "a",
        1,
        {"steps": 2},
        {"k": [1]},
        300.0,
    )
    assert (jobs[1].metadata, jobs[1].timeout, jobs[1].position) == ({"k": [2]}, 9.0, 2)
    assert reads == []  # built from what was stored
    jobs[0].metadata["k"].append("mine")  # a copy: the next read is as stored
    assert jobs[0].metadata == {"k": [1]}
    other = SQLStore(db_url)
    try:
        other.cancel(jobs[1].id, now=time.time())
        stored = other.get(jobs[1].id)
    finally:
        other.close()
    wait_until(lambda: jobs[1].status is JobStatus.CANCELLED)
    finished = jobs[1].finished_at
    assert stored.finished_at is not None and finished is not None
    assert finished.timestamp() == pytest.approx(stored.finished_at)  # the newest record, whole


def test_batch_is_all_or_nothing(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(), start=False)
    kept = q.submit("already stored", metadata={"keep": True})
    items = [{"prompt": "ok"}, {"prompt": "ok too"}, {"prompt": "bad", "steps": 0}]
    with pytest.raises(InvalidJob, match=r"batch item 2: steps=0 is invalid; allowed: an integer >= 1"):
        q.submit_batch(items)
    with pytest.raises(InvalidJob, match=r"batch item 1: priority='high' is invalid; allowed: set priority= once"):
        q.submit_batch([{"prompt": "a"}, {"prompt": "b", "priority": "high"}])
    with pytest.raises(InvalidJob, match=r"batch item 0: prompt=None is invalid; allowed: every item needs"):
        q.submit_batch([{"seed": 1}])
    with pytest.raises(InvalidJob, match=r"batch item 0: colour='red' is invalid; allowed: a known parameter"):
        q.submit_batch([{"prompt": "a", "colour": "red"}])
    assert [j.id for j in q.jobs()] == [kept.id]
    assert q.get(kept.id).metadata == {"keep": True} and kept.position == 1


def test_no_claim_under_way_at_pause_takes_a_job_submitted_after_it(make_queue: MakeQueue, db_path: str) -> None:
    """A claim checked before ``pause()`` may wait for the database (a submit's commit) and then
    find a job submitted after ``pause()`` returned; pause waits for it instead. Here the claim
    under way waits for pause to return (up to a second): it must end first, so the order is fixed."""
    order: list[str] = []
    entered, paused = threading.Event(), threading.Event()

    class SlowClaims(SQLStore):
        def claim(self, **kwargs: Any) -> list[JobRecord]:
            if not entered.is_set():
                entered.set()
                paused.wait(1.0)  # a claim that waits: for pause() to return, if it may
            claimed = super().claim(**kwargs)
            order.append("claimed")
            return claimed

    q = make_queue(db_path, generator=FakeGenerator(), store=SlowClaims(db_path))
    assert entered.wait(10)  # the idle worker's first claim, checked before the pause
    q.pause()
    order.append("paused")
    paused.set()
    job = q.submit("after the pause")
    assert order[:2] == ["claimed", "paused"]
    q.close()
    assert job.status is JobStatus.QUEUED


def test_bad_input_names_the_field_and_stores_nothing(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    with pytest.raises(InvalidJob, match=r"priority='urgent' is invalid; allowed: 'low', 'normal', 'high'"):
        q.submit("x", priority="urgent")
    with pytest.raises(InvalidJob, match=r"seed=-1"):
        q.submit("x", seed=-1)
    with pytest.raises(InvalidJob, match=r"status='done' is invalid; allowed: pending, queued, processing"):
        q.jobs(status="done")
    with pytest.raises(QueueConfigError, match=r"batch_size=0"):
        ImageQueue(db_path, batch_size=0)
    assert q.jobs() == [] and q.counts()["queued"] == 0
    with pytest.raises(JobNotFound, match="no job with id 42"):
        q.get(42)


def test_positions_move_up_and_events_say_so(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(step_time=0.02), start=False)
    events: list[JobEvent] = []
    q.subscribe(events.append)
    jobs = [q.submit(f"p{i}") for i in range(3)]
    assert [j.position for j in jobs] == [1, 2, 3]
    q.start()
    jobs[-1].result(timeout=10)  # returns once the events of its completion were delivered
    third = [e.position for e in events if e.job_id == jobs[2].id and e.kind is EventKind.POSITION]
    assert third == [2, 1]
    statuses = [e.status for e in events if e.job_id == jobs[0].id and e.kind is EventKind.STATUS]
    assert statuses == [JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETE]
    steps = [(e.step, e.total_steps) for e in events if e.job_id == jobs[0].id and e.kind is EventKind.PROGRESS]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_unsubscribe_stops_events(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, start=False)
    seen: list[JobEvent] = []
    unsubscribe = q.subscribe(seen.append)
    q.submit("one")
    wait_until(lambda: len(seen) == 1)
    unsubscribe()
    still: list[JobEvent] = []
    q.subscribe(still.append)
    two = q.submit("two")
    wait_until(lambda: [e.job_id for e in still] == [two.id])  # delivered, to subscribers still there
    assert len(seen) == 1


def test_a_subscriber_may_edit_the_queue_from_inside_an_edit_it_is_told_of(make_queue: MakeQueue, db_path: str) -> None:
    """On the queue's loop (a notebook's kernel), an edit tells its subscribers at once, while it
    still keeps the watcher from reading its rows back; a subscriber's own edit must not wait for
    that edit to end, which waits for the subscriber."""
    q = make_queue(db_path, start=False)
    first, second = q.submit("first"), q.submit("second")
    followed: list[int] = []

    def on_event(event: JobEvent) -> None:
        if event.kind is not EventKind.STATUS or event.status is not JobStatus.CANCELLED:
            return
        if event.job_id == first.id:
            q.cancel(second.id)  # on the loop: its subscribers are told inside this call
        elif event.job_id == second.id:
            followed.append(q.submit("after both").id)

    q.subscribe(on_event)
    q.cancel(first.id)
    wait_until(lambda: len(followed) == 1)
    assert q.get(followed[0]).status is JobStatus.QUEUED and second.status is JobStatus.CANCELLED


def test_a_step_is_known_at_once_even_while_the_loop_is_busy(make_queue: MakeQueue, db_path: str) -> None:
    """``step_of`` answers from the generation thread's report, not after a turn of the loop: a
    queue with no subscriber (a headless worker) does not hand each step to its loop."""
    loop_busy, loop_free = threading.Event(), threading.Event()
    seen: list[tuple[int, int] | None] = []
    made: list[ImageQueue] = []

    def generator(request: Any, on_step: Callable[..., None]) -> list[Image.Image]:
        made[0].loop.call(lambda: (loop_busy.set(), loop_free.wait(10)))
        assert loop_busy.wait(10), "the loop never took the blocking call"
        try:
            on_step(1, 3)
            seen.append(made[0].step_of(request.job_id))
        finally:
            loop_free.set()
        return [Image.new("RGB", (8, 8))]

    made.append(make_queue(db_path, generator=generator))
    job = made[0].submit("one")
    assert job.result(timeout=10)
    assert seen == [(1, 3)]


def test_a_failed_job_does_not_stop_the_queue(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    bad = q.submit("please fail", max_retries=0)
    good = q.submit("fine")
    good.result(timeout=10)
    with pytest.raises(JobFailed, match=r"TransientError: asked to fail"):
        bad.result(timeout=10)
    assert bad.status is JobStatus.ERROR and bad.attempts == 1 and "TransientError" in (bad.error or "")


def test_retries_back_off_exponentially(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(), retry_policy=RetryPolicy(base_delay=0.2))
    starts: list[float] = []
    statuses: list[JobStatus] = []

    def record(event: JobEvent) -> None:
        if event.kind is EventKind.STATUS:
            statuses.append(event.status)
            if event.status is JobStatus.PROCESSING:
                starts.append(time.monotonic())

    q.subscribe(record)
    job = q.submit("flaky", fail_times=2, max_retries=3)
    job.result(timeout=10)
    assert job.attempts == 3 and job.status is JobStatus.COMPLETE and job.error is None
    P, Q, R = JobStatus.PENDING, JobStatus.QUEUED, JobStatus.PROCESSING
    assert statuses == [Q, R, P, Q, R, P, Q, R, JobStatus.COMPLETE]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # 1x then 2x the base delay


def test_retries_run_out(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    job = q.submit("always fail", max_retries=2)
    with pytest.raises(JobFailed):
        job.result(timeout=10)
    assert job.attempts == 3 and job.status is JobStatus.ERROR


def test_pending_job_shows_its_retry_time(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), retry_policy=RetryPolicy(base_delay=30))
    job = q.submit("flaky", fail_times=1)
    wait_until(lambda: job.status is JobStatus.PENDING)
    assert job.position is None and job.run_at is not None
    assert 25 < (job.run_at - job.updated_at).total_seconds() <= 30.5
    assert "retrying in 30 s" in (job.error or "")


def test_timeout_stops_the_generator_and_frees_the_device(make_queue: MakeQueue, db_path: str) -> None:
    gen = FakeGenerator(step_time=0.02, steps=500)
    q = make_queue(db_path, generator=gen)
    slow = q.submit("slow", timeout=0.3)
    steps: list[int] = []
    q.subscribe(lambda e: steps.append(e.step or 0) if e.job_id == slow.id and e.step else None)
    after = q.submit("next", steps=1)
    after.result(timeout=10)
    with pytest.raises(JobFailed, match=r"timed out after 0.3 s"):
        slow.result(timeout=1)
    assert slow.attempts == 1  # timeouts are not retried
    assert max(steps) < 100  # stopped long before its 500 steps
    assert after.started_at is not None and slow.finished_at is not None
    assert after.started_at >= slow.finished_at  # the device went to the next job once it stopped


def test_timeout_without_on_step_is_reported_on_time(make_queue: MakeQueue, db_path: str) -> None:
    gen = FakeGenerator(step_time=0.1, steps=10, ignore_steps=True)  # one second, never interruptible
    q = make_queue(db_path, generator=gen)
    stuck = q.submit("stuck", timeout=0.2)
    after = q.submit("next", steps=1)
    with pytest.raises(JobFailed, match="timed out"):
        stuck.result(timeout=5)
    # marked on time: while its generator still runs, the next job still waits for the device
    assert after.status is JobStatus.QUEUED and stuck.started_at and stuck.finished_at
    after.result(timeout=10)
    # but the device stayed locked until the generator really returned
    assert after.started_at and (after.started_at - stuck.started_at).total_seconds() >= 0.95


def test_cancel_queued_and_running(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(step_time=0.02, steps=500))
    running = q.submit("running")
    waiting = q.submit("waiting")
    third = q.submit("third", steps=1)
    wait_until(lambda: running.status is JobStatus.PROCESSING and running.progress > 0)
    assert (waiting.position, third.position) == (1, 2)
    waiting.cancel()
    assert waiting.status is JobStatus.CANCELLED and waiting.position is None and third.position == 1
    running.cancel()
    with pytest.raises(JobCancelled):
        running.result(timeout=5)
    assert running.progress < 0.5
    third.result(timeout=5)
    with pytest.raises(IllegalTransition, match="from 'complete' to 'cancelled'"):
        third.cancel()
    with pytest.raises(IllegalTransition, match="from 'complete' to 'queued'"):
        third.retry()


def test_manual_retry_goes_to_the_back(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    failed = q.submit("a")
    failed.cancel()
    other = q.submit("b")
    failed.retry()
    assert (failed.status, failed.position, other.position) == (JobStatus.QUEUED, 2, 1)
    q.start()
    assert failed.result(timeout=10)


def test_result_timeout_leaves_the_job_alone(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(step_time=0.05, steps=10))
    job = q.submit("slow")
    with pytest.raises(JobWaitTimeout, match="goes on"):
        job.result(timeout=0.05)
    assert job.result(timeout=10) and job.status is JobStatus.COMPLETE


def test_metadata_deep_merge_survives_concurrent_threads(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    job = q.submit("x", metadata={"a": {"keep": 1}, "tags": ["t"]})

    def patch(worker: int) -> None:
        for i in range(40):
            q.update_metadata(job.id, {"a": {f"w{worker}_{i}": i}})

    threads = [threading.Thread(target=patch, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = q.get(job.id).metadata
    assert merged["a"]["keep"] == 1 and merged["tags"] == ["t"]
    assert len(merged["a"]) == 1 + 6 * 40
    with pytest.raises(InvalidJob, match="patch="):
        q.update_metadata(job.id, ["no"])  # type: ignore[arg-type]


def test_restart_keeps_order_positions_and_resumes(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    jobs = [q.submit(f"p{i}", priority=p, seed=i) for i, p in enumerate(["normal", "low", "high", "normal"])]
    before = {j.id: j.position for j in jobs}
    q.close()
    gen = FakeGenerator()
    reopened = make_queue(db_url, generator=gen, start=False)
    assert {j.id: reopened.get(j.id).position for j in jobs} == before
    assert [j.seed for j in reopened.jobs(status="queued")] == [2, 0, 3, 1]
    reopened.start()
    for j in jobs:
        reopened.get(j.id).result(timeout=10)
    assert gen.calls == [jobs[i].id for i in (2, 0, 3, 1)]


def test_retry_schedule_survives_a_restart(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), retry_policy=RetryPolicy(base_delay=1.0))
    job = q.submit("flaky", fail_times=1)
    wait_until(lambda: job.status is JobStatus.PENDING)
    run_at = job.run_at
    q.close()
    reopened = make_queue(db_path, generator=FakeGenerator())
    again = reopened.get(job.id)
    assert again.status is JobStatus.PENDING and again.run_at == run_at and again.attempts == 1
    again.result(timeout=10)
    assert again.started_at is not None and run_at is not None and again.started_at >= run_at


def test_close_hands_a_running_job_back(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(step_time=0.02, steps=500))
    running = q.submit("long")
    other = q.submit("next")
    wait_until(lambda: running.progress > 0)
    q.close()
    reopened = make_queue(db_url, start=False)
    back = reopened.get(running.id)
    assert (back.status, back.position, back.attempts) == (JobStatus.QUEUED, 1, 0)
    assert reopened.get(other.id).position == 2


def test_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("my precious notes\n" * 10)
    with pytest.raises(NotADatabase, match=r"is not an SQLite database .* left untouched"):
        ImageQueue(text)
    assert text.read_text() == "my precious notes\n" * 10
    with pytest.raises(NotADatabase, match="is a folder"):
        ImageQueue(tmp_path)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(NotADatabase, match="cannot be used as an imgnb database"):
        ImageQueue(corrupt)
    assert corrupt.read_bytes() == b"SQLite format 3\x00" + b"\xff" * 4000


def test_newer_schema_is_refused(make_queue: MakeQueue, db_path: str) -> None:
    make_queue(db_path, start=False).submit("kept").id  # noqa: B018
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE imgnb_meta SET schema_version = 99")
    with pytest.raises(SchemaVersionError, match="schema version 99, newer than this imgnb"):
        ImageQueue(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT prompt FROM imgnb_job").fetchall() == [("kept",)]


def test_unknown_older_schema_is_refused_untouched(make_queue: MakeQueue, db_path: str) -> None:
    make_queue(db_path, start=False).submit("kept")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE imgnb_meta SET schema_version = 0")
    with pytest.raises(SchemaVersionError, match=f"no upgrade from it to {SCHEMA_VERSION}"):
        ImageQueue(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT schema_version FROM imgnb_meta").fetchall() == [(0,)]


class FlakyStore(SQLStore):
    """A store whose first claim fails the way a database locked for too long does."""

    failures = 1

    def claim(self, **kwargs: Any) -> list[JobRecord]:
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("claim", {}, Exception("database is locked"))
        return super().claim(**kwargs)


def test_a_database_error_does_not_kill_the_worker(
    make_queue: MakeQueue, db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), store=FlakyStore(db_path))
    job = q.submit("still runs")
    assert job.result(timeout=10)
    assert "the worker of fake failed; trying again" in caplog.text


def test_client_queue_without_generator_only_stores(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path)
    job = q.submit("for another process")
    assert job.status is JobStatus.QUEUED and q.devices == []


async def test_inside_a_running_loop_like_a_kernel(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(step_time=0.01))
    assert not q.loop.owns_thread  # the worker runs on this loop, as in a Jupyter kernel
    jobs = [q.submit(f"p{i}") for i in range(3)]
    images = await jobs[0]
    assert images and jobs[0].status is JobStatus.COMPLETE
    assert jobs[2].result(timeout=10)  # a blocking wait in a "cell" keeps the loop turning
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    slow = q.submit("slow", steps=20)
    while not slow.done():
        await asyncio.sleep(0.01)
        await tick()
    assert ticks > 5  # the loop stayed responsive while the job ran in its thread


A_LATER_CELL_BLOCKS = """
import asyncio, sys
from imgnb import ImageQueue
from imgnb.testing import FakeGenerator

async def kernel():
    q = ImageQueue(sys.argv[1], generator=FakeGenerator())
    await asyncio.sleep(0)  # a later cell: the loop has turned since the queue was made
    job = q.submit("p")
    loop = asyncio.get_running_loop()
    ran, done = [], loop.create_future()

    def cell():
        job.result(timeout=10)  # a blocking wait: the loop is nested
        done.set_result(None)

    loop.call_soon(cell)
    for i in range(100):  # ready in the same turn of the loop as the cell
        loop.call_soon(ran.append, i)
    await done
    q.close()
    print(ran == list(range(100)))

asyncio.run(kernel())
"""


def test_a_queue_left_open_closes_with_the_loop_it_borrowed(tmp_path: Path) -> None:
    """``asyncio.run`` ends by cancelling every task of its loop, the queue's among them: the queue
    closes then and hands its running job back, every time. Before, the first queue made on a
    running loop replaced ``asyncio.run`` (nest-asyncio2 does) with one that cancels nothing, so
    each later run left a queue open with its threads polling the database: a script that ran
    ``asyncio.run`` a hundred times slowed from 0.03 to 2.5 s a run, measured here."""
    db = tmp_path / "left-open.db"
    made: list[ImageQueue] = []

    async def main() -> int:
        q = ImageQueue(db, generator=FakeGenerator(step_time=0.01, steps=10_000), lease=FAST_LEASE)
        made.append(q)
        job = q.submit("still running when main returns")
        deadline = time.monotonic() + 10
        while q.step_of(job.id) is None:
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.01)
        return job.id

    for run in range(2):
        job_id = asyncio.run(main())
        assert made[run].closed
        with ImageQueue(db, start=False) as check:
            back = check.get(job_id)
            assert (back.status, back.attempts) == (JobStatus.QUEUED, 0)
            check.cancel(job_id)  # the next run starts its own job


class AnnouncingStore(SQLStore):
    """An SQLStore whose listeners the test calls itself, as its listener thread would on a
    write of another process (from the loop's thread here: at a chosen turn of the loop)."""

    def __init__(self, db: str | Path) -> None:
        super().__init__(db)
        self.callbacks: list[Callable[[int | None], None]] = []

    def listen(self, callback: Callable[[int | None], None], *, work_only: bool = False) -> Callable[[], None]:
        self.callbacks.append(callback)
        return super().listen(callback, work_only=work_only)

    def announce(self) -> None:
        for callback in self.callbacks:
            callback(None)  # writes may have been missed: the watcher looks at once


def test_a_loop_that_ends_as_a_change_is_announced_ends(tmp_path: Path) -> None:
    """``asyncio.run`` cancels every task at its end, then waits for them. The watcher waited with
    ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that comes once what it
    waits for is set: announced just then, the watcher ran on and the end waited for ever (a CI
    run's teardown hung so). The announcement comes 0 to 3 turns of the loop before the end."""
    for turns in range(4):
        store = AnnouncingStore(tmp_path / f"announced-{turns}.db")

        async def main(turns: int = turns, store: AnnouncingStore = store) -> None:
            q = ImageQueue(store.url, store=store, generator=FakeGenerator(), lease=FAST_LEASE)
            await q.submit("done")
            store.announce()
            for _ in range(turns):
                await asyncio.sleep(0)

        ended = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        ended.start()
        ended.join(timeout=30)
        assert not ended.is_alive(), f"asyncio.run never returned ({turns} turns)"


def test_a_blocking_wait_while_other_callbacks_are_ready_keeps_the_loop_running(tmp_path: Path) -> None:
    """The loop is made reentrant when the queue is made on it, not at the first blocking wait:
    patched in the middle of a turn, the turn that nests it would find the callbacks it counted
    gone (run by the nested loop) and stop the kernel's loop with IndexError. In a fresh process:
    the patch, once made, holds for every loop of the process."""
    done = subprocess.run(
        [sys.executable, "-c", A_LATER_CELL_BLOCKS, str(tmp_path / "q.db")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # each callback ran once


async def test_cancelling_a_waiting_cell_keeps_the_job(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(step_time=0.02, steps=10))
    job = q.submit("survives")
    waiter = asyncio.ensure_future(_await(job))
    while job.status is not JobStatus.PROCESSING:
        await asyncio.sleep(0.01)
    waiter.cancel()  # the user pressed Stop on the cell awaiting the job
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await job and job.status is JobStatus.COMPLETE


async def _await(job: object) -> object:
    return await job  # type: ignore[misc]
