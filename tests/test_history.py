"""A queue that lives for months: pages, pruning and retention, the DataFrame export, and editing
waiting jobs, through ``ImageQueue`` on SQLite and PostgreSQL, plus the pure rules behind them."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

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
    MissingExtra,
    QueueConfigError,
    Retention,
)
from imgnb.core.bulk_events import BulkEvents
from imgnb.core.editing import Place, Renumbering, move_before, new_seqs
from imgnb.core.history import pruned_ids
from imgnb.core.ordering import OrderIndex
from imgnb.core.table import flatten, job_row
from imgnb.store import SQLStore
from imgnb.store.schema import SCHEMA_VERSION
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import back_to_schema, index_sql, reopened_at_schema, wait_until
from tests.test_store_contract import NOW, spec

MakeQueue = Callable[..., ImageQueue]
S = JobStatus


def run_all(q: ImageQueue, n: int, **kwargs: Any) -> list[int]:
    """Submit n jobs to a started queue and wait for them; returns their ids."""
    jobs = [q.submit(f"job {i}", seed=i, **kwargs) for i in range(n)]
    wait_until(lambda: all(j.done() for j in jobs))
    return [j.id for j in jobs]


def positions(q: ImageQueue) -> list[int]:
    return q.head(100)


# -- the pure rules ---------------------------------------------------------------------------------


def test_pruned_ids_keep_the_newest_and_those_too_young() -> None:
    finished = [(1, 10.0), (2, 30.0), (3, 20.0), (4, 30.0), (5, None)]
    assert pruned_ids(finished, finished_before=None, keep_last=None) == [1, 2, 3, 4, 5]
    assert sorted(pruned_ids(finished, finished_before=None, keep_last=2)) == [1, 3]  # 4 and 2: newest, id breaks ties
    assert sorted(pruned_ids(finished, finished_before=25.0, keep_last=None)) == [1, 3]
    assert pruned_ids(finished, finished_before=25.0, keep_last=3) == [1]
    assert pruned_ids(finished, finished_before=None, keep_last=9) == []


@settings(deadline=None)  # a loaded machine must not fail it
@given(n=st.integers(2, 12), data=st.data())
def test_move_before_puts_the_job_exactly_before_its_target(n: int, data: st.DataObject) -> None:
    seqs = sorted(data.draw(st.sets(st.integers(-50, 50), min_size=n, max_size=n)))
    order = list(range(1, n + 1))  # ids in run order, with seqs ascending
    job, target = data.draw(st.sampled_from(order)), data.draw(st.sampled_from(order))
    if job == target:
        return
    plan = move_before(order, job, target)
    lowest, next_seq = min(seqs), max(seqs) + 1
    fresh = new_seqs(plan, lowest=lowest, taken=next_seq)
    seq_of = dict(zip(order, seqs, strict=True)) | fresh
    new_order = sorted(order, key=seq_of.__getitem__)
    expected = [i for i in order if i != job]
    expected.insert(expected.index(target), job)
    assert new_order == expected
    assert len(set(seq_of.values())) == n  # unique
    assert len(plan.ids) <= (n + 2) // 2 + 1  # the shorter side is renumbered
    assert all(s < lowest for s in fresh.values()) if plan.below else all(s >= next_seq for s in fresh.values())


def test_a_move_to_where_the_job_is_changes_nothing() -> None:
    assert move_before([1, 2, 3], 1, 2) == Renumbering((), below=False)


@settings(deadline=None)
@given(
    start=st.dictionaries(st.integers(0, 300), st.tuples(st.integers(-2, 0), st.integers(-50, 50)), max_size=300),
    changes=st.lists(
        st.tuples(st.integers(0, 300), st.none() | st.tuples(st.integers(-2, 0), st.integers(-50, 50))), max_size=300
    ),
)
def test_order_index_bulk_update_matches_one_by_one(
    start: dict[int, tuple[int, int]], changes: list[tuple[int, tuple[int, int] | None]]
) -> None:
    bulk, single = OrderIndex(start.items()), OrderIndex(start.items())
    bulk.update(changes)
    for job_id, key in changes:
        single.discard(job_id) if key is None else single.put(job_id, key)
    assert list(bulk) == list(single) and all(bulk.position(i) == single.position(i) for i in range(301))


def test_retention_is_checked_when_made() -> None:
    assert Retention(older_than=timedelta(days=2)).older_than_seconds == 172800.0
    assert Retention(keep_last=0).older_than_seconds is None
    for bad, says in [
        ({}, "needs older_than=, keep_last= or both"),
        ({"older_than": -1}, "older_than=-1 is invalid"),
        ({"keep_last": 1.5}, "keep_last=1.5 is invalid"),
        ({"keep_last": 5, "every": 0}, "every=0 is invalid"),
    ]:
        with pytest.raises(QueueConfigError, match=says):
            Retention(**bad)


def test_a_job_row_flattens_params_and_metadata() -> None:
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}}) == {"a.b.c": 1, "a.d": [], "e": {}}
    (record,) = SQLStore("sqlite://").add([spec(metadata={"sweep": {"g": 7}})], batch_keys=[None], now=NOW)
    row = job_row(record)
    assert row["steps"] == 2 and row["metadata.sweep.g"] == 7 and row["model"] is None
    assert row["waited_s"] is None and row["run_s"] is None and row["priority"] == "normal"


# -- pages -------------------------------------------------------------------------------------------


def test_jobs_reads_one_page(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    ids = [j.id for j in q.submit_batch([{"prompt": f"p{i}"} for i in range(30)])]
    assert [j.id for j in q.jobs(limit=5)] == ids[:5]
    assert [j.id for j in q.jobs("queued", limit=5, offset=10)] == ids[10:15]
    assert [j.id for j in q.jobs(limit=3, newest_first=True)] == ids[::-1][:3]
    for bad in ({"limit": -1}, {"offset": "2"}, {"limit": True}):
        with pytest.raises(InvalidJob):
            q.jobs(**bad)


# -- pruning and retention ------------------------------------------------------------------------


def test_prune_removes_finished_jobs_everywhere(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator())
    done = run_all(q, 5)
    q.pause()
    waiting = q.submit("still waiting")
    events: list[JobEvent] = []
    q.subscribe(events.append)
    handle = q.get(done[0])
    images = [Path(p) for i in done for p in q.get(i).images]
    assert all(p.exists() for p in images)
    with pytest.raises(InvalidJob, match="not finished and is never pruned"):
        q.prune(status="queued")
    assert q.prune(keep_last=2, delete_images=True) == 3
    assert [j.id for j in q.recent(10)] == done[:2:-1]  # the two newest are kept
    assert [p.exists() for p in images] == [False] * 3 + [True] * 2  # and only theirs deleted
    with pytest.raises(JobNotFound):
        q.get(done[0])
    assert handle.status is JobStatus.COMPLETE and handle.id == done[0]  # the last state seen
    assert q.counts()["complete"] == 2 and waiting.status is JobStatus.QUEUED
    wait_until(lambda: {e.job_id for e in events if e.kind is EventKind.REMOVED} == set(done[:3]))
    other = make_queue(db_url, start=False)  # another process sees them gone too
    assert [j.id for j in other.jobs("complete")] == done[3:]
    assert q.prune(older_than=timedelta(hours=1)) == 0  # all finished just now
    assert q.prune(older_than=0) == 2


def test_retention_prunes_on_open_and_then_periodically(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator())
    run_all(q, 4)
    q.close()
    kept = make_queue(db_url, generator=FakeGenerator(), keep=Retention(keep_last=2, every=0.2))
    wait_until(lambda: kept.counts()["complete"] == 2)  # on open
    run_all(kept, 3)
    wait_until(lambda: kept.counts()["complete"] == 2)  # and again a little later
    with pytest.raises(QueueConfigError, match="keep="):
        make_queue(db_url, keep={"keep_last": 2})


def test_a_new_sqlite_file_gives_pages_back_after_a_prune(make_queue: MakeQueue, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    q = make_queue(db, start=False)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    q.submit_batch([{"prompt": "x" * 2000} for _ in range(2000)])
    q.cancel_all()
    before = _pages(db)
    assert q.prune() == 2000
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert _pages(db) < before / 4


def test_an_old_sqlite_file_turns_auto_vacuum_on_at_its_first_prune(make_queue: MakeQueue, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    make_queue(db, start=False).close()
    with sqlite3.connect(db, isolation_level=None) as conn:  # as a file made before schema 4
        conn.executescript("PRAGMA auto_vacuum = NONE; VACUUM;")
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    q = make_queue(db, start=False)
    q.submit("x")
    q.cancel_all()
    assert q.prune() == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)


def _pages(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(db) // 4096


def test_a_version_5_database_keeps_moving_jobs_to_the_front(db_url: str) -> None:
    """Schema 6 keeps the lowest run-order number in a counter (no index on ``seq``), and indexes
    the finish time of finished jobs only: an upgraded file starts the counter at its lowest
    number, a move to the front still goes below every job, and the newest finished come first."""
    store = SQLStore(db_url)
    a, b, c = store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW)
    store.move(c.id, to=Place.FRONT, now=NOW)
    lowest = store.get(c.id).seq
    upgraded = reopened_at_schema(store, 5)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version, low_seq FROM imgnb_meta").one() == (
                SCHEMA_VERSION,
                lowest,
            )
            assert "imgnb_job_seq" not in {ix["name"] for ix in sa.inspect(conn).get_indexes("imgnb_job")}
            assert "finished_at IS NOT NULL" in index_sql(conn, "imgnb_job_finished")  # of finished jobs only
        upgraded.move(b.id, to=Place.FRONT, now=NOW)
        assert [r.id for r in upgraded.list_jobs(status=S.QUEUED)] == [b.id, c.id, a.id]
        assert upgraded.get(b.id).seq < lowest
        upgraded.cancel(a.id, now=NOW + 1)
        assert [r.id for r in upgraded.recently_finished(limit=1)] == [a.id]
    finally:
        upgraded.close()


def test_a_version_7_database_gets_a_run_order_index_of_queued_jobs_only(db_url: str) -> None:
    """Schema 8: a finish never touches the run-order index, and a claim, cancel or retry changes
    one entry of it, not two. The claim and the queued list still walk it in run order."""
    store = SQLStore(db_url)
    a, b, c = store.add([spec("a"), spec("b", priority=2), spec("c")], batch_keys=[None] * 3, now=NOW)
    upgraded = reopened_at_schema(store, 7)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version FROM imgnb_meta").scalar() == SCHEMA_VERSION
            declared = index_sql(conn, "imgnb_job_run_order")
            assert re.search(r"WHERE \(*status\)?(::text)? = 'queued'", declared), declared
        statements: list[str] = []  # SQLite: what the claim ran (its values in place, as the trace shows them)
        if upgraded.dialect == "sqlite":
            sa.event.listen(upgraded.engine, "connect", lambda dbapi, _: dbapi.set_trace_callback(statements.append))
            upgraded.engine.dispose()  # the next write opens a traced connection
        assert [r.id for r in upgraded.list_jobs(status=S.QUEUED)] == [b.id, a.id, c.id]
        (first,) = upgraded.claim(owner="w", device="host/gpu0", now=NOW, lease=60)
        assert first.id == b.id
        for statement in (s for s in statements if "ORDER BY" in s):  # the claim's head: from the index, unsorted
            with upgraded.engine.connect() as conn:
                plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}"))
            assert "imgnb_job_run_order" in plan and "TEMP B-TREE" not in plan, (statement, plan)
        assert upgraded.dialect != "sqlite" or any("ORDER BY" in s for s in statements), statements
        upgraded.finish(first.id, owner="w", status=S.ERROR, now=NOW, error="boom")
        upgraded.requeue_failed(group=None, now=NOW)
        assert [r.id for r in upgraded.list_jobs(status=S.QUEUED)] == [b.id, a.id, c.id]
    finally:
        upgraded.close()


def test_a_version_3_database_is_upgraded_with_its_counts(db_url: str) -> None:
    store = SQLStore(db_url)
    jobs = store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW)
    store.cancel(jobs[0].id, now=NOW)
    with store.engine.begin() as conn:  # back to schema 3: no counts table, triggers or history indexes
        back_to_schema(conn, 5)
        conn.exec_driver_sql("DROP TABLE imgnb_count")
        if store.dialect == "postgresql":
            conn.exec_driver_sql("DROP FUNCTION imgnb_count_rows() CASCADE")
        for name in ("imgnb_job_status_id", "imgnb_job_finished", "imgnb_job_seq"):
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("UPDATE imgnb_meta SET schema_version = 3")
    store.close()
    upgraded = SQLStore(db_url)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version FROM imgnb_meta").scalar() == SCHEMA_VERSION
            names = {ix["name"] for ix in sa.inspect(conn).get_indexes("imgnb_job")}
            assert {"imgnb_job_status_id", "imgnb_job_finished"} <= names and "imgnb_job_seq" not in names
        assert upgraded.counts()[S.CANCELLED] == 1 and upgraded.counts()[S.QUEUED] == 2
        upgraded.add([spec("d")], batch_keys=[None], now=NOW)  # the triggers count from here on
        upgraded.cancel_all(statuses={S.QUEUED}, group=None, now=NOW)
        assert {s: n for s, n in upgraded.counts().items() if n} == {S.CANCELLED: 4}
    finally:
        upgraded.close()


# -- export ------------------------------------------------------------------------------------------


def test_to_dataframe_one_row_per_job(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator())
    done = q.submit("a fox", seed=3, steps=2, guidance_scale=7.5, metadata={"sweep": {"g": 7}}, group="s")
    done.result(timeout=10)
    q.pause()
    waiting = q.submit("waits", priority="high")
    df = q.to_dataframe()
    assert list(df["id"]) == [done.id, waiting.id]
    first = df.iloc[0]
    assert (first["status"], first["prompt"], first["seed"], first["group"]) == ("complete", "a fox", 3, "s")
    assert (first["steps"], first["guidance_scale"], first["metadata.sweep.g"]) == (2, 7.5, 7)
    assert first["finished_at"].tzinfo is not None
    assert abs((first["finished_at"] - done.finished_at).total_seconds()) < 1e-3
    assert first["run_s"] == pytest.approx((done.finished_at - done.started_at).total_seconds(), abs=1e-3)
    assert first["waited_s"] >= 0 and first["images"] == done.images and first["model"] is None
    second = df.iloc[1]
    assert second["priority"] == "high" and second["status"] == "queued" and pd.isna(second["started_at"])
    assert str(df["created_at"].dt.tz) == "UTC"
    assert list(q.to_dataframe(status="queued")["id"]) == [waiting.id]
    assert q.to_dataframe(group="nobody").empty and "prompt" in q.to_dataframe(group="nobody").columns


def test_to_dataframe_without_pandas_says_which_extra(
    make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db_path, start=False)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'imgnb\[pandas\]'"):
        q.to_dataframe()


# -- editing waiting jobs ------------------------------------------------------------------------------


def test_set_priority_and_moves_show_in_positions_here_and_elsewhere(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    watcher = make_queue(db_url, start=False)  # another process's view
    a, b, c, d = (q.submit(p) for p in "abcd")
    events: list[JobEvent] = []
    q.subscribe(events.append)
    d.set_priority("high")
    assert [d.position, a.position, c.position] == [1, 2, 4] and d.priority == "high"
    c.move_to_front()
    assert positions(q) == [d.id, c.id, a.id, b.id]
    a.move_to_back()
    b.move(before=c)
    assert positions(q) == [d.id, b.id, c.id, a.id]
    wait_until(lambda: positions(watcher) == positions(q))
    assert watcher.get(d.id).priority == "high"
    wait_until(lambda: any(e.kind is EventKind.POSITION and e.job_id == a.id and e.position == 4 for e in events))
    with pytest.raises(IllegalTransition, match="priority"):
        a.move(before=d)
    q.move(b.id, to="back")
    assert positions(q) == [d.id, c.id, a.id, b.id]
    for bad in ({"to": "top"}, {}, {"to": "front", "before": a}):
        with pytest.raises(InvalidJob):
            q.move(b.id, **bad)
    with pytest.raises(InvalidJob):
        b.set_priority("urgent")


def test_running_finished_and_gone_jobs_are_refused(make_queue: MakeQueue, db_path: str) -> None:
    gen = FakeGenerator(steps=200, step_time=0.01)
    q = make_queue(db_path, generator=gen)
    running = q.submit("runs")
    wait_until(lambda: running.status is JobStatus.PROCESSING)
    waiting = [q.submit(f"w{i}") for i in range(3)]
    before = positions(q)
    for act in (running.move_to_front, lambda: running.set_priority("low"), lambda: waiting[0].move(before=running)):
        with pytest.raises(IllegalTransition, match="processing"):
            act()
    q.pause()  # the waiting jobs stay where they are
    running.cancel()
    wait_until(lambda: running.status is JobStatus.CANCELLED)
    with pytest.raises(IllegalTransition, match="cancelled"):
        running.move_to_back()
    q.prune()
    with pytest.raises(JobNotFound):
        running.move_to_back()
    assert positions(q) == before


def test_cancel_all_and_retry_failed(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator())
    failed = [q.submit(f"fail {i}", max_retries=0, group="g") for i in range(3)]
    wait_until(lambda: all(j.status is JobStatus.ERROR for j in failed))
    q.pause()
    watcher = make_queue(db_url, start=False)
    waiting = q.submit_batch([{"prompt": f"w{i}"} for i in range(4)], group="g")
    other = q.submit("not in g")
    with pytest.raises(InvalidJob):
        q.cancel_all(status="complete")
    assert q.cancel_all(group="g") == 4
    assert all(j.status is JobStatus.CANCELLED for j in waiting) and positions(q) == [other.id]
    again = q.retry_failed(group="g")
    assert [j.id for j in again] == [j.id for j in failed] and again[0] is failed[0]
    assert all(j.status is JobStatus.QUEUED and j.attempts == 0 and j.error is None for j in failed)
    assert positions(q) == [other.id] + [j.id for j in failed]
    wait_until(lambda: positions(watcher) == positions(q))
    assert q.retry_failed() == [] and q.cancel_all(status="pending") == 0
    assert q.counts()["queued"] == 4 and q.counts()["cancelled"] == 4 and q.counts()["error"] == 0


def test_retry_failed_handles_read_their_record_when_asked(make_queue: MakeQueue, db_url: str) -> None:
    """Handles of jobs that had none alive: made from the bulk change, each reads its record on
    first use, the newest one (here a cancel by another process), and waits as any handle."""
    q = make_queue(db_url, generator=FakeGenerator())
    ids = [j.id for j in q.submit_batch([{"prompt": f"fail {i}"} for i in range(3)], max_retries=0, metadata={"k": 1})]
    wait_until(lambda: q.counts()["error"] == 3)
    q.pause()
    other = make_queue(db_url, start=False)
    events: list[JobEvent] = []
    q.subscribe(events.append)
    again = q.retry_failed()
    assert [j.id for j in again] == ids and [j.position for j in again] == [1, 2, 3]
    assert all(j.status is JobStatus.QUEUED and not j.done() for j in again)
    wait_until(lambda: positions(other) == ids)
    other.cancel(ids[1])
    assert again[1].prompt == "fail 1" and again[1].status is JobStatus.CANCELLED  # read: the newest
    assert (again[0].prompt, again[0].attempts, again[0].error, again[0].metadata) == ("fail 0", 0, None, {"k": 1})
    assert q.get(ids[2]) is again[2] and again[2].record == q.store.get(ids[2])
    q.resume()
    with pytest.raises(JobFailed):
        again[0].result(timeout=30)
    with pytest.raises(JobCancelled):
        again[1].result(timeout=30)
    wait_until(
        lambda: {(e.job_id, e.status) for e in events} >= {(ids[0], JobStatus.QUEUED), (ids[1], JobStatus.CANCELLED)}
    )


def test_a_bulk_edit_is_one_batch_of_events_made_when_read(make_queue: MakeQueue, db_url: str) -> None:
    """A subscriber of batches gets a bulk edit's status events as one ``BulkEvents``; one that takes
    events one by one gets every one of them, the same, positions and errors included."""
    q = make_queue(db_url, generator=FakeGenerator())
    failed = [j.id for j in q.submit_batch([{"prompt": f"fail {i}"} for i in range(5)], max_retries=0)]
    wait_until(lambda: q.counts()["error"] == 5)
    q.pause()
    first = q.submit("queued first", priority="high")
    singles: list[JobEvent] = []
    batches: list[Sequence[JobEvent]] = []
    q.subscribe(singles.append)
    q.subscribe(batches.append, batches=True)
    again = q.retry_failed()
    wait_until(lambda: len(singles) >= 5)
    bulk = batches[0]
    assert isinstance(bulk, BulkEvents) and list(bulk.job_ids) == failed and bulk.status is S.QUEUED
    assert bulk.has(failed[0]) and not bulk.has(first.id) and len(bulk) == 5
    expected = [(EventKind.STATUS, i, S.QUEUED, n + 2, None) for n, i in enumerate(failed)]
    seen = [(e.kind, e.job_id, e.status, e.position, e.error) for e in singles[:5]]
    assert seen == expected == [(e.kind, e.job_id, e.status, e.position, e.error) for e in bulk]
    assert [j.position for j in again] == [2, 3, 4, 5, 6] and bulk[1:3] == singles[1:3]
    del singles[:], batches[:]
    assert q.cancel_all() == 6
    wait_until(lambda: len(singles) >= 6)
    assert [(e.job_id, e.status, e.position) for e in singles] == [(i, S.CANCELLED, None) for i in [*failed, first.id]]
    assert [type(b) for b in batches] == [BulkEvents] and list(batches[0]) == singles


@settings(deadline=None)
@given(
    keys=st.dictionaries(st.integers(0, 400), st.tuples(st.integers(-2, 0), st.integers(-50, 50)), max_size=400),
    asked=st.lists(st.integers(0, 450), max_size=400),
)
def test_order_index_positions_match_one_by_one(keys: dict[int, tuple[int, int]], asked: list[int]) -> None:
    index = OrderIndex(keys.items())
    expected = {i: p for i in asked if (p := index.position(i)) is not None}
    assert index.positions(asked) == expected


def test_order_index_positions_later_are_those_of_when_they_were_asked_for() -> None:
    index = OrderIndex({1: (-1, 10), 2: (-1, 11), 3: (-1, 12)}.items())
    later = index.positions_later([3, 2, 9])
    index.update([(1, None)])
    assert later() == {2: 2, 3: 3} and index.positions([3, 2]) == {2: 1, 3: 2}
