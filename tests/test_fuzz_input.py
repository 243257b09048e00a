"""The public API under fuzzed, hostile input (issue 8), on SQLite and PostgreSQL.

Random calls to submit, submit_batch, update_metadata, get, cancel and jobs with deep and huge
nesting, NUL, lone surrogates, huge integers, odd floats, non-text keys, long text and odd types.
Checked: only ``ImgnbError`` escapes; a refused call stores nothing; what a call accepted reads back
exactly as its handle shows it; and afterwards every accepted job runs to an end (a row that could
not be decoded or written into a PNG would fail here) and a normal job still completes.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgnb import GenerationRequest, ImageQueue, ImgnbError, JobStatus
from imgnb.gen.base import OnStep
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),  # NUL and lone surrogates included
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "ключ", "日本画", "🐈", "fail", "g" * 201, "prompt"]),
    st.integers(60_000, 70_000).map(lambda n: "x" * n),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.sampled_from([-(2**63) - 1, 10**400]),
    st.sampled_from([4400, 5000]).map(lambda digits: 10**digits),  # too long for str(): built, not listed
    st.floats(),  # nan and infinities included
    st.sampled_from([1e300, 1e16, 1.816738184645291e279, -0.0, 5e-324]),
)
ODD = st.sampled_from([b"bytes", object(), {1, 2}, 1j, decimal.Decimal("1.5"), datetime.date(2026, 1, 1), range(3)])
KEYS = st.one_of(TEXT.filter(lambda t: len(t) < 100), st.integers(-3, 3), st.booleans(), st.none(), st.floats())
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSONISH = st.recursive(
    st.one_of(SCALARS, ODD),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4), st.tuples(inner, inner)
    ),
    max_leaves=12,
)
DEEP = st.builds(nested, st.integers(0, 1500), st.one_of(st.just(1), st.just("\x00"), st.just({})))
HOSTILE = st.one_of(JSONISH, DEEP)

# valid input, with what validation normalises (number keys, tuples, unicode, big numbers)
GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)
GOOD_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        GOOD_TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(GOOD_TEXT, st.integers(-3, 3)), inner, max_size=3),
    ),
    max_leaves=8,
)
GOOD_DICT = st.dictionaries(GOOD_TEXT, GOOD_JSON, max_size=3)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = HOSTILE) -> st.SearchStrategy[Any]:
    """Mostly valid, so that calls get past the first check and reach the database."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 0 else good)


PROMPTS = mostly(st.one_of(st.just("a fox"), GOOD_TEXT.filter(str.strip)), st.one_of(TEXT, HOSTILE))
IDS = mostly(st.integers(1, 10), st.one_of(st.sampled_from([2**63, 2**70, 0, -1]), NUMBERS, HOSTILE))
FIELDS = {
    "priority": mostly(st.sampled_from(["low", "normal", "high", "HIGH"]), st.one_of(TEXT, HOSTILE)),
    "group": mostly(st.one_of(st.none(), st.sampled_from(["g", "g" * 200]), GOOD_TEXT), st.one_of(TEXT, HOSTILE)),
    "timeout": mostly(
        st.one_of(st.none(), st.floats(0.5, 1e6), st.sampled_from([1e300, 30])),
        st.one_of(st.floats(), st.integers(), st.sampled_from([10**400, 1e-300]), HOSTILE),
    ),
    "max_retries": mostly(st.integers(0, 100), st.one_of(st.integers(-2, 102), HOSTILE)),
    "metadata": mostly(st.one_of(st.none(), GOOD_DICT)),
    "seed": mostly(st.one_of(st.none(), st.integers(0, 2**63 - 1)), st.one_of(st.integers(-1, 2**64), HOSTILE)),
}
SUBMIT_ARGS = {"self", "prompt", *FIELDS}  # a parameter of that name would be Python's TypeError, not imgnb's
PARAM_NAMES = st.one_of(GOOD_TEXT, TEXT).filter(lambda t: t not in SUBMIT_ARGS and len(t) < 200)
PARAMS = st.dictionaries(PARAM_NAMES, mostly(GOOD_JSON), max_size=3)
ITEM = mostly(
    st.fixed_dictionaries({"prompt": PROMPTS}, optional={k: v for k, v in FIELDS.items() if k != "group"}).flatmap(
        lambda item: PARAMS.map(lambda params: {**params, **item})
    )
)
OPS = st.one_of(
    st.tuples(st.just("submit"), PROMPTS, st.fixed_dictionaries({}, optional=FIELDS), PARAMS),
    st.tuples(
        st.just("batch"),
        mostly(st.lists(ITEM, max_size=3)),
        st.fixed_dictionaries({}, optional={k: FIELDS[k] for k in ("group", "priority", "metadata", "timeout")}),
    ),
    st.tuples(st.just("patch"), IDS, mostly(GOOD_DICT)),
    st.tuples(st.just("get"), IDS),
    st.tuples(st.just("cancel"), IDS),
    st.tuples(st.just("jobs"), mostly(st.one_of(st.none(), st.sampled_from(["queued", "complete"]))), FIELDS["group"]),
)


