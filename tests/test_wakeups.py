"""Wake-ups (``Store.listen``): LISTEN/NOTIFY on PostgreSQL, ``PRAGMA data_version`` watched on
SQLite, and the revisions behind them.

The queues here poll every 30 s, so a change that arrives within the tests' 15 s wait came by
announcement, on both backends. PostgreSQL's revisions come from a sequence: the tests hold writes
in flight with row locks taken behind the store's back and check that readers never skip past them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from imgnb import ImageQueue, JobStatus, LeasePolicy
from imgnb.core.records import BulkChange, JobRecord
from imgnb.core.revisions import WORTH_SKIPPING, Run
from imgnb.store import SQLStore
from imgnb.store.notify import APPLICATION_NAME
from imgnb.store.schema import SCHEMA_VERSION
from imgnb.testing import FakeGenerator, MemoryStore
from tests.fixtures.queues import back_to_schema, reopened_at_schema, wait_until
from tests.test_store_contract import NOW, spec

SLOW_POLL = LeasePolicy(lease=60.0, heartbeat=30.0, poll=30.0)  # nothing arrives by polling in a test's time
MakeQueue = Callable[..., ImageQueue]


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def stores(pg_db_url: str) -> Iterator[Callable[[], SQLStore]]:
    made: list[SQLStore] = []

    def make() -> SQLStore:
        made.append(SQLStore(pg_db_url))
        return made[-1]

    yield make
    for store in made:
        store.close()


def heard_by(store: SQLStore) -> tuple[list[int | None], Callable[[], None]]:
    heard: list[int | None] = []
    stop = store.listen(heard.append)
    return heard, stop


@pytest.mark.postgres
def test_writes_of_other_stores_are_announced_and_own_writes_are_not(stores: Callable[[], SQLStore]) -> None:
    listener, other = stores(), stores()
    heard, stop = heard_by(listener)
    wait_until(lambda: listener_sessions(listener) == 1)
    (own,) = listener.add([spec("mine")], batch_keys=[None], now=NOW)
    (theirs,) = other.add([spec("theirs")], batch_keys=[None], now=NOW)
    wait_until(lambda: theirs.revision in heard)
    # announcements come in commit order, and the listener's own write came first
    assert own.revision not in heard and heard == [theirs.revision]
    stop()


def test_a_work_only_listener_hears_what_may_give_work_and_not_claims_or_finishes(db_url: str) -> None:
    """What a headless worker listens to: every write except those that only take or settle work
    (PostgreSQL: a channel of their own; SQLite: the counter of the last work write). Each write
    is waited for before the next: SQLite's watcher takes what came between two looks as one."""
    listener, other = SQLStore(db_url), SQLStore(db_url)
    everything: list[int | None] = []
    work: list[int | None] = []
    stops = [listener.listen(everything.append), listener.listen(work.append, work_only=True)]
    if listener.dialect == "postgresql":
        wait_until(lambda: listener_sessions(listener) == 2)

    def quiet(revision: int) -> None:
        wait_until(lambda: revision in everything)

    def for_work(revision: int) -> int:
        wait_until(lambda: revision in work and revision in everything)
        return revision

    first, second = other.add([spec("first"), spec("second")], batch_keys=[None, None], now=NOW)
    for_work(first.revision)
    (claimed,) = other.claim(owner="w", device="host/gpu0", now=NOW, lease=60)
    quiet(claimed.revision)
    other.set_progress(claimed.id, owner="w", progress=0.5, now=NOW)
    quiet(other.get(claimed.id).revision)
    other.renew(owner="w", device="host/gpu0", job_ids=[claimed.id], now=NOW, lease=60)
    quiet(other.get(claimed.id).revision)
    finished = other.finish(claimed.id, owner="w", status=JobStatus.COMPLETE, now=NOW)
    assert finished is not None
    quiet(finished.revision)
    edits = [for_work(other.cancel(second.id, now=NOW).revision), for_work(other.requeue(second.id, now=NOW).revision)]
    edits.append(for_work(other.set_priority(second.id, 0, now=NOW).revision))
    assert work == [first.revision, *edits]
    assert {claimed.revision, finished.revision} < set(everything)
    for stop in stops:
        stop()
    listener.close()
    other.close()


