"""Editing waiting jobs: which jobs may be edited, and how a move becomes new ``seq`` numbers. Pure.

Queued jobs run in ``RUN_ORDER``: priority, then ``seq``. Moving a job therefore means giving it a
new ``seq``, and every ``seq`` is unique, handed out under the database's write lock:

- to the back of its priority: the next number of the ascending counter (as a retried job gets);
- to the front: one below the smallest ``seq`` of any job (moved jobs go negative);
- before another job: integers have no room between neighbours, so one side of the target is
  renumbered with fresh numbers: the jobs ahead of it (and the moved job) from below, or the
  target and the jobs behind it from above, whichever side is shorter.

Pending jobs (waiting out a retry delay) keep their ``seq`` and return to it, so they count as
waiting here too; running and finished jobs are never renumbered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..errors import IllegalTransition
from .ordering import Priority
from .states import JobStatus

__all__ = ["EDITABLE_STATUSES", "Place", "Renumbering", "check_editable", "check_target", "move_before", "new_seqs"]

EDITABLE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PENDING})


class Place(StrEnum):
    """Where ``move`` puts a job within its priority (or before the job with a given id)."""

    FRONT = "front"
    BACK = "back"


def check_editable(job_id: int, status: JobStatus, action: str) -> None:
    """``IllegalTransition`` unless the job waits (queued or pending)."""
    if status not in EDITABLE_STATUSES:
        raise IllegalTransition(
            f"job {job_id} is {status.value} and cannot be {action}: only a queued or pending job can be"
        )


def check_target(job_id: int, priority: int, target_id: int, target_status: JobStatus, target_priority: int) -> None:
    """A job may move only before a waiting job of its own priority."""
    if target_status not in EDITABLE_STATUSES:
        raise IllegalTransition(
            f"job {job_id} cannot move before job {target_id}: that job is {target_status.value}, "
            "and a job can only be moved before a queued or pending one"
        )
    if target_priority != priority:
        raise IllegalTransition(
            f"job {job_id} cannot move before job {target_id}: it has priority {Priority(priority).label} and "
            f"job {target_id} {Priority(target_priority).label}; set_priority() first to change its priority"
        )


@dataclass(frozen=True)
class Renumbering:
    """Jobs to give fresh ``seq`` numbers, in their new order: from below every ``seq`` in use
    (``below``) or from the ascending counter."""

    ids: tuple[int, ...]
    below: bool


def move_before(order: Sequence[int], job_id: int, target_id: int) -> Renumbering:
    """How to put ``job_id`` just before ``target_id``, given the waiting jobs of their priority in
    run order (both among them). Empty when it is there already."""
    if order.index(job_id) + 1 == order.index(target_id):
        return Renumbering((), below=False)
    rest = [i for i in order if i != job_id]
    at = rest.index(target_id)
    ahead, behind = rest[:at], rest[at:]
    if len(ahead) < len(behind):
        return Renumbering((*ahead, job_id), below=True)
    return Renumbering((job_id, *behind), below=False)


def new_seqs(renumbering: Renumbering, *, lowest: int, taken: int) -> dict[int, int]:
    """The new ``seq`` of each job: ending just under ``lowest`` (no stored job's ``seq`` is below
    it) when ``below``, else starting at ``taken``, the first of ``len(ids)`` numbers taken from
    the ascending counter."""
    first = lowest - len(renumbering.ids) if renumbering.below else taken
    return {job_id: first + i for i, job_id in enumerate(renumbering.ids)}