@dataclass
class Tally:
    accepted: list[int] = field(default_factory=list)  # ids of the jobs the fuzz stored
    refused: int = 0


def apply(q: ImageQueue, op: tuple[Any, ...], tally: Tally) -> None:
    """Run one call; check what it stored against what it answered."""
    kind = op[0]
    target = op[1] if kind == "patch" and type(op[1]) is int and op[1] in tally.accepted else None
    before = (sum(q.counts().values()), q.get(target).metadata if target else None)
    try:
        if kind == "submit":
            made = [q.submit(op[1], **op[2], **op[3])]
        elif kind == "batch":
            made = q.submit_batch(op[1], **op[2])
        elif kind == "patch":
            made = [q.update_metadata(op[1], op[2])]
        elif kind == "get":
            made = [q.get(op[1])]
        elif kind == "cancel":
            q.cancel(op[1])
            made = []
        else:
            made = q.jobs(status=op[1], group=op[2])
    except ImgnbError:
        tally.refused += 1
        assert (sum(q.counts().values()), q.get(target).metadata if target else None) == before  # nothing stored
        return
    if kind in ("submit", "batch"):
        assert sum(q.counts().values()) == before[0] + len(made)
        tally.accepted += [job.id for job in made]
    for job in made[:3]:  # the handle shows what another process reads back
        stored = q.store.get(job.id)
        assert (job.prompt, job.params, job.metadata, job.group) == (
            stored.prompt,
            stored.params,
            stored.metadata,
            stored.group,
        )


def any_params(request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
    """Runs whatever was accepted: what matters here is that it can be stored, read and written."""
    on_step(1, 1)
    return [Image.new("RGB", (4, 4), (request.seed % 256, 0, 0))]


def fuzz(make_queue: MakeQueue, db_url: str, tmp_path: Path, examples: int) -> None:
    q = make_queue(db_url, start=False)
    tally = Tally(accepted=[job.id for job in q.submit_batch([{"prompt": f"seed {i}"} for i in range(3)])])

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(ops=st.lists(OPS, min_size=1, max_size=4))
    def calls(ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            apply(q, op, tally)

    calls()
    assert tally.refused and len(tally.accepted) > 3  # both sides were exercised
    runner = make_queue(db_url, generator=any_params, images_dir=tmp_path / "runner")
    unfinished = (JobStatus.QUEUED, JobStatus.PENDING, JobStatus.PROCESSING)
    wait_until(lambda: all(runner.counts()[s.value] == 0 for s in unfinished), timeout=60)
    for job_id in tally.accepted:
        job = runner.get(job_id)
        timed_out = job.status is JobStatus.ERROR and "timed out" in (job.error or "")
        assert job.status in (JobStatus.COMPLETE, JobStatus.CANCELLED) or timed_out, (job_id, job.error)
    runner.close()
    normal = make_queue(db_url, generator=FakeGenerator(steps=2))
    assert normal.submit("a normal job after the fuzz", steps=2).result(timeout=15)


def test_fuzzed_calls_raise_only_imgnb_errors(make_queue: MakeQueue, db_url: str, tmp_path: Path) -> None:
    fuzz(make_queue, db_url, tmp_path, examples=400)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzzed_calls_raise_only_imgnb_errors_soak(make_queue: MakeQueue, db_url: str, tmp_path: Path) -> None:
    fuzz(make_queue, db_url, tmp_path, examples=5000)