def listener_sessions(store: SQLStore) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"), {"n": APPLICATION_NAME}
            ).scalar_one()
        )


@pytest.mark.postgres
def test_a_dropped_listener_session_is_opened_again(stores: Callable[[], SQLStore]) -> None:
    listener, other = stores(), stores()
    heard, stop = heard_by(listener)
    wait_until(lambda: listener_sessions(listener) == 1)
    with other.engine.connect() as conn:
        killed = conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :n"),
            {"n": APPLICATION_NAME},
        ).scalars()
        assert list(killed) == [True]
    wait_until(lambda: None in heard)  # reconnected, and told that announcements may have been missed
    (job,) = other.add([spec()], batch_keys=[None], now=NOW)
    wait_until(lambda: job.revision in heard)
    stop()


def test_an_sqlite_file_is_watched_for_other_connections_writes(tmp_path: Path) -> None:
    """Writes of any other connection are heard, the store's own among them (SQLite cannot tell
    them apart; the queue drops revisions it knows), in commit order."""
    watching, other = SQLStore(tmp_path / "jobs.db"), SQLStore(tmp_path / "jobs.db")
    heard, stop = heard_by(watching)
    (own,) = watching.add([spec("mine")], batch_keys=[None], now=NOW)
    wait_until(lambda: own.revision in heard)
    (theirs,) = other.add([spec("theirs")], batch_keys=[None], now=NOW)
    wait_until(lambda: theirs.revision in heard)
    assert heard == [own.revision, theirs.revision]
    stop()
    watching.close()
    other.close()


def test_a_store_that_cannot_announce_gives_a_stop_and_never_calls() -> None:
    store = MemoryStore()  # one process's memory: nobody else writes to it
    called: list[int | None] = []
    stop = store.listen(called.append)
    store.add([spec()], batch_keys=[None], now=NOW)
    stop()
    store.close()
    assert called == []


def listening(url: str, *queues: ImageQueue) -> None:
    """Until every queue hears other processes' writes. On SQLite a queue does once it is made (its
    watcher's first session opens in the constructor); on PostgreSQL once its LISTEN session is up."""
    if url.startswith("postgresql"):
        wait_until(lambda: listener_sessions(queues[0].store) == len(queues))  # type: ignore[arg-type]


@pytest.mark.parametrize("headless", [False, True], ids=["watching", "headless"])
def test_a_submit_wakes_an_idle_worker_and_a_watcher_at_once(
    db_url: str, make_queue: MakeQueue, headless: bool
) -> None:
    """Within the test's wait, far below the 30 s poll: LISTEN/NOTIFY on PostgreSQL, SQLite's
    data_version watched every 20 ms on SQLite. A headless worker hears submits too."""
    gen = FakeGenerator()
    worker = make_queue(db_url, generator=gen, lease=SLOW_POLL, headless=headless)
    watcher = make_queue(db_url, lease=SLOW_POLL)
    client = make_queue(db_url, lease=SLOW_POLL)
    listening(db_url, worker, watcher, client)
    job = client.submit("wake up")
    seen = watcher.get(job.id)  # a handle the watcher keeps current from announcements alone
    wait_until(lambda: seen.status is JobStatus.COMPLETE)  # ran on the worker, seen by the watcher
    assert gen.calls == [job.id]


@pytest.mark.parametrize("headless", [False, True], ids=["watching", "headless"])
def test_a_cancel_stops_a_job_running_in_another_queue_at_its_next_step(
    db_url: str, make_queue: MakeQueue, headless: bool
) -> None:
    gen = FakeGenerator(steps=3000, step_time=0.005)  # 15 s unless stopped
    worker = make_queue(db_url, generator=gen, lease=SLOW_POLL, headless=headless)
    client = make_queue(db_url, lease=SLOW_POLL)
    listening(db_url, worker, client)
    job = client.submit("long")
    wait_until(lambda: worker.step_of(job.id) is not None)
    client.cancel(job.id)
    wait_until(lambda: job.status is JobStatus.CANCELLED, timeout=5)  # not the 15 s run, nor a 30 s heartbeat


