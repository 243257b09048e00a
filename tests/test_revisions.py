"""Which revisions a queue must still read (``core.revisions``): the spans between the runs of its
own writes, checked against a plain set of numbers; and how the mirror keeps those runs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imgnb import JobStatus
from imgnb.core.records import BulkChange, JobRecord
from imgnb.core.revisions import MAX_RUNS, WORTH_SKIPPING, runs_of, unread_spans
from imgnb.queue.mirror import QueueMirror


def test_runs_join_consecutive_revisions() -> None:
    assert runs_of([7, 3, 4, 5, 9, 10, 4]) == [(3, 5), (7, 7), (9, 10)]
    assert runs_of([]) == []


def test_beyond_the_most_runs_the_longest_are_kept_in_order() -> None:
    revisions = [10 * i for i in range(MAX_RUNS)] + [1000, 1001, 1002] + [2000, 2001]
    runs = runs_of(revisions)
    assert len(runs) == MAX_RUNS and runs == sorted(runs)
    assert (1000, 1002) in runs and (2000, 2001) in runs


def test_the_spans_are_what_lies_outside_the_runs() -> None:
    assert unread_spans(10, 20, [(12, 13), (15, 15)]) == [(10, 11), (13, 14), (15, 20)]
    assert unread_spans(10, 20, [(11, 20)]) == []
    assert unread_spans(10, 20, []) == [(10, 20)]
    assert unread_spans(10, 10, []) == []
    assert unread_spans(10, 20, [(5, 12), (25, 30)]) == [(12, 20)]


@given(
    after=st.integers(0, 60),
    size=st.integers(0, 60),
    own=st.sets(st.integers(0, 130), max_size=40),
)
def test_a_read_of_the_spans_misses_nothing_but_the_runs(after: int, size: int, own: set[int]) -> None:
    upto = after + size
    runs = runs_of(own)
    kept = {r for first, last in runs for r in range(first, last + 1)}
    assert kept <= own
    read = [r for a, b in unread_spans(after, upto, runs) for r in range(a + 1, b + 1)]
    assert read == sorted(set(range(after + 1, upto + 1)) - kept)  # each once, in order


def _written(job_id: int, revision: int) -> JobRecord:
    return JobRecord(
        id=job_id, seq=job_id, status=JobStatus.CANCELLED, priority=1, group=None, prompt="p", params={},
        seed=0, metadata={}, timeout=None, max_retries=0, created_at=0.0, updated_at=0.0, run_at=0.0,
        revision=revision,
    )  # fmt: skip


def test_the_mirror_skips_its_big_writes_past_a_gap_and_reads_its_small_ones_back() -> None:
    mirror = QueueMirror(5, [])
    mirror.advance_past_own_write([_written(1, 6)])  # the next revision: current up to it
    assert mirror.unread() == (6, [])
    mirror.advance_past_own_write([_written(1, 8)])  # past revision 7, another process's
    many = tuple(range(100, 100 + WORTH_SKIPPING))
    mirror.apply_bulk(BulkChange(ids=many, revision=9, values={"status": JobStatus.CANCELLED}), emit=False)
    assert mirror.unread() == (6, [(9, 9)])  # revision 8's one row is read back with the gap
    assert [mirror.has_applied(r) for r in (6, 7, 8, 9, 10)] == [True, False, True, True, False]
    mirror.advance_to(7)  # the watcher read the gap: the writes after it are applied already
    assert mirror.unread() == (9, []) and mirror.revision == 9


def test_own_writes_published_out_of_order_bring_the_mirror_past_both() -> None:
    """Two threads of this process commit revisions 6 and 7 and publish them the other way round."""
    mirror = QueueMirror(5, [])
    mirror.advance_past_own_write([_written(1, 7)])
    assert mirror.revision == 5 and mirror.has_applied(7)
    mirror.advance_past_own_write([_written(2, 6)])
    assert mirror.unread() == (7, [])
