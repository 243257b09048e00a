"""Model affinity: which waiting job a worker takes, given the models its device holds. Pure: no I/O.

Loading a model costs seconds to minutes; a queue that alternates between two models would reload
on nearly every job. With ``affinity=N`` (``ImageQueue(..., affinity=N)``) a worker whose device
holds model M may take, instead of the head of the queue, the oldest waiting job for M of the
head's priority, at most N places behind the head (InvokeAI looks 32 items ahead the same way).

Two bounds keep the queue fair:

- priorities are never crossed: only jobs of the head's priority are looked at;
- no job is passed over more than N times in all: each job a claim goes past counts one pass
  (stores keep the count per job, with the job, as ``passed_over``), and a job passed N times
  cannot be passed again, so it is taken as soon as it is the head of the queue. A job therefore
  starts before at most N jobs submitted after it at its priority (batch mates, which ride along
  with the job a claim takes, aside).

``affinity=0`` (the default) is strict run order: the head, always. Both stores apply ``pick``
inside their claim transaction, to the first ``affinity + 1`` queued jobs in run order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["Waiting", "pick"]


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the rule needs of one queued job."""

    priority: int
    model: str | None
    passed_over: int = 0  # claims that went past it so far


def pick(head: Sequence[Waiting], *, loaded: Collection[str | None], affinity: int) -> int:
    """The index in ``head`` of the job to take (0: the head itself).

    ``head`` is the queued jobs in run order, at least the first ``affinity + 1`` of them (fewer
    when fewer are queued); ``loaded`` the models the claiming device holds (None for the jobs
    stored without a model, when the device holds the model those run on). The jobs before the
    index returned are the ones passed over: their count goes up by one.
    """
    if not head or affinity <= 0 or head[0].model in loaded:
        return 0
    priority = head[0].priority
    for k in range(1, min(affinity + 1, len(head))):
        if head[k - 1].passed_over >= affinity or head[k].priority != priority:
            return 0  # a job that may not be passed, or the end of the head's priority
        if head[k].model in loaded:
            return k
    return 0