class CountingReads(SQLStore):
    """An SQLStore that counts the watcher's reads of other processes' changes."""

    reads = 0

    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        self.reads += 1
        return super().changes_since(revision, applied=applied)


def test_a_headless_queue_reads_unannounced_changes_at_its_heartbeat_not_each_poll(
    db_url: str, make_queue: MakeQueue
) -> None:
    """What it must hear is announced; the look at every poll was a third of an idle worker's CPU."""
    lease = LeasePolicy(lease=60.0, heartbeat=30.0, poll=0.02)
    watching, headless = CountingReads(db_url), CountingReads(db_url)
    make_queue(db_url, store=watching, lease=lease)
    make_queue(db_url, store=headless, lease=lease, headless=True)
    wait_until(lambda: watching.reads >= 20)  # 20 polls of the watching queue
    assert headless.reads <= 1  # its first look, at start


EDITS = frozenset(
    {"add", "cancel", "cancel_all", "requeue", "requeue_failed", "move", "set_priority", "update_metadata"}
)  # the Store's writes that ImageQueue makes in the caller's thread


class SlowAfterWrites(SQLStore):
    """An SQLStore whose edits hold the caller a moment after they commit, as the bookkeeping of a
    100,000-job edit does, and which records the ids each read of changes returned."""

    def __init__(self, db: str) -> None:
        super().__init__(db)
        self.read_back: list[int] = []
        self.read_upto = 0  # the newest revision a read reached
        self.pause = 0.0
        self._reading = threading.Lock()

    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        with self._reading:
            current, records = super().changes_since(revision, applied=applied)
            self.read_back += [r.id for r in records]
            self.read_upto = max(self.read_upto, current)
        return current, records

    def forget_reads(self) -> None:
        """Wait until the watcher has read past every write so far, then forget what was read
        back, once no read is under way. Its mirror has no gap behind it then (on PostgreSQL an
        empty claim leaves one; past a gap the queue's own small writes are read back, by design,
        see ``core.revisions``), and a read that began before a worker's write was published, which
        may return that write's rows as it should, is not counted."""
        upto = self.queued_snapshot()[0]
        wait_until(lambda: self.read_upto >= upto)
        with self._reading:
            self.read_back.clear()

    def __getattribute__(self, name: str) -> Any:
        method = super().__getattribute__(name)
        if name not in EDITS:
            return method

        def slowed(*args: Any, **kwargs: Any) -> Any:
            written = method(*args, **kwargs)
            time.sleep(self.pause)  # the slow bookkeeping itself, not a wait for anything
            return written

        return slowed


def test_the_watcher_never_reads_back_what_this_queue_wrote(db_url: str, make_queue: MakeQueue) -> None:
    """Each edit's rows reach the mirror from what the write returned. A watcher that read them in
    the gap between the commit and that update decoded every row again: 2-3 s on the database
    thread after a bulk retry of 100,000 jobs, measured in bench_history."""
    store = SlowAfterWrites(db_url)
    q = make_queue(db_url, store=store, generator=FakeGenerator())
    failed = q.submit_batch([{"prompt": f"fail {i}"} for i in range(3)], max_retries=0)
    wait_until(lambda: all(job.status is JobStatus.ERROR for job in failed))
    q.pause()
    store.forget_reads()
    store.pause = 0.2  # ten of the watcher's polls, and the write's announcement comes at once
    first, second, third = q.retry_failed()
    second.move_to_front()
    q.move(third.id, before=second)
    first.set_priority("high")
    q.update_metadata(first.id, {"note": "kept"})
    q.cancel(first.id)
    q.retry(first.id)
    q.submit("one more")
    assert q.cancel_all() == 4
    assert [q.get(job.id).status for job in failed] == [JobStatus.CANCELLED] * 3
    assert store.read_back == []


