"""Pure logic: transitions, run order, positions, backoff, validation. No database, no loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imgnb import IllegalTransition, InvalidJob, JobStatus, Priority, RetryPolicy
from imgnb.core.leases import LeasePolicy, deadline
from imgnb.core.ordering import OrderIndex, order_key, order_key_of, order_keys
from imgnb.core.retry import FailureKind, get_retry_decision
from imgnb.core.states import check_transition
from imgnb.core.validation import validate_job

S = JobStatus


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (S.PENDING, S.QUEUED, True),  # retry delay over
        (S.PENDING, S.CANCELLED, True),  # cancelled while waiting out a delay
        (S.PENDING, S.PROCESSING, False),  # must become eligible first
        (S.QUEUED, S.PROCESSING, True),  # claimed by a worker
        (S.QUEUED, S.CANCELLED, True),  # cancelled while waiting
        (S.QUEUED, S.COMPLETE, False),  # cannot finish without running
        (S.PROCESSING, S.COMPLETE, True),
        (S.PROCESSING, S.ERROR, True),
        (S.PROCESSING, S.CANCELLED, True),
        (S.PROCESSING, S.PENDING, True),  # transient failure, retried later
        (S.PROCESSING, S.QUEUED, True),  # worker died: back to its old place
        (S.COMPLETE, S.QUEUED, False),  # a finished job is never re-run
        (S.COMPLETE, S.CANCELLED, False),
        (S.ERROR, S.QUEUED, True),  # retried by hand
        (S.CANCELLED, S.QUEUED, True),  # retried by hand
        (S.ERROR, S.COMPLETE, False),
    ],
)
def test_transitions(current: JobStatus, target: JobStatus, allowed: bool) -> None:
    if allowed:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"from '{current.value}' to '{target.value}'"):
            check_transition(current, target)


def test_final_statuses() -> None:
    assert {s for s in S if s.is_final} == {S.COMPLETE, S.ERROR, S.CANCELLED}
    assert S("queued") is S.QUEUED and str(S.QUEUED) == "queued"


def test_order_high_before_normal_before_low_then_fifo() -> None:
    index = OrderIndex()
    index.put(1, order_key(priority=Priority.LOW, seq=0))
    index.put(2, order_key(priority=Priority.NORMAL, seq=1))
    index.put(3, order_key(priority=Priority.HIGH, seq=2))
    index.put(4, order_key(priority=Priority.NORMAL, seq=3))
    index.put(5, order_key(priority=Priority.HIGH, seq=4))
    assert list(index) == [3, 5, 2, 4, 1]
    assert [index.position(i) for i in (1, 2, 3, 4, 5)] == [5, 3, 1, 4, 2]
    index.discard(3)
    assert index.position(5) == 1 and index.position(3) is None and len(index) == 4


def test_the_three_ways_to_make_a_run_order_key_agree() -> None:
    """``order_key`` (keywords), ``order_key_of`` (a record's attributes) and ``order_keys``
    (columns) are one rule: the same key for the same fields."""
    fields = [(Priority.HIGH, 7), (Priority.LOW, 2), (Priority.NORMAL, 10**12)]
    of_records = [order_key_of(SimpleNamespace(priority=p, seq=s)) for p, s in fields]
    assert of_records == [order_key(priority=p, seq=s) for p, s in fields]
    assert of_records == order_keys(priority=[p for p, _ in fields], seq=[s for _, s in fields])
    assert sorted(of_records) == [of_records[0], of_records[2], of_records[1]]  # high, normal, low


def test_positions_later_answers_as_of_the_call_for_few_and_many() -> None:
    index = OrderIndex((i, order_key(priority=1, seq=i)) for i in range(1, 201))
    few = index.positions_later([5, 7])
    many = index.positions_later(range(1, 101))
    index.discard(1)  # after the calls: not seen by their answers
    assert few() == {5: 5, 7: 7} and many() == {i: i for i in range(1, 101)}


def test_order_index_put_is_idempotent_and_moves() -> None:
    index = OrderIndex([(1, order_key(priority=1, seq=0)), (2, order_key(priority=1, seq=1))])
    index.put(2, order_key(priority=1, seq=1))
    assert len(index) == 2
    index.put(2, order_key(priority=2, seq=1))  # raised to high: moves ahead
    assert list(index) == [2, 1]
    index.discard(99)  # unknown ids are ignored
    assert index.head(1) == [2]


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        (1, 1.0),  # first run failed: 1 s
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),  # the next one, if max_retries allows it
        (20, 300.0),  # capped at max_delay
    ],
)
def test_backoff_doubles(attempts: int, delay: float) -> None:
    assert RetryPolicy().delay(attempts) == delay


@pytest.mark.parametrize(
    ("kind", "attempts", "max_retries", "expected"),
    [
        (FailureKind.TRANSIENT, 1, 3, 1.0),  # retried after 1 s
        (FailureKind.TRANSIENT, 3, 3, 4.0),  # third failure still has one retry
        (FailureKind.TRANSIENT, 4, 3, None),  # retries spent
        (FailureKind.TRANSIENT, 1, 0, None),  # max_retries=0: never retried
        (FailureKind.INVALID, 1, 3, None),  # bad input is never retried
        (FailureKind.TIMED_OUT, 1, 3, None),  # timeouts are not retried
        (FailureKind.CANCELLED, 1, 3, None),
        (FailureKind.WORKER_LOST, 1, 3, 0.0),  # back at once, at its old place
        (FailureKind.WORKER_LOST, 4, 3, None),  # but not forever
    ],
)
def test_retry_decision(kind: FailureKind, attempts: int, max_retries: int, expected: float | None) -> None:
    decision = get_retry_decision(kind=kind, attempts=attempts, max_retries=max_retries, policy=RetryPolicy())
    assert (decision.delay if decision else None) == expected


def test_policies_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="factor >= 1"):
        RetryPolicy(factor=0.5)
    with pytest.raises(ValueError, match="heartbeat < lease"):
        LeasePolicy(lease=1, heartbeat=2)
    assert deadline(100.0, 300.0) == 400.0 and deadline(100.0, None) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, r"prompt='' is invalid; allowed: a non-empty string"),
        ({"prompt": 3}, r"prompt=3 is invalid"),
        ({"priority": "urgent"}, r"priority='urgent' is invalid; allowed: 'low', 'normal', 'high'"),
        ({"timeout": 0}, r"timeout=0 is invalid; allowed: None \(no limit\) or seconds > 0"),
        ({"timeout": float("nan")}, r"timeout=nan"),
        ({"max_retries": -1}, r"max_retries=-1 is invalid; allowed: an integer from 0 to 100"),
        ({"max_retries": True}, r"max_retries=True"),
        ({"seed": -5}, r"seed=-5 is invalid"),
        ({"seed": 1.5}, r"seed=1.5 is invalid"),
        ({"metadata": [1]}, r"metadata=\[1\] is invalid; allowed: None or a dict"),
        ({"metadata": {"x": object()}}, r"metadata=.* JSON-serialisable"),
        ({"group": ""}, r"group='' is invalid"),
        ({"params": {"when": object()}}, r"params=.* JSON-serialisable"),
    ],
)
def test_validation_names_field_value_and_allowed(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"prompt": "a fox", "params": {}}
    args.update(kwargs)
    prompt = args.pop("prompt")
    with pytest.raises(InvalidJob, match=message):
        validate_job(prompt, **args)  # type: ignore[arg-type]


def test_validation_in_a_batch_names_the_item() -> None:
    with pytest.raises(InvalidJob, match=r"^batch item 4: priority='x'"):
        validate_job("a", priority="x", params={}, item=4)


def test_invalid_job_is_a_value_error() -> None:
    assert issubclass(InvalidJob, ValueError)


def test_seed_drawn_when_missing_and_kept_when_given() -> None:
    drawn = {validate_job("a", params={}).seed for _ in range(20)}
    assert len(drawn) > 1 and all(0 <= s < 2**32 for s in drawn)
    assert validate_job("a", seed=7, params={}).seed == 7
    assert validate_job("a", priority="HIGH", params={}).priority == Priority.HIGH
