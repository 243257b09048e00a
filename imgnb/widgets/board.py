"""``QueueBoard``: a whole queue, live, built from stock ipywidgets.

It shows counts per status, per device the models it holds and the one it is loading (for a queue
with named models), the running jobs with their model and progress, the head of the queue in run
order (the first ``max_queued``, then "+N more"), the last ``max_recent`` finished jobs with
thumbnails or errors, and Pause/Resume buttons. Counts and the recent list are kept up to date
from events after one read of the jobs at the start, so a redraw costs the same for 100 jobs as for
100,000; it happens at most ten times a second, and only changed traits are sent.
"""

from __future__ import annotations

import html
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Int, TraitError, observe, validate

from ..core.describe import short
from ..core.records import EventKind, JobEvent
from ..core.states import JobStatus
from ..errors import ImgnbError
from .format import (
    QueuedRow,
    StepClock,
    block,
    counts_html,
    devices_html,
    job_view,
    loading_text,
    model_label,
    queued_html,
)
from .live import LiveBox, LiveUpdates, assign, hold_all, set_bar
from .thumbs import preview_jpeg, thumbnail_png

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..queue import ImageQueue, Job

__all__ = ["QueueBoard"]

RECENT_KEPT = 100  # finished job ids remembered; max_recent shows the newest of them
TILE_SIZE = 96
PREVIEW_SIZE = 64  # the live preview beside a running job


class _RunningRow:
    """One running job: a label with its clocks, and its progress bar."""

    def __init__(self) -> None:
        side = f"{PREVIEW_SIZE}px"
        self.preview = w.Image(format="jpeg", layout=w.Layout(width=side, height=side, display="none"))
        self.label = w.HTML(layout=w.Layout(width="50%"))
        self.bar = w.IntProgress(style={"description_width": "initial"}, layout=w.Layout(width="40%"))
        self.box = w.HBox([self.preview, self.label, self.bar])
        self.widgets = [self.preview, self.preview.layout, self.label, self.bar, self.box]
        self._preview_of: Image | None = None  # the preview on show

    def show(self, job: Job, clock: StepClock | None) -> None:
        v = job_view(
            job.record,
            position=None,
            step=job.step,
            now=time.time(),
            seconds_per_step=clock.seconds_per_step() if clock else None,
            recheck_every=job.queue.lease_policy.heartbeat,
            loading=job.loading,
        )
        load = job.loading
        loading = f"<br>{loading_text(load, time.time())}" if load is not None else ""
        shown = v.timing and load is None  # while loading, the loading line has the clock
        timing = f"<br><span style='color:#757575'>{v.timing}</span>" if shown else ""
        stalled = "<br>worker stopped responding" if v.bar_text == "stalled" else ""
        text = f"#{job.id} {html.escape(short(job.prompt, 50))}{model_label(job.model)}{loading}{timing}{stalled}"
        assign(self.label, value=block(text))
        set_bar(self.bar, value=v.bar_value, max=v.bar_max, description=v.bar_text, bar_style=v.bar_style)
        preview = job.preview
        if preview is not self._preview_of:
            self._preview_of = preview
            if preview is not None:
                assign(self.preview, value=preview_jpeg(preview, PREVIEW_SIZE))
            assign(self.preview.layout, display="" if preview is not None else "none")


class _Tile:
    """One finished job: its thumbnail, or its error."""

    def __init__(self) -> None:
        side = f"{TILE_SIZE}px"
        self.image = w.Image(format="png", layout=w.Layout(width=side, height=side, object_fit="contain"))
        self.caption = w.HTML(layout=w.Layout(width="150px"))
        self.box = w.VBox([self.image, self.caption], layout=w.Layout(margin="0 8px 8px 0", width="150px"))
        self.widgets = [self.image, self.image.layout, self.caption, self.box]
        self._shows: tuple[int, int] | None = None  # (job id, revision) drawn

    def show(self, job: Job) -> None:
        record = job.record
        if self._shows == (record.id, record.revision):
            return
        self._shows = (record.id, record.revision)
        done = record.status is JobStatus.COMPLETE and record.images
        png = thumbnail_png(record.images[0], TILE_SIZE) if done else None
        if png is not None:
            assign(self.image, value=png)
        assign(self.image.layout, display="" if png is not None else "none")
        v = job_view(record, position=None, step=None)
        text = f"#{record.id} {v.state}{model_label(record.model)}<br>{html.escape(short(record.prompt, 40))}"
        if record.error:
            text += f"<br><span style='color:#c62828'>{html.escape(short(record.error, 120))}</span>"
        assign(self.caption, value=block(text))


