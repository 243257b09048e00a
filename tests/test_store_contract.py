"""The Store contract, run against every implementation by the ``store`` fixture: the in-memory
``MemoryStore`` and ``SQLStore`` on SQLite and PostgreSQL.

Any new Store must pass this file unchanged, and the tests use nothing but the ``Store`` interface:
that is how the PostgreSQL store is known to behave exactly like the SQLite one.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from imgnb import IllegalTransition, JobNotFound, JobStatus
from imgnb.core.affinity import Waiting, pick
from imgnb.core.editing import Place
from imgnb.core.records import Claim, Finish, JobRecord, JobSpec
from imgnb.store import Store

S = JobStatus
NOW = 1_800_000_000.0


def spec(prompt: str = "p", *, priority: int = 1, max_retries: int = 3, metadata: dict | None = None) -> JobSpec:
    return JobSpec(
        prompt=prompt,
        params={"steps": 2},
        seed=5,
        priority=priority,
        group=None,
        timeout=300.0,
        max_retries=max_retries,
        metadata=metadata or {},
    )


def test_add_is_ordered_and_round_trips(store: Store) -> None:
    added = store.add([spec("a"), spec("b", priority=2), spec("c")], batch_keys=[None, "k", None], now=NOW)
    assert [r.prompt for r in added] == ["a", "b", "c"]
    assert [r.seq for r in added] == [added[0].seq, added[0].seq + 1, added[0].seq + 2]
    assert store.get(added[1].id) == added[1]
    assert added[0].params == {"steps": 2} and added[0].status is S.QUEUED and added[0].created_at == NOW
    revision, keys = store.queued_snapshot()
    assert [job_id for job_id, _ in sorted(keys, key=lambda k: k[1])] == [added[1].id, added[0].id, added[2].id]
    assert store.changes_since(revision) == (revision, [])  # the snapshot is current
    assert [r.prompt for r in store.list_jobs(status=S.QUEUED)] == ["b", "a", "c"]
    with pytest.raises(JobNotFound):
        store.get(9999)


def test_changes_since_returns_only_newer_rows(store: Store) -> None:
    first = store.add([spec("a"), spec("b")], batch_keys=[None, None], now=NOW)
    rev, _ = store.queued_snapshot()
    store.cancel(first[1].id, now=NOW)
    current, changed = store.changes_since(rev)
    assert current > rev and [r.id for r in changed] == [first[1].id] and changed[0].status is S.CANCELLED
    assert store.changes_since(current) == (current, [])


def test_changes_since_leaves_out_the_revisions_the_caller_applied(store: Store) -> None:
    """A queue passes its own writes after a gap: only the other writes are read."""
    jobs = store.add([spec(str(i)) for i in range(4)], batch_keys=[None] * 4, now=NOW)
    rev, _ = store.queued_snapshot()
    own = [store.cancel(job.id, now=NOW).revision for job in jobs]  # four writes, in order
    others = [own[1], own[3]]
    current, changed = store.changes_since(rev, applied=[(own[0], own[0]), (own[2], own[2])])
    assert current == own[3] and [(r.id, r.revision) for r in changed] == [
        (jobs[1].id, others[0]),
        (jobs[3].id, others[1]),
    ]
    assert store.changes_since(rev, applied=[(own[0], own[3])]) == (current, [])
    assert [r.id for r in store.changes_since(rev, applied=[(current + 1, current + 5)])[1]] == [j.id for j in jobs]


def test_claim_takes_the_head_and_the_device_lock(store: Store) -> None:
    low, high = store.add([spec("low", priority=0), spec("high", priority=2)], batch_keys=[None, None], now=NOW)
    claimed = store.claim(owner="w1", device="h/gpu0", now=NOW, lease=10)
    assert [r.id for r in claimed] == [high.id]
    assert (claimed[0].status, claimed[0].attempts, claimed[0].owner) == (S.PROCESSING, 1, "w1")
    assert store.claim(owner="w2", device="h/gpu0", now=NOW + 1, lease=10) == []  # locked by w1
    assert [r.id for r in store.claim(owner="w2", device="h/gpu1", now=NOW + 1, lease=10)] == [low.id]
    assert store.claim(owner="w1", device="h/gpu0", now=NOW + 1, lease=10) == []  # nothing left
    assert store.claim(owner="w3", device="h/gpu0", now=NOW + 11, lease=10) == []  # lease over, nothing queued


def test_claim_batches_jobs_with_the_same_key(store: Store) -> None:
    jobs = store.add([spec("a"), spec("b"), spec("c"), spec("d")], batch_keys=["k", "x", "k", "k"], now=NOW)
    claimed = store.claim(owner="w", device="d", now=NOW, lease=10, batch_size=2)
    assert [r.id for r in claimed] == [jobs[0].id, jobs[2].id]
    assert claimed[0].batch == claimed[1].batch and claimed[0].batch is not None


def test_finish_is_guarded_by_owner(store: Store) -> None:
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    store.claim(owner="w1", device="d", now=NOW, lease=10)
    assert store.finish(job.id, owner="intruder", status=S.COMPLETE, now=NOW) is None
    done = store.finish(job.id, owner="w1", status=S.COMPLETE, now=NOW + 2, images=["a.png"])
    assert done is not None and (done.status, done.images, done.finished_at, done.progress) == (
        S.COMPLETE,
        ("a.png",),
        NOW + 2,
        1.0,
    )
    with pytest.raises(IllegalTransition):
        store.finish(job.id, owner="w1", status=S.PROCESSING, now=NOW)


def test_finish_and_claim_stores_the_finishes_then_claims(store: Store) -> None:
    """What a worker's next claim does with the jobs it wrote meanwhile: each finish as ``finish``
    would, then the claim, each its own revision in that order. With nothing to claim the
    finishes are stored all the same, and the claim changes nothing."""
    first, second, third = store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW)
    store.claim(owner="w", device="d0", now=NOW, lease=10)
    store.claim(owner="w", device="d1", now=NOW, lease=10)
    finished, claimed = store.finish_and_claim(
        [Finish(first.id, "w", S.COMPLETE, NOW + 1, images=["a.png"]), Finish(second.id, "intruder", S.COMPLETE, NOW)],
        Claim(owner="w", device="d0", now=NOW + 1, lease=10),
    )
    done = finished[0]
    assert done is not None and (done.status, done.images, done.finished_at) == (S.COMPLETE, ("a.png",), NOW + 1)
    assert finished[1] is None  # not the intruder's to finish
    assert [(r.id, r.status, r.owner) for r in claimed] == [(third.id, S.PROCESSING, "w")]
    assert done.revision < claimed[0].revision and store.get(first.id) == done
    finished, claimed = store.finish_and_claim(
        [Finish(second.id, "w", S.ERROR, NOW + 2, error="boom")], Claim(owner="w", device="d1", now=NOW + 2, lease=10)
    )
    failed = finished[0]
    assert claimed == [] and failed is not None and (failed.status, failed.error) == (S.ERROR, "boom")
    assert store.changes_since(failed.revision)[1] == []  # the claim that found nothing left nothing
    with pytest.raises(IllegalTransition):
        store.finish_and_claim(
            [Finish(third.id, "w", S.PROCESSING, NOW)], Claim(owner="w", device="d0", now=NOW, lease=10)
        )
    assert store.get(third.id).status is S.PROCESSING  # refused whole


def test_retry_goes_pending_then_promoted(store: Store) -> None:
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    store.claim(owner="w", device="d", now=NOW, lease=10)
    pending = store.finish(job.id, owner="w", status=S.PENDING, now=NOW, run_at=NOW + 4, error="boom")
    assert pending is not None and (pending.status, pending.run_at, pending.error) == (S.PENDING, NOW + 4, "boom")
    assert store.promote_due(now=NOW + 3) == []
    assert [r.status for r in store.promote_due(now=NOW + 4)] == [S.QUEUED]


def test_cancel_and_requeue(store: Store) -> None:
    a, b = store.add([spec("a"), spec("b")], batch_keys=[None, None], now=NOW)
    assert store.cancel(a.id, now=NOW).status is S.CANCELLED
    with pytest.raises(IllegalTransition):
        store.cancel(a.id, now=NOW)
    store.claim(owner="w", device="d", now=NOW, lease=10)
    asked = store.cancel(b.id, now=NOW)
    assert asked.status is S.PROCESSING and asked.cancel_requested
    assert store.renew(owner="w", device="d", job_ids=[b.id], now=NOW, lease=10) == {b.id}
    again = store.requeue(a.id, now=NOW)
    assert (again.status, again.attempts) == (S.QUEUED, 0) and again.seq > b.seq


def test_recover_stalled_requeues_then_gives_up(store: Store) -> None:
    (job,) = store.add([spec(max_retries=1)], batch_keys=[None], now=NOW)
    store.claim(owner="dead", device="d", now=NOW, lease=5)
    assert store.recover_stalled(now=NOW + 4) == []
    (back,) = store.recover_stalled(now=NOW + 6)
    assert (back.status, back.attempts, back.seq) == (S.QUEUED, 1, job.seq)
    assert [r.id for r in store.claim(owner="alive", device="d", now=NOW + 6, lease=5)] == [job.id]
    (lost,) = store.recover_stalled(now=NOW + 20)
    assert lost.status is S.ERROR and "no retries left" in (lost.error or "")


def test_abandon_hands_back_without_counting(store: Store) -> None:
    (_job,) = store.add([spec()], batch_keys=[None], now=NOW)
    store.claim(owner="w", device="d", now=NOW, lease=10)
    (back,) = store.abandon(owner="w", now=NOW)
    assert (back.status, back.attempts) == (S.QUEUED, 0)
    assert store.claim(owner="other", device="d", now=NOW, lease=10)  # the lock was freed too


def test_metadata_deep_merge_is_atomic(store: Store) -> None:
    (job,) = store.add([spec(metadata={"a": {"x": 1}, "drop": 1})], batch_keys=[None], now=NOW)
    merged = store.update_metadata(job.id, {"a": {"y": {"z": 2}}, "drop": None, "new": [1]})
    assert merged.metadata == {"a": {"x": 1, "y": {"z": 2}}, "new": [1]}  # RFC 7396: null deletes

    def patch(worker: int) -> None:
        for i in range(25):
            store.update_metadata(job.id, {"w": {f"{worker}-{i}": i}})

    threads = [threading.Thread(target=patch, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get(job.id).metadata["w"]) == 100
    with pytest.raises(JobNotFound):
        store.update_metadata(4242, {"a": 1})


def test_progress_is_visible_to_others(store: Store) -> None:
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    store.claim(owner="w", device="d", now=NOW, lease=10)
    store.set_progress(job.id, owner="w", progress=0.5, now=time.time())
    assert store.get(job.id).progress == 0.5


def test_an_empty_claim_leaves_the_device_usable(store: Store) -> None:
    assert store.claim(owner="w", device="fresh", now=NOW, lease=10) == []  # rolled back: nothing queued
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    assert [r.id for r in store.claim(owner="w", device="fresh", now=NOW, lease=10)] == [job.id]


def test_counts_cover_every_status(store: Store) -> None:
    a, _ = store.add([spec("a"), spec("b")], batch_keys=[None, None], now=NOW)
    store.cancel(a.id, now=NOW)
    counts = store.counts()
    assert counts[S.QUEUED] == 1 and counts[S.CANCELLED] == 1 and counts[S.COMPLETE] == 0 and len(counts) == 6


# -- history: pages, cheap counts, pruning, editing waiting jobs --------------------------------


def grouped(prompt: str, group: str | None, *, priority: int = 1) -> JobSpec:
    return JobSpec(
        prompt=prompt,
        params={},
        seed=1,
        priority=priority,
        group=group,
        timeout=None,
        max_retries=0,
        metadata={},
    )


def finish_all(store: Store, ids: list[int], *, status: S = S.COMPLETE, at: float = NOW) -> None:
    """Run ``ids`` (queued, in run order) to ``status``, one second apart from ``at``."""
    for k, job_id in enumerate(ids):
        (claimed,) = store.claim(owner="w", device="d", now=at + k, lease=10)
        assert claimed.id == job_id
        store.finish(job_id, owner="w", status=status, now=at + k, images=[f"/img/{job_id}.png"])


def test_list_jobs_pages_in_order_both_ways(store: Store) -> None:
    jobs = store.add(
        [spec(f"j{i}", priority=2 if i % 3 == 0 else 1) for i in range(10)], batch_keys=[None] * 10, now=NOW
    )
    ids = [r.id for r in jobs]
    run_order = [r.id for r in store.list_jobs(status=S.QUEUED)]
    assert run_order == ids[0:10:3] + [i for k, i in enumerate(ids) if k % 3]
    assert [r.id for r in store.list_jobs(status=S.QUEUED, limit=3, offset=2)] == run_order[2:5]
    assert [r.id for r in store.list_jobs(status=S.QUEUED, newest_first=True, limit=2)] == run_order[::-1][:2]
    assert [r.id for r in store.list_jobs(limit=4)] == ids[:4]  # all statuses: by id
    assert [r.id for r in store.list_jobs(newest_first=True, limit=3, offset=1)] == ids[::-1][1:4]
    assert store.list_jobs(limit=0) == [] and store.list_jobs(offset=10) == []


def test_counts_follow_every_change(store: Store) -> None:
    a, b, c = store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW)
    finish_all(store, [a.id])
    store.cancel(b.id, now=NOW)
    store.claim(owner="w", device="d", now=NOW, lease=10)
    assert {s: n for s, n in store.counts().items() if n} == {S.COMPLETE: 1, S.CANCELLED: 1, S.PROCESSING: 1}
    store.finish(c.id, owner="w", status=S.ERROR, now=NOW, error="x")
    store.requeue_failed(group=None, now=NOW)
    store.prune(statuses={S.COMPLETE}, group=None, finished_before=None, keep_last=None)
    assert {s: n for s, n in store.counts().items() if n} == {S.CANCELLED: 1, S.QUEUED: 1}


def test_recently_finished_is_newest_first_by_finish_time(store: Store) -> None:
    jobs = store.add([spec(f"j{i}") for i in range(4)], batch_keys=[None] * 4, now=NOW)
    first, second, third, fourth = (r.id for r in jobs)
    store.claim(owner="w", device="d", now=NOW, lease=10)  # the first runs ...
    store.cancel(third, now=NOW + 1)  # ... while the third is cancelled: it finishes first
    store.finish(first, owner="w", status=S.COMPLETE, now=NOW + 2)
    assert [r.id for r in store.recently_finished(limit=5)] == [first, third]
    assert [r.id for r in store.recently_finished(limit=1)] == [first]
    assert all(r.id not in (second, fourth) for r in store.recently_finished(limit=5))  # waiting: not finished


def test_prune_keeps_the_last_n_of_what_matches(store: Store) -> None:
    jobs = store.add([grouped(f"j{i}", "a" if i % 2 else "b") for i in range(8)], batch_keys=[None] * 8, now=NOW)
    ids = [r.id for r in jobs]
    finish_all(store, ids[:6])  # finished at NOW .. NOW + 5, in id order; two stay queued
    removed = store.prune(statuses={S.COMPLETE}, group="a", finished_before=None, keep_last=1)
    a_done = [i for k, i in enumerate(ids[:6]) if k % 2]
    assert sorted(r.id for r in removed) == a_done[:-1]  # group a's newest is kept
    assert removed[0].status is S.COMPLETE and removed[0].images == (f"/img/{removed[0].id}.png",)
    for gone in removed:
        with pytest.raises(JobNotFound):
            store.get(gone.id)
    assert store.prune(statuses={S.COMPLETE}, group="a", finished_before=None, keep_last=1) == []
    # by age: those finished before NOW + 2 (group b's first), and never a queued job
    old = store.prune(statuses={S.COMPLETE, S.ERROR, S.CANCELLED}, group=None, finished_before=NOW + 2, keep_last=None)
    assert [r.id for r in old] == [ids[0]]
    left = store.list_jobs()
    assert [r.id for r in left] == [ids[2], ids[4], ids[5], ids[6], ids[7]]
    assert store.counts()[S.COMPLETE] == 3 and store.counts()[S.QUEUED] == 2
    everything = store.prune(statuses={S.COMPLETE}, group=None, finished_before=None, keep_last=None)
    assert len(everything) == 3 and [r.status for r in store.list_jobs()] == [S.QUEUED, S.QUEUED]


def test_prune_with_age_and_keep_last_needs_both(store: Store) -> None:
    ids = [r.id for r in store.add([spec(f"j{i}") for i in range(5)], batch_keys=[None] * 5, now=NOW)]
    finish_all(store, ids)  # NOW .. NOW + 4
    # the last 2 are kept whatever their age; of the others, only those older than NOW + 1 go
    removed = store.prune(statuses={S.COMPLETE}, group=None, finished_before=NOW + 1, keep_last=2)
    assert [r.id for r in removed] == [ids[0]]
    removed = store.prune(statuses={S.COMPLETE}, group=None, finished_before=NOW + 100, keep_last=2)
    assert sorted(r.id for r in removed) == ids[1:3]
    assert store.prune(statuses={S.COMPLETE}, group=None, finished_before=None, keep_last=5) == []  # fewer than 5


def test_cancel_all_takes_only_waiting_jobs(store: Store) -> None:
    jobs = store.add([grouped(f"j{i}", "g" if i < 3 else None) for i in range(5)], batch_keys=[None] * 5, now=NOW)
    running = store.claim(owner="w", device="d", now=NOW, lease=10)[0]  # jobs[0]
    pending = store.claim(owner="w", device="e", now=NOW, lease=10)[0]  # jobs[1], then pending
    store.finish(pending.id, owner="w", status=S.PENDING, now=NOW, run_at=NOW + 60)
    change = store.cancel_all(statuses={S.QUEUED, S.PENDING}, group="g", now=NOW + 1)
    assert change.ids == (jobs[1].id, jobs[2].id) and change.status is S.CANCELLED
    assert change.applied_to(jobs[2]) == store.get(jobs[2].id)  # what the stored record now is
    assert (store.get(jobs[1].id).status, store.get(jobs[1].id).finished_at) == (S.CANCELLED, NOW + 1)
    assert store.get(running.id).status is S.PROCESSING and not store.get(running.id).cancel_requested
    counts = store.counts()  # each status the bulk change left or entered, counted
    assert (counts[S.QUEUED], counts[S.PENDING], counts[S.CANCELLED], counts[S.PROCESSING]) == (2, 0, 2, 1)
    rev, snapshot = store.queued_snapshot()
    assert {j for j, _ in snapshot} == {jobs[3].id, jobs[4].id}
    assert store.cancel_all(statuses={S.QUEUED}, group=None, now=NOW).ids == (jobs[3].id, jobs[4].id)
    assert store.cancel_all(statuses={S.QUEUED}, group=None, now=NOW).ids == ()
    assert [r.id for r in store.changes_since(rev)[1]] == [jobs[3].id, jobs[4].id]
    assert store.counts()[S.CANCELLED] == 4


def test_requeue_failed_goes_to_the_back_in_the_old_order(store: Store) -> None:
    jobs = store.add([grouped(f"j{i}", "g" if i != 1 else None) for i in range(4)], batch_keys=[None] * 4, now=NOW)
    ids = [r.id for r in jobs]
    finish_all(store, ids[:3], status=S.ERROR)
    (waiting,) = store.list_jobs(status=S.QUEUED)
    rev, _ = store.changes_since(0)
    again = store.requeue_failed(group="g", now=NOW + 9)
    assert again.ids == (ids[0], ids[2]) and again.status is S.QUEUED and again.revision > rev
    stored = {r.id: r for r in store.list_jobs(status=S.QUEUED)}
    assert list(stored) == [waiting.id, ids[0], ids[2]]
    # the change says what the records say: the values set, each job's new place, the revision
    assert again.keys == tuple(stored[i].order_key for i in again.ids) and again.keys[0] > waiting.order_key
    assert [again.applied_to(jobs[i]) for i in (0, 2)] == [stored[ids[0]], stored[ids[2]]]
    assert all((r.attempts, r.error, r.finished_at, r.images) == (0, None, None, ()) for r in stored.values())
    assert [r.id for r in store.changes_since(rev)[1]] == [ids[0], ids[2]]
    assert [r.id for r in store.list_jobs(status=S.ERROR)] == [ids[1]]  # another group
    assert store.requeue_failed(group="g", now=NOW).ids == ()


def test_requeue_failed_keeps_priorities_and_order_at_scale(store: Store) -> None:
    """Many jobs at several priorities: the change lists them in their old order (that of their
    new ``seq``), each with its place in the run order."""
    jobs = store.add([grouped(f"j{i}", None, priority=i % 3) for i in range(300)], batch_keys=[None] * 300, now=NOW)
    finish_all(store, [r.id for r in store.list_jobs(status=S.QUEUED)], status=S.ERROR)
    again = store.requeue_failed(group=None, now=NOW + 1)
    stored = store.list_jobs(status=S.QUEUED)
    assert tuple(sorted(again.ids, key=again.key_of.__getitem__)) == tuple(r.id for r in stored)
    assert again.key_of == {r.id: r.order_key for r in stored}
    assert again.ids == tuple(r.id for r in sorted(stored, key=lambda r: r.seq)) == tuple(r.id for r in jobs)


def run_all(store: Store, ids: list[int], *, failing: set[int], at: float) -> None:
    """Run ``ids`` (queued, in run order): those in ``failing`` end in error, the others complete."""
    for k, job_id in enumerate(ids):
        (claimed,) = store.claim(owner="w", device="d", now=at + k, lease=10)
        assert claimed.id == job_id
        status = S.ERROR if job_id in failing else S.COMPLETE
        store.finish(job_id, owner="w", status=status, now=at + k, images=[f"/img/{job_id}.png"])


@pytest.mark.parametrize("failed_every", [1, 7], ids=["close-together", "spread-out"])
def test_requeue_failed_numbers_stay_close_to_the_jobs(store: Store, failed_every: int) -> None:
    """Jobs that failed together or far apart: after the retry they run after every other job, in
    their old order, and retrying them again and again never spreads their numbers wider than
    twice their count (an SQL store moves close-together numbers as they are, renumbers others)."""
    ids = [r.id for r in store.add([grouped(f"j{i}", None) for i in range(42)], batch_keys=[None] * 42, now=NOW)]
    failing = ids[::failed_every]
    run_all(store, ids, failing=set(failing), at=NOW)
    (later,) = store.add([grouped("later", None)], batch_keys=[None], now=NOW)
    for round_ in range(3):
        again = store.requeue_failed(group=None, now=NOW + round_)
        assert again.ids == tuple(failing)
        stored = store.list_jobs(status=S.QUEUED)
        assert [r.id for r in stored] == ([later.id] if round_ == 0 else []) + failing
        seqs = [r.seq for r in stored if r.id != later.id]
        assert seqs == sorted(seqs) and seqs[-1] - seqs[0] < 2 * len(failing)
        assert again.key_of == {r.id: r.order_key for r in stored if r.id != later.id}
        assert (store.counts()[S.QUEUED], store.counts()[S.ERROR]) == (len(stored), 0)
        run_all(store, [r.id for r in stored], failing=set(failing), at=NOW + 100 * (round_ + 1))
        counts = store.counts()  # counted row by row again after the bulk change
        assert (counts[S.QUEUED], counts[S.ERROR], counts[S.COMPLETE]) == (0, len(failing), 43 - len(failing))


def queued_ids(store: Store) -> list[int]:
    return [r.id for r in store.list_jobs(status=S.QUEUED)]


def test_set_priority_moves_to_the_end_of_the_new_priority(store: Store) -> None:
    a, b, c, d = (
        r.id
        for r in store.add([spec("a"), spec("b"), spec("c", priority=2), spec("d")], batch_keys=[None] * 4, now=NOW)
    )
    assert queued_ids(store) == [c, a, b, d]
    moved = store.set_priority(d, 2, now=NOW)
    assert moved.priority == 2 and queued_ids(store) == [c, d, a, b]
    assert store.set_priority(a, 1, now=NOW).seq == store.get(a).seq  # the same priority: nothing moves
    assert queued_ids(store) == [c, d, a, b]


def test_move_to_front_back_and_before(store: Store) -> None:
    ids = [r.id for r in store.add([spec(f"j{i}") for i in range(6)], batch_keys=[None] * 6, now=NOW)]
    (high,) = store.add([spec("high", priority=2)], batch_keys=[None], now=NOW)
    j0, j1, j2, j3, j4, j5 = ids
    store.move(j4, to=Place.FRONT, now=NOW)
    assert queued_ids(store) == [high.id, j4, j0, j1, j2, j3, j5]
    store.move(j3, to=Place.FRONT, now=NOW)
    store.move(j4, to=Place.BACK, now=NOW)
    assert queued_ids(store) == [high.id, j3, j0, j1, j2, j5, j4]
    store.move(j5, to=j1, now=NOW)  # near the front: the jobs ahead are renumbered
    assert queued_ids(store) == [high.id, j3, j0, j5, j1, j2, j4]
    store.move(j3, to=j4, now=NOW)  # near the back: the target and those behind it are renumbered
    assert queued_ids(store) == [high.id, j0, j5, j1, j2, j3, j4]
    assert store.move(j3, to=j4, now=NOW) == []  # there already
    seqs = [r.seq for r in store.list_jobs()]
    assert len(set(seqs)) == len(seqs)  # every seq unique
    _rev, snapshot = store.queued_snapshot()
    assert [job_id for job_id, _ in sorted(snapshot, key=lambda e: e[1])] == queued_ids(store)


def test_moves_refused_leave_everything_in_place(store: Store) -> None:
    a, b, c = (r.id for r in store.add([spec("a"), spec("b"), spec("c", priority=0)], batch_keys=[None] * 3, now=NOW))
    (d,) = (r.id for r in store.add([spec("d")], batch_keys=[None], now=NOW))
    store.claim(owner="w", device="d", now=NOW, lease=10)  # a runs
    before = store.list_jobs()
    with pytest.raises(IllegalTransition, match="processing"):
        store.move(a, to=Place.FRONT, now=NOW)
    with pytest.raises(IllegalTransition, match="processing"):
        store.set_priority(a, 2, now=NOW)
    with pytest.raises(IllegalTransition, match="before a queued or pending"):
        store.move(b, to=a, now=NOW)
    with pytest.raises(IllegalTransition, match="priority"):
        store.move(b, to=c, now=NOW)
    store.cancel(d, now=NOW)
    with pytest.raises(IllegalTransition, match="cancelled"):
        store.move(d, to=Place.BACK, now=NOW)
    with pytest.raises(JobNotFound):
        store.move(9999, to=Place.FRONT, now=NOW)
    with pytest.raises(JobNotFound):
        store.move(b, to=9999, now=NOW)
    after = store.list_jobs()
    assert [(r.id, r.seq, r.priority) for r in after] == [(r.id, r.seq, r.priority) for r in before[:3]] + [
        (d, before[3].seq, 1)
    ]


def test_a_pending_job_can_be_moved_and_keeps_its_new_place(store: Store) -> None:
    a, b, c = (r.id for r in store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW))
    store.claim(owner="w", device="d", now=NOW, lease=10)
    store.finish(a, owner="w", status=S.PENDING, now=NOW, run_at=NOW + 5)
    store.move(a, to=Place.BACK, now=NOW)
    store.promote_due(now=NOW + 5)
    assert queued_ids(store) == [b, c, a]


# -- model affinity (core.affinity.pick, applied inside the claim) ---------------------------------


def on(model: str | None, priority: int = 1) -> JobSpec:
    return spec(f"for {model}", priority=priority)._replace(model=model)


def take(store: Store, loaded: set[str | None], affinity: int) -> int | None:
    claimed = store.claim(owner="w", device="d", now=NOW, lease=10, loaded=loaded, affinity=affinity)
    return claimed[0].id if claimed else None


def test_claim_stores_and_returns_the_model(store: Store) -> None:
    a, none = store.add([on("a"), on(None)], batch_keys=[None, None], now=NOW)
    assert (a.model, none.model) == ("a", None) and store.get(a.id).model == "a"
    assert store.claim(owner="w", device="d", now=NOW, lease=10)[0].model == "a"


def test_a_claim_leaves_jobs_for_models_the_device_does_not_run(store: Store) -> None:
    b, none, a, c = store.add([on("b"), on(None), on("a"), on("c")], batch_keys=[None] * 4, now=NOW)

    def claim(serves: tuple[str, ...] | None, affinity: int = 0) -> int | None:
        got = store.claim(owner="w", device="d", now=NOW, lease=10, serves=serves, affinity=affinity, loaded={"a"})
        if not got:
            return None
        store.finish(got[0].id, owner="w", status=JobStatus.COMPLETE, now=NOW)
        return got[0].id

    assert claim(("a",)) == none.id  # b is left for another worker; a job naming no model runs anywhere
    assert claim(("a",), affinity=3) == a.id  # affinity looks only at what this device runs
    assert claim(()) is None  # a device that runs no named model: only jobs naming none
    assert store.get(b.id).status is JobStatus.QUEUED and store.get(b.id).attempts == 0
    assert claim(("c", "b")) == b.id and claim(None) == c.id


def test_affinity_takes_a_loaded_model_within_n_places_of_its_priority(store: Store) -> None:
    jobs = store.add([on("a"), on("a"), on("b"), on("b", priority=0)], batch_keys=[None] * 4, now=NOW)
    assert take(store, {"b"}, affinity=1) == jobs[0].id  # b is 2 places behind the head: too far
    assert take(store, {"b"}, affinity=1) == jobs[2].id  # now 1 place behind: taken first
    assert take(store, {"b"}, affinity=5) == jobs[1].id  # the low-priority b is never taken early
    assert take(store, {"b"}, affinity=5) == jobs[3].id


def test_affinity_zero_or_nothing_loaded_is_strict_order(store: Store) -> None:
    jobs = store.add([on("a"), on("b"), on("b")], batch_keys=[None] * 3, now=NOW)
    assert take(store, {"b"}, affinity=0) == jobs[0].id
    assert take(store, set(), affinity=4) == jobs[1].id


def test_affinity_passes_a_job_over_at_most_n_times(store: Store) -> None:
    first, *bs = store.add([on("a"), *[on("b") for _ in range(5)]], batch_keys=[None] * 6, now=NOW)
    order = [take(store, {"b"}, affinity=2) for _ in range(6)]
    assert order == [bs[0].id, bs[1].id, first.id, bs[2].id, bs[3].id, bs[4].id]


def test_a_requeued_job_starts_its_count_again(store: Store) -> None:
    a, b = store.add([on("a"), on("b")], batch_keys=[None, None], now=NOW)
    assert take(store, {"b"}, affinity=1) == b.id  # a passed once: at the bound
    store.finish(b.id, owner="w", status=JobStatus.ERROR, now=NOW, error="x")
    assert store.requeue(b.id, now=NOW).id == b.id  # b goes to the end of the queue
    (c,) = store.add([on("c")], batch_keys=[None], now=NOW)
    assert take(store, {"c"}, affinity=1) == a.id  # a may not be passed again
    store.finish(a.id, owner="w", status=JobStatus.ERROR, now=NOW, error="x")
    assert take(store, {"c"}, affinity=1) == c.id  # b (count 0 again) is passed


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("affinity", [1, 3])
def test_affinity_claims_follow_the_core_rule(store: Store, seed: int, affinity: int) -> None:
    """Random queues and loaded models: every claim is the one ``pick`` makes, and no job starts
    after more than ``affinity`` jobs that were behind it."""
    rng = random.Random(seed)
    specs = [on(rng.choice(["a", "b", "c", None]), priority=rng.choice([1, 1, 2])) for _ in range(40)]
    added = store.add(specs, batch_keys=[None] * len(specs), now=NOW)
    waiting = sorted(added, key=lambda r: r.order_key)
    passed = {r.id: 0 for r in added}
    started: list[JobRecord] = []
    while waiting:
        loaded = set(rng.sample(["a", "b", "c", None], rng.randint(0, 2)))
        head = [Waiting(r.priority, r.model, passed[r.id]) for r in waiting[: affinity + 1]]
        k = pick(head, loaded=loaded, affinity=affinity)
        assert take(store, loaded, affinity) == waiting[k].id
        for r in waiting[:k]:
            passed[r.id] += 1
        started.append(waiting.pop(k))
    # counted from the order the jobs started in: how many that were behind each job went first
    overtaken = [sum(o.order_key > r.order_key for o in started[:i]) for i, r in enumerate(started)]
    assert 0 < max(overtaken) <= affinity
