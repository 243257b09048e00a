"""What a ``Job`` or an ``ImageQueue`` shows as the last expression of a cell.

Each job and queue has one live widget, made on first use (``job_card``, ``queue_board``) and
shown again by every later display, so that running a cell again adds no widget that would go on
following the queue unseen; a closed one is replaced.

In a kernel the bundle holds that widget, plus ``text/plain`` and ``text/html`` fallbacks for
places that do not run widgets (nbviewer, GitHub, a notebook opened without its kernel). Elsewhere
(a terminal IPython, a script) it holds the fallbacks alone. The fallbacks hold no clocks, times or
paths: a finished job gives the same output every time, which nbval compares (it skips only the
widget-view MIME type).
"""

from __future__ import annotations

import html
import weakref
from typing import TYPE_CHECKING, Any

from ..core.states import JobStatus
from .format import QueuedRow, counts_html, job_view, queued_html
from .thumbs import THUMBNAIL_SIZE, thumbnail_uri

if TYPE_CHECKING:
    from ..queue import ImageQueue, Job
    from .board import QueueBoard
    from .grid import SweepGrid
    from .job import JobCard

__all__ = [
    "job_bundle",
    "job_card",
    "job_html",
    "job_plain",
    "queue_board",
    "queue_bundle",
    "queue_html",
    "queue_plain",
    "sweep_grid",
]

_cards: weakref.WeakKeyDictionary[Job, JobCard] = weakref.WeakKeyDictionary()
_boards: weakref.WeakKeyDictionary[ImageQueue, QueueBoard] = weakref.WeakKeyDictionary()
_grids: weakref.WeakKeyDictionary[ImageQueue, dict[tuple[str, str, str], SweepGrid]] = weakref.WeakKeyDictionary()

STATIC_QUEUED = 5  # queued jobs listed in the static HTML of a queue
_BOX = "font-family:sans-serif;border:1px solid #ddd;padding:6px"


def in_kernel() -> bool:
    """True when a Jupyter kernel runs this code, so that a widget can reach a frontend."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def job_card(job: Job) -> JobCard:
    """The live card of ``job``: the one made before unless it was closed."""
    from .job import JobCard

    card = _cards.get(job)
    if card is None or card.comm is None:
        card = _cards[job] = JobCard(job)
    return card


def queue_board(queue: ImageQueue) -> QueueBoard:
    """The live board of ``queue``: the one made before unless it was closed."""
    from .board import QueueBoard

    board = _boards.get(queue)
    if board is None or board.comm is None:
        board = _boards[queue] = QueueBoard(queue)
    return board


def sweep_grid(queue: ImageQueue, group: str, *, rows: str, cols: str) -> SweepGrid:
    """The live sweep grid of ``group`` by ``rows`` and ``cols``: the one made before unless it was closed."""
    from .grid import SweepGrid

    key = (group, rows, cols)
    if not all(isinstance(part, str) for part in key):
        return SweepGrid(queue, group, rows=rows, cols=cols)  # refuses them with a clear message
    made = _grids.setdefault(queue, {})
    grid = made.get(key)
    if grid is None or grid.comm is None:
        grid = made[key] = SweepGrid(queue, group, rows=rows, cols=cols)
    return grid


def job_plain(job: Job) -> str:
    return repr(job)


def job_html(job: Job) -> str:
    """A small card: title, state, progress, escaped error, and the thumbnail when complete."""
    v = job_view(job.record, position=job.position, step=job.step)  # no now=: no clocks
    uri = thumbnail_uri(v.image) if v.image else None
    image = (
        f'<img src="{uri}" alt="job {job.id}" width="{THUMBNAIL_SIZE}" height="{THUMBNAIL_SIZE}" '
        'style="object-fit:contain;margin-right:12px">'
        if uri
        else ""
    )
    lines = [v.title, v.state]
    if job.status is JobStatus.PROCESSING:
        lines.append(html.escape(v.bar_text))
    if v.error:
        lines.append(v.error)
    text = "".join(f"<div>{line}</div>" for line in lines)
    style = f"display:flex;align-items:flex-start;{_BOX};max-width:560px"
    return f'<div class="imgnb-job" style="{style}">{image}<div>{text}</div></div>'


def queue_plain(queue: ImageQueue) -> str:
    counts = queue.counts()
    parts = [f"{n:,} {status}" for status, n in counts.items() if n]
    return f"<ImageQueue {queue.state}: {', '.join(parts) or 'no jobs'}>"


def queue_html(queue: ImageQueue) -> str:
    """Counts per status and the head of the queue."""
    head, queued = queue.head(STATIC_QUEUED), queue.queued_count()
    jobs = [queue.get(i) for i in head] if not queue.closed else []
    rows = [
        QueuedRow(position=k + 1, job_id=j.id, prompt=j.prompt, priority=j.priority, model=j.model)
        for k, j in enumerate(jobs)
    ]
    return (
        f'<div class="imgnb-queue" style="{_BOX};max-width:900px">'
        f"<div><b>ImageQueue</b> · {queue.state} · {counts_html(queue.counts())}</div>"
        f"{queued_html(rows, queued - len(rows))}</div>"
    )


def job_bundle(job: Job) -> dict[str, Any]:
    bundle: dict[str, Any] = {}
    if in_kernel():
        bundle.update(job_card(job)._repr_mimebundle_() or {})
    bundle.update({"text/plain": job_plain(job), "text/html": job_html(job)})
    return bundle


def queue_bundle(queue: ImageQueue) -> dict[str, Any]:
    bundle: dict[str, Any] = {}
    if in_kernel():
        bundle.update(queue_board(queue)._repr_mimebundle_() or {})
    bundle.update({"text/plain": queue_plain(queue), "text/html": queue_html(queue)})
    return bundle
