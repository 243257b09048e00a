"""Property-based: positions under random submits, cancels, completions and priorities.

A reference model (a plain sorted list) is compared with the OrderIndex, and with a real queue over
SQLite whose store decides what is queued.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgnb import IllegalTransition, ImageQueue, JobStatus
from imgnb.core.ordering import OrderIndex, order_key
from imgnb.core.records import JobSpec
from imgnb.store import SQLStore, Store
from imgnb.testing import MemoryStore

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("finish_head"), st.just(0)),
    ),
    max_size=60,
)


@given(ops)
def test_order_index_matches_sorted_model(operations: list[tuple[str, int]]) -> None:
    index = OrderIndex()
    model: dict[int, tuple[int, int]] = {}
    next_id = 0
    for op, arg in operations:
        if op == "submit":
            model[next_id] = order_key(priority=arg, seq=next_id)
            index.put(next_id, model[next_id])
            next_id += 1
        elif op == "cancel":
            model.pop(arg, None)
            index.discard(arg)
        elif model:
            head = min(model, key=model.__getitem__)
            assert index.head(1) == [head]
            del model[head]
            index.discard(head)
        expected = sorted(model, key=model.__getitem__)
        assert list(index) == expected
        assert all(index.position(j) == i + 1 for i, j in enumerate(expected))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=ops)
def test_queue_positions_match_model(tmp_path_factory: object, operations: list[tuple[str, int]]) -> None:
    tmp = Path(tmp_path_factory.mktemp("prop"))  # type: ignore[attr-defined]
    with ImageQueue(tmp / "jobs.db", start=False) as q:
        jobs = []
        model: list[tuple[int, int, int]] = []  # (-priority, submit index, job index)
        labels = ["low", "normal", "high"]
        for op, arg in operations:
            if op == "submit":
                jobs.append(q.submit(f"p{len(jobs)}", priority=labels[arg]))
                model.append((-arg, len(jobs) - 1, len(jobs) - 1))
            elif op == "cancel" and arg < len(jobs) and jobs[arg].status is JobStatus.QUEUED:
                jobs[arg].cancel()
                model = [m for m in model if m[2] != arg]
            elif op == "finish_head" and model:
                model.sort()
                head = jobs[model.pop(0)[2]]
                head.cancel()  # leaves the queue like a finished job does
        model.sort()
        assert [j.id for j in q.jobs(status="queued")] == [jobs[m[2]].id for m in model]
        for position, m in enumerate(model, start=1):
            assert jobs[m[2]].position == position
        # a second queue on the same database computes the same positions from the store alone
        with ImageQueue(tmp / "jobs.db", start=False) as again:
            assert [again.get(jobs[m[2]].id).position for m in model] == list(range(1, len(model) + 1))


store_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=4)),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("requeue"), st.integers(0, 40)),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=store_ops)
def test_claims_follow_the_promised_positions(tmp_path_factory: Any, kind: str, operations: list[Any]) -> None:
    """Real claims against a store take jobs in exactly the order the positions promised."""
    store: Store = MemoryStore() if kind == "memory" else SQLStore(Path(tmp_path_factory.mktemp("claims")) / "j.db")
    try:
        ids: list[int] = []
        for op, arg in operations:
            if op == "add":
                specs = [
                    JobSpec(
                        prompt="p", params={}, seed=0, priority=p, group=None, timeout=None, max_retries=0, metadata={}
                    )
                    for p in arg
                ]
                ids += [r.id for r in store.add(specs, batch_keys=[None] * len(specs), now=1.0)]
            elif arg < len(ids):
                with contextlib.suppress(IllegalTransition):
                    (store.cancel if op == "cancel" else store.requeue)(ids[arg], now=1.0)
        _, queued = store.queued_snapshot()
        promised = list(OrderIndex(queued))
        claimed = []
        while batch := store.claim(owner="w", device="h/d", now=2.0, lease=60):
            claimed += [r.id for r in batch]
            store.finish(batch[0].id, owner="w", status=JobStatus.COMPLETE, now=2.0)
        assert claimed == promised
    finally:
        store.close()