class OtherWriteFirst(SlowAfterWrites):
    """Another process edits job ``touch`` just before each bulk retry of this queue: a gap in the
    revisions this queue wrote, which its watcher can read only once the retry is published."""

    def __init__(self, db: str) -> None:
        super().__init__(db)
        self.other = SQLStore(db)
        self.touch = 0

    def requeue_failed(self, *, group: str | None, now: float) -> BulkChange:
        self.other.update_metadata(self.touch, {"by": "another process"})
        return super().requeue_failed(group=group, now=now)

    def close(self) -> None:
        self.other.close()
        super().close()


def test_past_another_process_write_the_watcher_reads_that_write_alone(db_url: str, make_queue: MakeQueue) -> None:
    """The mirror stopped at the gap and the watcher read the retry's rows back with the other
    write: on PostgreSQL, where an empty claim leaves a gap too, one test run in ten above."""
    store = OtherWriteFirst(db_url)
    q = make_queue(db_url, store=store, generator=FakeGenerator())
    done = q.submit("done")
    failed = q.submit_batch([{"prompt": f"fail {i}"} for i in range(WORTH_SKIPPING)], max_retries=0)
    wait_until(lambda: done.status is JobStatus.COMPLETE and all(job.status is JobStatus.ERROR for job in failed))
    q.pause()
    store.forget_reads()
    store.touch = done.id
    assert len(q.retry_failed()) == WORTH_SKIPPING
    wait_until(lambda: store.read_back)
    assert store.read_back == [done.id]
    wait_until(lambda: done.metadata == {"by": "another process"})


def blocked_writers(url: str) -> int:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
        return int(row[0]) if row else 0


@pytest.mark.postgres
def test_readers_stop_below_a_write_in_flight(stores: Callable[[], SQLStore], pg_db_url: str) -> None:
    """A write that drew its revision but has not committed holds every reader's revision below it:
    a later write that commits first is not read past it, and nothing is skipped."""
    early_store, late_store, reader = stores(), stores(), stores()
    held, other = early_store.add([spec("held"), spec("other")], batch_keys=[None, None], now=NOW)
    start, _ = reader.changes_since(0)
    with psycopg.connect(libpq(pg_db_url)) as blocker:  # locks the row behind the store's back
        blocker.execute("SELECT id FROM imgnb_job WHERE id = %s FOR UPDATE", (held.id,))
        early = threading.Thread(target=early_store.update_metadata, args=(held.id, {"early": True}))
        early.start()  # draws its revision, then waits for the row
        wait_until(lambda: blocked_writers(pg_db_url) == 1)
        late = late_store.update_metadata(other.id, {"late": True})  # a later revision, committed
        revision, changed = reader.changes_since(start)
        assert revision < late.revision and other.id not in [r.id for r in changed]
        blocker.rollback()
    early.join(timeout=10)
    final, changed = reader.changes_since(revision)
    assert {r.id: r.metadata for r in changed} == {held.id: {"early": True}, other.id: {"late": True}}
    assert final >= late.revision


@pytest.mark.postgres
def test_a_row_changed_by_a_write_that_drew_earlier_gets_a_newer_revision(
    stores: Callable[[], SQLStore], pg_db_url: str
) -> None:
    store = stores()
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    with psycopg.connect(libpq(pg_db_url)) as other:
        other.execute("SELECT id FROM imgnb_job WHERE id = %s FOR UPDATE", (job.id,))
        done: list[object] = []
        early = threading.Thread(target=lambda: done.append(store.update_metadata(job.id, {"a": 1})))
        early.start()  # draws its revision first, then waits for the row
        wait_until(lambda: blocked_writers(pg_db_url) == 1)
        (later,) = other.execute(  # a writer that drew after it changes the row and commits first
            "UPDATE imgnb_job SET revision = nextval('imgnb_revision') WHERE id = %s RETURNING revision", (job.id,)
        ).fetchone() or (None,)
        other.commit()
    early.join(timeout=10)
    (updated,) = done
    assert isinstance(later, int) and updated.revision > later  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_a_database_from_before_the_sequence_counts_on_from_its_counter(pg_db_url: str) -> None:
    store = SQLStore(pg_db_url)
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    with store.engine.begin() as conn:  # back to schema 4: revisions from the counter row
        back_to_schema(conn, 5)
        conn.exec_driver_sql("DROP TRIGGER imgnb_job_restamp ON imgnb_job")
        conn.exec_driver_sql("DROP FUNCTION imgnb_job_restamp()")
        conn.exec_driver_sql("DROP SEQUENCE imgnb_revision")
        conn.exec_driver_sql("UPDATE imgnb_job SET revision = 40")
        conn.exec_driver_sql("UPDATE imgnb_meta SET schema_version = 4, revision = 41")
    store.close()
    upgraded = SQLStore(pg_db_url)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version FROM imgnb_meta").scalar() == SCHEMA_VERSION
        assert upgraded.changes_since(0) == (41, [upgraded.get(job.id)])
        cancelled = upgraded.cancel(job.id, now=NOW)
        assert cancelled.revision == 42 and upgraded.changes_since(41) == (42, [cancelled])
    finally:
        upgraded.close()


