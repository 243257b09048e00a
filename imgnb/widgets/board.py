"""``QueueBoard``: a whole queue, live, built from stock ipywidgets.

It shows counts per status, per device the models it holds and the one it is loading (for a queue
with named models), the running jobs with their model and progress, the head of the queue in run
order (the first ``max_queued``, then "+N more"), the last ``max_recent`` finished jobs with
thumbnails or errors, and buttons for what a person does most: Pause/Resume, "Retry failed", and
"To front" and "Cancel" beside each of the first ``QUEUED_WITH_BUTTONS`` queued jobs.

Nothing reads every job, so the board opens as fast with a million jobs in the database as with
ten: the counts come from the database's counters, the running jobs and the recently finished ones
from small indexed reads, and the head of the queue from the queue's memory. The running jobs
follow the events; the counts and the recent list are read again after a status change and once a
second (so that jobs pruned by another process leave). A redraw happens at most ten times a second,
and only changed traits are sent.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Int, TraitError, observe, validate

from ..core.bulk_events import BulkEvents
from ..core.describe import ordinal, short
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
    more_html,
    queued_html,
)
from .live import LiveBox, LiveUpdates, assign, hold_all, set_bar
from .thumbs import preview_jpeg, thumbnail_png

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..queue import ImageQueue, Job

__all__ = ["QueueBoard"]

RECENT_KEPT = 100  # the most finished jobs max_recent may show
TILE_SIZE = 96
PREVIEW_SIZE = 64  # the live preview beside a running job
QUEUED_WITH_BUTTONS = 5  # the first queued jobs get their own row, with To front and Cancel
RECHECK_EVERY = 1.0  # seconds between reads of the counts and recent jobs without a status event


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


class _QueuedRow:
    """One of the first queued jobs: its place and prompt, and its two buttons."""

    def __init__(self, queue: ImageQueue, act: Callable[[Callable[[], object]], None]) -> None:
        self.job_id: int | None = None
        self.label = w.HTML(layout=w.Layout(width="60%"))
        button = {"layout": w.Layout(width="auto"), "style": {"button_color": "transparent"}}
        self.front_button = w.Button(
            description="To front", icon="angle-double-up", tooltip="Run next in its priority", **button
        )
        self.cancel_button = w.Button(description="Cancel", icon="times", tooltip="Cancel this job", **button)
        self.front_button.on_click(lambda _: act(lambda: queue.move(self._id(), to="front")))
        self.cancel_button.on_click(lambda _: act(lambda: queue.cancel(self._id())))
        self.box = w.HBox([self.label, self.front_button, self.cancel_button])
        self.widgets = [self.label, self.front_button, self.cancel_button, self.box]

    def _id(self) -> int:
        assert self.job_id is not None, "a row is shown only with a job"
        return self.job_id

    def show(self, row: QueuedRow) -> None:
        self.job_id = row.job_id
        priority = "" if row.priority == "normal" else f" <span style='color:#757575'>{row.priority}</span>"
        prompt = html.escape(short(row.prompt))
        text = f"{ordinal(row.position)} &nbsp;#{row.job_id} {prompt}{model_label(row.model)}{priority}"
        assign(self.label, value=block(text))
        assign(self.front_button, disabled=row.position == 1)


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
        self._stale = True  # more recent jobs may be wanted
        if self._live is not None:
            self._live.mark()

    def __init__(self, queue: ImageQueue, **kwargs: Any) -> None:
        self._queue = queue
        self._counts: dict[str, int] = {}
        self._recent: list[Job] = []  # the last finished, newest first
        self._stale = True  # the counts and recent jobs are to be read again at the next redraw
        self._read_at = float("-inf")  # monotonic time they were last read
        self._clocks: dict[int, StepClock] = {}
        running = queue.jobs(JobStatus.PROCESSING)
        self._running = {j.id for j in running}
        self._handles: dict[int, Job] = {j.id: j for j in running}  # of the jobs on show
        self.header_html = w.HTML()
        self.devices_html = w.HTML(layout=w.Layout(display="" if queue.models else "none"))
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", icon="play")
        self.retry_failed_button = w.Button(
            description="Retry failed", icon="redo", tooltip="Queue every failed job again"
        )
        self.pause_button.on_click(lambda _: self._act(self._queue.pause))
        self.resume_button.on_click(lambda _: self._act(self._resume))
        self.retry_failed_button.on_click(lambda _: self._act(self._queue.retry_failed))
        self.running_box = w.VBox()
        self.queued_box = w.VBox()  # the first queued jobs, each with its buttons
        self.queued_html = w.HTML()  # the next ones, as a table
        self.recent_box = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self._rows: list[_RunningRow] = []
        self._queued_rows: list[_QueuedRow] = []
        self._tiles: list[_Tile] = []
        self._fixed = [self.header_html, self.devices_html, self.pause_button, self.resume_button]
        self._fixed += [self.retry_failed_button, self.running_box, self.queued_box, self.queued_html]
        self._fixed += [self.recent_box]

        def heading(text: str) -> w.HTML:
            return w.HTML(f"<b style='color:#616161'>{text}</b>")

        buttons = w.HBox([self.pause_button, self.resume_button, self.retry_failed_button])
        running_heading, waiting, finished = heading("Running"), heading("Queued"), heading("Recent")
        self._static = [buttons, running_heading, waiting, finished]
        sections = [running_heading, self.running_box, waiting, self.queued_box, self.queued_html]
        super().__init__(
            [self.header_html, self.devices_html, buttons, *sections, finished, self.recent_box],
            layout=w.Layout(border="1px solid #ddd", padding="6px", max_width="900px"),
            **kwargs,
        )
        self._live = LiveUpdates(
            queue, wants=self._wants, wants_bulk=self._wants_bulk, redraw=self.refresh, interval=self.interval
        )
        self.refresh()

    @property
    def queue(self) -> ImageQueue:
        return self._queue

    def _read(self) -> None:
        """The counts (from the database's counters) and the last finished jobs (an indexed page):
        two small reads, whatever the number of jobs."""
        self._stale = False  # a status event during the read asks for another one
        self._read_at = time.monotonic()
        self._counts = self._queue.counts()
        self._recent = self._queue.recent(self.max_recent)

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
        self._stale = True  # a status changed, or a job was pruned: the counts and recent jobs too
        if event.kind is EventKind.STATUS and event.status is JobStatus.PROCESSING:
            self._running.add(job_id)
        else:
            self._running.discard(job_id)
            self._clocks.pop(job_id, None)
        return True

    def _wants_bulk(self, events: BulkEvents) -> bool:
        """``_wants`` of every event of a bulk edit, at once: the counts and recent jobs are read
        again, and the running set follows the jobs it moved."""
        self._stale = True
        if events.status is JobStatus.PROCESSING:
            self._running.update(events.job_ids)
        elif self._running:
            for job_id in self._running & events.id_set():
                self._running.discard(job_id)
                self._clocks.pop(job_id, None)
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
        if not closed and (self._stale or time.monotonic() - self._read_at >= RECHECK_EVERY):
            self._read()
        head, queued = q.head(self.max_queued), q.queued_count()
        running = sorted(self._running)
        shown = {i: self._job(i, closed) for i in {*head, *running}}
        self._handles = {i: j for i, j in shown.items() if j is not None}
        notice = f"<br><span style='color:#c62828'>{html.escape(self._notice)}</span>" if self._notice else ""
        rows = [
            QueuedRow(position=k + 1, job_id=j.id, prompt=j.prompt, priority=j.priority, model=j.model)
            for k, j in enumerate(self._handles[i] for i in head if i in self._handles)
        ]
        with_buttons, in_table = rows[:QUEUED_WITH_BUTTONS], rows[QUEUED_WITH_BUTTONS:]
        running_jobs = [self._handles[i] for i in running if i in self._handles]
        recent_jobs = self._recent[: self.max_recent]
        self._grow(len(running_jobs), len(with_buttons), len(recent_jobs))
        with hold_all(self._synced()):
            assign(
                self.header_html, value=block(f"<b>ImageQueue</b> · {q.state} · {counts_html(self._counts)}{notice}")
            )
            if q.models:
                assign(self.devices_html, value=devices_html(q.device_states(), time.time()))
            assign(self.pause_button, disabled=closed or q.paused)
            assign(self.resume_button, disabled=closed or (q.started and not q.paused))
            assign(self.retry_failed_button, disabled=closed or not self._counts.get(JobStatus.ERROR.value))
            for row, job in zip(self._rows, running_jobs, strict=False):
                row.show(job, self._clocks.get(job.id))
            assign(self.running_box, children=tuple(r.box for r in self._rows[: len(running_jobs)]))
            for queued_row, queued_job in zip(self._queued_rows, with_buttons, strict=False):
                queued_row.show(queued_job)
            assign(self.queued_box, children=tuple(r.box for r in self._queued_rows[: len(with_buttons)]))
            more = queued - len(rows)
            table = queued_html(in_table, more) if in_table or not with_buttons else block(more_html(more))
            assign(self.queued_html, value=table)
            for tile, job in zip(self._tiles, recent_jobs, strict=False):
                tile.show(job)
            assign(self.recent_box, children=tuple(t.box for t in self._tiles[: len(recent_jobs)]))
        if not closed:
            self.live.tick(RECHECK_EVERY)  # clocks, pause() or resume() from code, other processes' prunes

    def _grow(self, rows: int, queued: int, tiles: int) -> None:
        self._rows += [_RunningRow() for _ in range(rows - len(self._rows))]
        self._queued_rows += [_QueuedRow(self._queue, self._act) for _ in range(queued - len(self._queued_rows))]
        self._tiles += [_Tile() for _ in range(tiles - len(self._tiles))]

    def _synced(self) -> list[Any]:
        parts: list[_RunningRow | _QueuedRow | _Tile] = [*self._rows, *self._queued_rows, *self._tiles]
        return [*self._fixed, *(x for part in parts for x in part.widgets)]

    def _resume(self) -> None:
        """Resume button: resume a paused queue, and start one made with ``start=False``."""
        self._queue.resume()
        if not self._queue.started:
            self._queue.start()

    def close(self) -> None:
        """Stop following the queue and close the board and every widget in it, shown or not."""
        parts: list[_RunningRow | _QueuedRow | _Tile] = [
            *getattr(self, "_rows", []),
            *getattr(self, "_queued_rows", []),
            *getattr(self, "_tiles", []),
        ]
        self._close_all(part.box for part in parts)