class QueueBoard(LiveBox):
    """A live board for an ``ImageQueue``: ``QueueBoard(queue)``, ``queue.widget()``, or ``queue`` alone in a cell."""

    max_queued = Int(20, help="How many queued jobs to list; the others are counted ('+N more').")
    max_recent = Int(8, help=f"How many finished jobs to show, newest first (at most {RECENT_KEPT}).")

    @validate("max_queued", "max_recent")
    def _valid_cap(self, proposal: dict[str, Any]) -> int:
        name, value = proposal["trait"].name, proposal["value"]
        top = RECENT_KEPT if name == "max_recent" else 1000
        if not 0 <= value <= top:
            raise TraitError(f"{name}={value!r} is invalid; allowed: 0 to {top}")
        return int(value)

    @observe("max_queued", "max_recent")
    def _caps_changed(self, change: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.mark()

    def __init__(self, queue: ImageQueue, **kwargs: Any) -> None:
        self._queue = queue
        self._status: dict[int, JobStatus] = {}
        self._counts: Counter[str] = Counter()
        self._running: set[int] = set()
        self._recent: deque[int] = deque(maxlen=RECENT_KEPT)  # finished job ids, oldest first
        self._clocks: dict[int, StepClock] = {}
        self._handles: dict[int, Job] = {}  # of the jobs on show
        self._load()
        self.header_html = w.HTML()
        self.devices_html = w.HTML(layout=w.Layout(display="" if queue.models else "none"))
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", icon="play")
        self.pause_button.on_click(lambda _: self._act(self._queue.pause))
        self.resume_button.on_click(lambda _: self._act(self._resume))
        self.running_box = w.VBox()
        self.queued_html = w.HTML()
        self.recent_box = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self._rows: list[_RunningRow] = []
        self._tiles: list[_Tile] = []
        self._fixed = [self.header_html, self.devices_html, self.pause_button, self.resume_button, self.running_box]
        self._fixed += [self.queued_html, self.recent_box]

        def heading(text: str) -> w.HTML:
            return w.HTML(f"<b style='color:#616161'>{text}</b>")

        buttons = w.HBox([self.pause_button, self.resume_button])
        running, waiting, finished = heading("Running"), heading("Queued"), heading("Recent")
        self._static = [buttons, running, waiting, finished]
        sections = [running, self.running_box, waiting, self.queued_html, finished, self.recent_box]
        super().__init__(
            [self.header_html, self.devices_html, buttons, *sections],
            layout=w.Layout(border="1px solid #ddd", padding="6px", max_width="900px"),
            **kwargs,
        )
        self._live = LiveUpdates(queue, wants=self._wants, redraw=self.refresh, interval=self.interval)
        self.refresh()

    @property
    def queue(self) -> ImageQueue:
        return self._queue

    def _load(self) -> None:
        """One read of every job: the counts, the running ones and the recent finished ones."""
        jobs = self._queue.jobs()
        finished = []
        for job in jobs:
            self._status[job.id] = job.status
            if job.status is JobStatus.PROCESSING:
                self._running.add(job.id)
                self._handles[job.id] = job
            elif job.status.is_final:
                finished.append(job)
        self._counts.update(s.value for s in self._status.values())
        finished.sort(key=lambda j: (j.record.finished_at or 0.0, j.id))
        for job in finished[-RECENT_KEPT:]:
            self._recent.append(job.id)
        self._handles.update((j.id, j) for j in finished[-RECENT_KEPT:])

    def _wants(self, event: JobEvent) -> bool:
        if event.kind is EventKind.POSITION:
            return False  # the queued list is read from the run order at each redraw
        if event.kind is EventKind.MODEL:
            return True  # a load began or ended: the devices and the running row change
        job_id = event.job_id
        if event.kind is EventKind.PROGRESS:
            if event.step is not None:
                self._clocks.setdefault(job_id, StepClock()).observe(event.step, time.monotonic())
            return True
        old, new = self._status.get(job_id), event.status
        if old is not new:
            if old is not None:
                self._counts[old.value] -= 1
            self._counts[new.value] += 1
            self._status[job_id] = new
        if new is JobStatus.PROCESSING:
            self._running.add(job_id)
        else:
            self._running.discard(job_id)
            self._clocks.pop(job_id, None)
        if new.is_final and old is not new:  # just finished (not an old job read again): newest first
            if job_id in self._recent:
                self._recent.remove(job_id)
            self._recent.append(job_id)
        elif not new.is_final and job_id in self._recent:  # retried by hand
            self._recent.remove(job_id)
        return True

    def _job(self, job_id: int, closed: bool) -> Job | None:
        job = self._handles.get(job_id)
        if job is None and not closed:
            try:
                job = self._queue.get(job_id)
            except ImgnbError:
                return None
        return job

    def refresh(self) -> None:
        """Redraw now (the board also does it by itself)."""
        q = self._queue
        closed = q.closed
        head, queued = q.head(self.max_queued), q.queued_count()
        running = sorted(self._running)
        recent = list(self._recent)[::-1][: self.max_recent]
        shown = {i: self._job(i, closed) for i in {*head, *running, *recent}}
        self._handles = {i: j for i, j in shown.items() if j is not None}
        notice = f"<br><span style='color:#c62828'>{html.escape(self._notice)}</span>" if self._notice else ""
        rows = [
            QueuedRow(position=k + 1, job_id=j.id, prompt=j.prompt, priority=j.priority, model=j.model)
            for k, j in enumerate(self._handles[i] for i in head if i in self._handles)
        ]
        running_jobs = [self._handles[i] for i in running if i in self._handles]
        recent_jobs = [self._handles[i] for i in recent if i in self._handles]
        self._grow(len(running_jobs), len(recent_jobs))
        with hold_all(self._synced()):
            assign(
                self.header_html, value=block(f"<b>ImageQueue</b> · {q.state} · {counts_html(self._counts)}{notice}")
            )
            if q.models:
                assign(self.devices_html, value=devices_html(q.device_states(), time.time()))
            assign(self.pause_button, disabled=closed or q.paused)
            assign(self.resume_button, disabled=closed or (q.started and not q.paused))
            for row, job in zip(self._rows, running_jobs, strict=False):
                row.show(job, self._clocks.get(job.id))
            assign(self.running_box, children=tuple(r.box for r in self._rows[: len(running_jobs)]))
            assign(self.queued_html, value=queued_html(rows, queued - len(rows)))
            for tile, job in zip(self._tiles, recent_jobs, strict=False):
                tile.show(job)
            assign(self.recent_box, children=tuple(t.box for t in self._tiles[: len(recent_jobs)]))
        if not closed:
            self.live.tick(1.0)  # clocks, and pause() or resume() called from code, show within a second

    def _grow(self, rows: int, tiles: int) -> None:
        self._rows += [_RunningRow() for _ in range(rows - len(self._rows))]
        self._tiles += [_Tile() for _ in range(tiles - len(self._tiles))]

    def _synced(self) -> list[Any]:
        parts: list[_RunningRow | _Tile] = [*self._rows, *self._tiles]
        return [*self._fixed, *(x for part in parts for x in part.widgets)]

    def _resume(self) -> None:
        """Resume button: resume a paused queue, and start one made with ``start=False``."""
        self._queue.resume()
        if not self._queue.started:
            self._queue.start()

    def close(self) -> None:
        """Stop following the queue and close the board and every widget in it, shown or not."""
        parts: list[_RunningRow | _Tile] = [*getattr(self, "_rows", []), *getattr(self, "_tiles", [])]
        self._close_all(part.box for part in parts)