def test_a_version_6_database_gets_the_work_counter_of_headless_workers(db_url: str) -> None:
    store = SQLStore(db_url)
    store.add([spec()], batch_keys=[None], now=NOW)
    upgraded = reopened_at_schema(store, 6)
    try:
        meta = "SELECT schema_version, revision, work_revision FROM imgnb_meta"
        with upgraded.engine.connect() as conn:
            version, revision, work_revision = conn.exec_driver_sql(meta).one()
        assert version == SCHEMA_VERSION and work_revision == revision  # no work write is missed
        (claimed,) = upgraded.claim(owner="w", device="host/gpu0", now=NOW, lease=60)
        cancelled = upgraded.cancel(claimed.id, now=NOW)
        upgraded.renew(owner="w", device="host/gpu0", job_ids=[claimed.id], now=NOW, lease=60)
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql(meta).one()[2] == (
                cancelled.revision if upgraded.dialect == "sqlite" else revision
            )
    finally:
        upgraded.close()


def test_a_full_run_on_a_watched_queue_sees_each_state(db_url: str, make_queue: MakeQueue) -> None:
    worker = make_queue(db_url, generator=FakeGenerator(steps=40, step_time=0.01), lease=SLOW_POLL)
    watcher = make_queue(db_url, lease=SLOW_POLL)
    listening(db_url, worker, watcher)
    statuses: list[JobStatus] = []
    job = watcher.submit("watched")
    watcher.subscribe(lambda e: statuses.append(e.status) if e.job_id == job.id and e.kind.value == "status" else None)
    wait_until(lambda: JobStatus.COMPLETE in statuses)
    assert statuses == [JobStatus.PROCESSING, JobStatus.COMPLETE]


@pytest.mark.postgres
def test_counts_stay_exact_with_writers_in_parallel(stores: Callable[[], SQLStore]) -> None:
    """No writer waits for another any more: the counts kept by triggers, in parts, still add up."""
    setup = stores()
    jobs = setup.add([spec(f"j{i}") for i in range(200)], batch_keys=[None] * 200, now=NOW)
    failures: list[BaseException] = []

    def work(store: SQLStore, device: str) -> None:
        try:
            while claimed := store.claim(owner=device, device=device, now=NOW, lease=60):
                for record in claimed:
                    store.finish(record.id, owner=device, status=JobStatus.COMPLETE, now=NOW)
        except BaseException as exc:
            failures.append(exc)

    def cancel(store: SQLStore) -> None:
        try:
            for job in jobs[100::3]:
                store.cancel(job.id, now=NOW)  # a waiting job at once, a running one at its next step
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(stores(), f"host/gpu{i}")) for i in range(4)]
    threads.append(threading.Thread(target=cancel, args=(stores(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with setup.engine.connect() as conn:
        actual = dict(conn.execute(sa.text("SELECT status, count(*) FROM imgnb_job GROUP BY status")).all())
    counted = {status.value: n for status, n in setup.counts().items() if n}
    assert counted == actual and sum(counted.values()) == 200
