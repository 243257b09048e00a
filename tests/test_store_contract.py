"""The Store contract, run against every implementation by the ``store`` fixture: the in-memory
``MemoryStore`` and ``SQLStore`` on SQLite and PostgreSQL.

Any new Store must pass this file unchanged, and the tests use nothing but the ``Store`` interface:
that is how the PostgreSQL store is known to behave exactly like the SQLite one.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest

from imgnb import IllegalTransition, JobNotFound, JobStatus
from imgnb.core.affinity import Waiting, pick
from imgnb.core.records import JobRecord, JobSpec
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


# -- model affinity (core.affinity.pick, applied inside the claim) ---------------------------------


def on(model: str | None, priority: int = 1) -> JobSpec:
    return replace(spec(f"for {model}", priority=priority), model=model)


def take(store: Store, loaded: set[str | None], affinity: int) -> int | None:
    claimed = store.claim(owner="w", device="d", now=NOW, lease=10, loaded=loaded, affinity=affinity)
    return claimed[0].id if claimed else None


def test_claim_stores_and_returns_the_model(store: Store) -> None:
    a, none = store.add([on("a"), on(None)], batch_keys=[None, None], now=NOW)
    assert (a.model, none.model) == ("a", None) and store.get(a.id).model == "a"
    assert store.claim(owner="w", device="d", now=NOW, lease=10)[0].model == "a"


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
