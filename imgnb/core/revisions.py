"""Which revisions a queue must still read: pure arithmetic on runs of revision numbers.

A queue applies its own writes from what they returned, so it need not read their rows back. Its
mirror is current up to revision N only when every revision up to N was applied; a revision drawn
by another process, or by a write whose rows it did not apply (a lease renewal), leaves a gap. The
own writes after a gap are kept as runs ``(first, last)`` (inclusive), and the watcher reads only
the spans between them: after a 100,000-job retry that came past a gap, the spans are the gap.
Only writes of many rows are worth a span each side; the small ones are read back with the gaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["MAX_RUNS", "WORTH_SKIPPING", "Run", "runs_of", "unread_spans"]

Run = tuple[int, int]  # first and last revision, both included

MAX_RUNS = 16  # a read makes one query a span: more runs than this read the shortest ones back
# rows: a smaller own write is read back with the gaps around it, in one query, not skipped with a
# query each side of it (8 processes' claims and finishes interleave: every one lies past a gap)
WORTH_SKIPPING = 64


def runs_of(revisions: Iterable[int]) -> list[Run]:
    """The revisions as ascending runs of consecutive numbers; beyond ``MAX_RUNS``, the longest
    ones (reading a run back is only slower: its rows are applied again as they were)."""
    runs: list[Run] = []
    for revision in sorted(set(revisions)):
        if runs and runs[-1][1] == revision - 1:
            runs[-1] = (runs[-1][0], revision)
        else:
            runs.append((revision, revision))
    if len(runs) > MAX_RUNS:
        runs = sorted(sorted(runs, key=lambda run: run[0] - run[1])[:MAX_RUNS])
    return runs


def unread_spans(after: int, upto: int, applied: Sequence[Run]) -> list[Run]:
    """The spans ``(a, b]`` of the revisions in ``(after, upto]`` that are not in the ascending,
    disjoint runs ``applied``, in order."""
    spans: list[Run] = []
    start = after
    for first, last in applied:
        if first > upto:
            break
        if first - 1 > start:
            spans.append((start, first - 1))
        start = max(start, last)
    if start < upto:
        spans.append((start, upto))
    return spans
