"""History benchmark: a queue that lives for months, in one SQLite file.

Three parts, each printing its numbers:

1. Retention: submit and run a million no-op jobs in rounds, pruning to the last 10,000 after each
   round, and print the file's size after each round: it levels off. The jobs are driven through
   the ``Store`` directly (add, claim in batches of 500, finish each one, prune), the same
   transactions a worker makes without the generator and the event loop, so that a million runs
   take minutes and not hours.
2. The board at a million jobs: how long ``QueueBoard(queue)`` takes to open, and the reads it
   makes (the counts, the running jobs, a page of recent ones) against what reading every job cost.
   The file is filled with ``Store.add`` and ``Store.cancel_all`` in chunks; the last jobs are run.
3. Bulk edits at 100,000 jobs, through ``ImageQueue`` with a board open (its mirror, events and
   handles included): ``prune``, moves and a priority change; ``cancel_all`` and ``retry_failed``
   without a board and with one, side by side (the target: under a second each).
   The failed jobs for ``retry_failed`` are made by one SQL ``UPDATE`` (the counts' triggers keep
   the counts right), as running 100,000 failing jobs would only time the runs.
4. What the counters' triggers and the new indexes cost a submit.
5. PostgreSQL (a throwaway server, as the tests start one): counts, pages and bulk edits through
   the Store, and what the counters' statement triggers cost a worker's claim and finish.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_history.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from imgnb import ImageQueue, JobStatus
from imgnb.core.records import JobSpec
from imgnb.store import SQLStore
from imgnb.widgets import QueueBoard

SPEC = JobSpec(
    prompt="a lighthouse at dusk, oil on canvas",
    params={"steps": 20, "guidance_scale": 7.0},
    seed=1,
    priority=1,
    group=None,
    timeout=300.0,
    max_retries=0,
    metadata={"sweep": "s1"},
)


def mib(path: Path) -> float:
    return os.path.getsize(path) / 2**20 if path.exists() else 0.0


def ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def add(store: SQLStore, n: int, *, key: str | None = None, chunk: int = 10_000) -> None:
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        store.add([SPEC] * k, batch_keys=[key] * k, now=time.time())


def run_queued(store: SQLStore, image: str, *, status: JobStatus = JobStatus.COMPLETE, limit: int | None = None) -> int:
    """Claim queued jobs 500 at a time and finish each one, as a worker does; returns how many."""
    done = 0
    while limit is None or done < limit:
        claimed = store.claim(owner="bench", device="cpu", now=time.time(), lease=600, batch_size=500)
        if not claimed:
            break
        for record in claimed[: None if limit is None else limit - done]:
            store.finish(record.id, owner="bench", status=status, now=time.time(), images=[image])
            done += 1
        store.abandon(owner="bench", now=time.time())  # hands back any claimed beyond the limit
    return done


def retention(tmp: Path, image: str, *, total: int, rounds: int, keep: int) -> None:
    db = tmp / "retention.db"
    store = SQLStore(db)
    per_round = total // rounds
    print(f"1. Retention: {total:,} no-op jobs in {rounds} rounds of {per_round:,}, pruned to the last {keep:,}")
    print(f"{'round':>5} {'jobs run':>10} {'in file':>9} {'file MiB':>9} {'WAL MiB':>8} {'round s':>8} {'prune ms':>9}")
    sizes = []
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        add(store, per_round, key="k")
        run_queued(store, image)
        prune_ms, _ = ms(
            lambda: store.prune(statuses={JobStatus.COMPLETE}, group=None, finished_before=None, keep_last=keep)
        )
        in_file = sum(store.counts().values())
        sizes.append(mib(db))
        wal = mib(Path(f"{db}-wal"))
        took = time.perf_counter() - t
        print(f"{r:>5} {r * per_round:>10,} {in_file:>9,} {sizes[-1]:>9.1f} {wal:>8.1f} {took:>8.1f} {prune_ms:>9.0f}")
    elapsed = time.perf_counter() - start
    half = sizes[len(sizes) // 2 :]
    print(
        f"   file size over the second half of the rounds: {min(half):.1f} to {max(half):.1f} MiB "
        f"(last/middle {sizes[-1] / sizes[len(sizes) // 2]:.2f}); {total / elapsed:,.0f} jobs/s in all\n"
    )
    store.close()


def board_at(tmp: Path, image: str, *, total: int) -> None:
    db = tmp / "million.db"
    store = SQLStore(db)
    queued, ran, failed = 10_000, 200, 50
    t = time.perf_counter()
    chunk = 50_000
    history = total - queued - ran - failed
    for start in range(0, history, chunk):
        add(store, min(chunk, history - start))
        store.cancel_all(statuses={JobStatus.QUEUED}, group=None, now=time.time())
    add(store, ran + failed + queued)
    run_queued(store, image, limit=ran)
    run_queued(store, image, status=JobStatus.ERROR, limit=failed)
    build_s = time.perf_counter() - t
    counts = store.counts()
    store.close()
    print(f"2. The board with {sum(counts.values()):,} jobs in the file ({mib(db):.0f} MiB, built in {build_s:.0f} s)")

    with sqlite3.connect(db) as conn:
        group_by = [ms(lambda: conn.execute("SELECT status, count(*) FROM imgnb_job GROUP BY status").fetchall())[0]]
        group_by += [ms(lambda: conn.execute("SELECT status, count(*) FROM imgnb_job GROUP BY status").fetchall())[0]]
    open_ms, q = ms(lambda: ImageQueue(db, start=False))
    counter = [ms(q.counts)[0] for _ in range(20)]
    page = [ms(lambda: q.jobs("cancelled", limit=50, newest_first=True))[0] for _ in range(20)]
    recent = [ms(lambda: q.recent(8))[0] for _ in range(20)]
    opens = []
    for _ in range(7):
        took, board = ms(lambda: QueueBoard(q))
        assert f"<b>{counts[JobStatus.CANCELLED]:,}</b> cancelled" in board.header_html.value
        assert len(board.recent_box.children) == 8 and len(board.queued_box.children) == 5
        opens.append(took)
        board.close()
    q.close()
    print(f"   {'ImageQueue(db) open, 10,000 queued (ms)':46} {open_ms:9.1f}")
    print(f"   {'counts: GROUP BY status over every row (ms)':46} {min(group_by):9.1f}")
    print(f"   {'counts: the counters table, q.counts() (ms)':46} {statistics.median(counter):9.2f}")
    print(f"   {'a page: q.jobs(limit=50, newest_first) (ms)':46} {statistics.median(page):9.2f}")
    print(f"   {'the last 8 finished: q.recent(8) (ms)':46} {statistics.median(recent):9.2f}")
    print(f"   {'QueueBoard(q) open, median of 7 (ms)':46} {statistics.median(opens):9.1f}   (max {max(opens):.1f})\n")


def bulk(tmp: Path, *, n: int) -> None:
    db = tmp / "bulk.db"
    q = ImageQueue(db, start=False)
    board = QueueBoard(q)  # as in a notebook: events flow to a live board
    t = time.perf_counter()
    for start in range(0, n, 20_000):
        q.submit_batch([{"prompt": f"job {start + i}", "seed": start + i} for i in range(min(20_000, n - start))])
    submit_s = time.perf_counter() - t
    read_all_ms, everything = ms(q.jobs)  # what the board used to read when it opened
    assert len(everything) == n
    del everything
    rows: list[tuple[str, float]] = [("q.jobs(): every job, as the board read them (ms)", read_all_ms)]

    jobs = q.jobs("queued", limit=1, newest_first=True) + q.jobs("queued", limit=1, offset=n // 2)
    last, middle = jobs
    rows.append(("last job: move_to_front() (ms)", ms(last.move_to_front)[0]))
    rows.append(("middle job: move_to_back() (ms)", ms(middle.move_to_back)[0]))
    head = q.head(1)[0]
    mid = q.jobs("queued", limit=1, offset=n // 2)[0]
    rows.append((f"move(before=) at the middle: {n // 2:,} renumbered (ms)", ms(lambda: q.move(head, before=mid))[0]))
    rows.append(("set_priority('high') (ms)", ms(lambda: mid.set_priority("high"))[0]))
    assert q.position(mid.id) == 1

    board.close()
    q.close()
    retried = bulk_edits(tmp, n=n)
    q = ImageQueue(db, start=False)
    q.cancel_all()
    board = QueueBoard(q)
    took, pruned = ms(q.prune)
    assert pruned == n
    rows.append((f"prune(): {n:,} jobs, pages given back (ms)", took))
    board.close()
    q.close()

    store = SQLStore(tmp / "bulk-store.db")  # the transactions alone, without the queue's bookkeeping
    add(store, n)
    took, change = ms(lambda: store.cancel_all(statuses={JobStatus.QUEUED}, group=None, now=time.time()))
    assert len(change.ids) == n
    rows.append(("  Store.cancel_all(): the transaction alone (ms)", took))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE imgnb_job SET status = 'error' WHERE status = 'cancelled'")
    took, requeued = ms(lambda: store.requeue_failed(group=None, now=time.time()))
    assert len(requeued.ids) == n
    rows.append(("  Store.requeue_failed(): the transaction alone (ms)", took))
    store.close()
    print(
        f"3. Bulk edits at {n:,} jobs (submitted at {n / submit_s:,.0f} jobs/s), through ImageQueue with a board open"
    )
    for name, value in rows:
        print(f"   {name:60} {value:9.1f}")
    print(f"   {'':60} {'no board':>9} {'a board':>9}   (ms, taking turns, best of 2)")
    for name, (bare, shown) in retried.items():
        print(f"   {name:60} {bare:9.1f} {shown:9.1f}")
    print()


def bulk_edits(tmp: Path, *, n: int, repeat: int = 2) -> dict[str, tuple[float, float]]:
    """``cancel_all()`` and ``retry_failed()`` of ``n`` jobs through ``ImageQueue``, without a board
    and with one open, taking turns: name -> (best ms without, best ms with). The failed jobs are
    made by one SQL ``UPDATE`` (see the docstring)."""
    cancel, retry = f"cancel_all(): {n:,} jobs", f"retry_failed(): {n:,} jobs, their handles returned"
    best: dict[tuple[str, bool], float] = {}

    def keep(name: str, shown: bool, took: float) -> None:
        best[name, shown] = min(best.get((name, shown), took), took)

    for attempt in range(repeat):
        for shown in (False, True):
            db = tmp / f"bulk-{attempt}-{int(shown)}.db"
            store = SQLStore(db)
            add(store, n)
            store.close()
            q = ImageQueue(db, start=False)
            board = QueueBoard(q) if shown else None
            took, cancelled = ms(q.cancel_all)
            assert cancelled == n and q.queued_count() == 0
            keep(cancel, shown, took)
            if board is not None:
                board.close()
            q.close()
            with sqlite3.connect(db) as conn:
                conn.execute(
                    "UPDATE imgnb_job SET status = 'error', error = 'out of memory' WHERE status = 'cancelled'"
                )
            q = ImageQueue(db, start=False)
            board = QueueBoard(q) if shown else None
            took, again = ms(q.retry_failed)
            assert len(again) == n and q.queued_count() == n and again[-1].position == n
            keep(retry, shown, took)
            del again
            if board is not None:
                board.close()
            q.close()
    return {name: (best[name, False], best[name, True]) for name in (cancel, retry)}


def submit_cost(tmp: Path, *, n: int, repeat: int = 3) -> None:
    """What the counters and the history indexes cost a submit: the same adds into a file without
    the indexes and triggers (as schema 2 had it; the count ``add`` keeps itself stays) and with
    them, taking turns, best of ``repeat``."""
    rates: dict[str, list[float]] = {"schema 2": [], "schema 3": []}
    for attempt in range(repeat):
        for kind in rates:
            db = tmp / f"submit-{kind[-1]}-{attempt}.db"
            store = SQLStore(db)
            if kind == "schema 2":
                with store.engine.begin() as conn:
                    for trigger in ("update", "delete"):  # inserts are counted by add itself
                        conn.exec_driver_sql(f"DROP TRIGGER imgnb_count_{trigger}")
                    for index in ("imgnb_job_status_id", "imgnb_job_finished"):
                        conn.exec_driver_sql(f"DROP INDEX {index}")
            took, _ = ms(lambda: add(store, n))  # noqa: B023
            rates[kind].append(n / took * 1000)
            store.close()
    before, after = max(rates["schema 2"]), max(rates["schema 3"])
    print(
        f"4. Submit cost (Store.add, best of {repeat}): {before:,.0f} jobs/s without the counters and indexes, "
        f"{after:,.0f} with them ({after / before:.2f}x)\n"
    )


def postgres(tmp: Path, image: str, *, n: int) -> None:
    """The store's side on PostgreSQL (a throwaway server from tests/fixtures/postgres.py): counts,
    pages and bulk edits at ``n`` jobs, and what the counters' statement triggers cost a worker's
    claim and finish (with and without them, taking turns)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pytest

    from tests.fixtures.postgres import find_pg_bindir, running_server

    if find_pg_bindir() is None:
        print("5. PostgreSQL: skipped, no server binaries (initdb, pg_ctl, postgres)\n")
        return
    try:
        with running_server() as server:
            server.admin_execute('CREATE DATABASE "bench"', 'CREATE DATABASE "bare"')
            store = SQLStore(server.url("bench"))
            add(store, n)
            run_queued(store, image, limit=100)
            with store.engine.connect() as conn:
                group_by = min(
                    ms(lambda: conn.exec_driver_sql("SELECT status, count(*) FROM imgnb_job GROUP BY status").all())[0]
                    for _ in range(3)
                )
            counter = min(ms(store.counts)[0] for _ in range(10))
            recent = min(ms(lambda: store.recently_finished(limit=8))[0] for _ in range(10))
            page = min(
                ms(lambda: store.list_jobs(status=JobStatus.QUEUED, limit=50, offset=n // 2))[0] for _ in range(5)
            )
            cancel, change = ms(lambda: store.cancel_all(statuses={JobStatus.QUEUED}, group=None, now=time.time()))
            with store.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE imgnb_job SET status = 'error' WHERE status = 'cancelled'")
            retry, _ = ms(lambda: store.requeue_failed(group=None, now=time.time()))
            store.cancel_all(statuses={JobStatus.QUEUED}, group=None, now=time.time())
            prune, removed = ms(
                lambda: store.prune(statuses={JobStatus.CANCELLED}, group=None, finished_before=None, keep_last=None)
            )
            assert len(change.ids) == n - 100 and len(removed) == n - 100
            store.close()
            rates: dict[str, list[float]] = {"with": [], "without": []}
            for attempt in range(3):
                for kind, name in (("with", "bench"), ("without", "bare")):
                    s = SQLStore(server.url(name))
                    if kind == "without" and attempt == 0:
                        with s.engine.begin() as conn:
                            conn.exec_driver_sql("DROP FUNCTION imgnb_count_rows() CASCADE")
                    add(s, 1000, key="k")
                    took, done = ms(lambda: run_queued(s, image))  # noqa: B023
                    rates[kind].append(done / took * 1000)
                    s.close()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"5. PostgreSQL: skipped, the server did not start: {exc}\n")
        return
    print(f"5. PostgreSQL, {n:,} jobs (the Store alone)")
    print(f"   {'counts: GROUP BY status over every row (ms)':52} {group_by:9.2f}")
    print(f"   {'counts: the counters table (ms)':52} {counter:9.2f}")
    print(f"   {'the last 8 finished (ms)':52} {recent:9.2f}")
    print(f"   {'a page of 50 at the middle of the queue (ms)':52} {page:9.2f}")
    print(f"   {f'cancel_all(): {n - 100:,} jobs (ms)':52} {cancel:9.1f}")
    print(f"   {f'requeue_failed(): {n - 100:,} jobs and their records (ms)':52} {retry:9.1f}")
    print(f"   {f'prune(): {n - 100:,} jobs (ms)':52} {prune:9.1f}")
    best_with, best_without = max(rates["with"]), max(rates["without"])
    print(
        f"   claim and finish, jobs/s (best of 3): {best_without:,.0f} without the counters' triggers, "
        f"{best_with:,.0f} with them ({best_with / best_without:.2f}x)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the size: a minute or two")
    parser.add_argument("--parts", default="12345", help="which parts to run, e.g. 23 (5: PostgreSQL)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    tmp = Path(tempfile.mkdtemp(prefix="imgnb-history-"))
    image = str(tmp / "result.png")
    Image.new("RGB", (64, 64), (200, 120, 40)).save(image)
    print(f"imgnb history benchmark, SQLite {sqlite3.sqlite_version}{' (--quick)' if args.quick else ''}\n")
    if "1" in args.parts:
        retention(tmp, image, total=1_000_000 // scale, rounds=20 if not args.quick else 10, keep=10_000)
    if "2" in args.parts:
        board_at(tmp, image, total=1_000_000 // scale)
    if "3" in args.parts:
        bulk(tmp, n=100_000 // scale)
    if "4" in args.parts:
        submit_cost(tmp, n=100_000 // scale)
    if "5" in args.parts:
        postgres(tmp, image, n=100_000 // scale)


if __name__ == "__main__":
    main()
