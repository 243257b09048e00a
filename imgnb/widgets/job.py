"""``JobCard``: one job, live, built from stock ipywidgets (nothing to build or install).

It shows the job's model, state and place in the queue, the model load it waits for ("loading sdxl
on cuda:0", and for how long), a progress bar with "step i/n", elapsed time and an ETA from the
measured step times, attempts and the next retry time, the error of a failed job
and a thumbnail of a finished one, with Cancel and Retry buttons. It follows the queue's events,
redrawing at most ten times a second, and only the traits that changed are sent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Int, TraitError, observe, validate

from ..core.bulk_events import BulkEvents
from ..core.records import EventKind, JobEvent
from ..core.states import JobStatus
from .format import JobView, StepClock, block, job_view
from .live import LiveBox, LiveUpdates, assign, hold_all, set_bar
from .thumbs import THUMBNAIL_SIZE, preview_jpeg, thumbnail_png

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..queue import Job

__all__ = ["JobCard"]


def _shown(flag: bool) -> str:
    return "" if flag else "none"


class JobCard(LiveBox):
    """A live card for one ``Job``: ``JobCard(job)``, or ``job.widget()``, or ``job`` alone in a cell."""

    _thumb_of: str | None  # the image path the thumbnail shows
    _preview_of: Image | None  # the preview image on show, if any

    thumbnail_size = Int(THUMBNAIL_SIZE, help="Largest side of the thumbnail, in pixels.")

    @validate("thumbnail_size")
    def _valid_size(self, proposal: dict[str, Any]) -> int:
        if not 16 <= proposal["value"] <= 1024:
            raise TraitError(f"thumbnail_size={proposal['value']!r} is invalid; allowed: 16 to 1024 pixels")
        return int(proposal["value"])

    @observe("thumbnail_size")
    def _size_changed(self, change: dict[str, Any]) -> None:
        if self._live is not None:
            self._thumb_of = self._preview_of = None
            self._live.mark()

    def __init__(self, job: Job, **kwargs: Any) -> None:
        self._job = job
        self._clock = StepClock()
        self._final_sent = job.status.is_final  # a card opened on a finished job starts final
        self._thumb_of: str | None = None
        self._preview_of = None
        view = self._view()
        self.title_html = w.HTML(view.title)
        self.status_html = w.HTML(self._status(view))
        self.progress_bar = w.IntProgress(
            value=view.bar_value,
            max=view.bar_max,
            description=view.bar_text,
            bar_style=view.bar_style,
            style={"description_width": "initial"},
            layout=w.Layout(width="100%"),
        )
        self.error_html = w.HTML(block(view.error), layout=w.Layout(display=_shown(bool(view.error))))
        self.thumbnail = w.Image(
            format="png", layout=w.Layout(display="none", object_fit="contain", margin="0 8px 0 0")
        )
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=not view.can_cancel)
        self.retry_button = w.Button(description="Retry", icon="redo", disabled=not view.can_retry)
        self.cancel_button.on_click(lambda _: self._act(self._job.cancel))
        self.retry_button.on_click(lambda _: self._act(self._job.retry))
        text = w.VBox(
            [self.title_html, self.status_html, self.progress_bar, self.error_html],
            layout=w.Layout(flex="1 1 auto", min_width="0"),
        )
        buttons = w.HBox([self.cancel_button, self.retry_button])
        row = w.HBox([self.thumbnail, text])
        super().__init__(
            [row, buttons], layout=w.Layout(border="1px solid #ddd", padding="6px", max_width="560px"), **kwargs
        )
        self._synced = [  # the widgets whose state changes; held, and sent once more at the end
            self.title_html,
            self.status_html,
            self.progress_bar,
            self.error_html,
            self.error_html.layout,
            self.thumbnail,
            self.thumbnail.layout,
            self.cancel_button,
            self.retry_button,
        ]
        self._containers = [row, text, buttons]
        self._set_thumbnail(view)
        self._live = LiveUpdates(
            job.queue, wants=self._wants, wants_bulk=self._wants_bulk, redraw=self.refresh, interval=self.interval
        )
        self._after_refresh(job.status)

    @property
    def job(self) -> Job:
        return self._job

    def _wants(self, event: JobEvent) -> bool:
        if event.job_id == self._job.id:
            if event.step is not None:
                self._clock.observe(event.step, time.monotonic())
            return True
        # another job moved: ours may have moved up (position events stop after 1,000 places)
        return event.kind is EventKind.STATUS and self._job.status is JobStatus.QUEUED

    def _wants_bulk(self, events: BulkEvents) -> bool:
        """``_wants`` of a bulk edit's status events, at once."""
        return self._job.status is JobStatus.QUEUED or events.has(self._job.id)

    def _view(self) -> JobView:
        job = self._job
        return job_view(
            job.record,
            position=job.position,
            step=job.step,
            now=time.time(),
            seconds_per_step=self._clock.seconds_per_step(),
            notice=self._notice,
            recheck_every=job.queue.lease_policy.heartbeat,
            loading=job.loading,
        )

    @staticmethod
    def _status(view: JobView) -> str:
        if not view.timing:
            return view.state
        return block(f"{view.state}<br><span style='color:#757575'>{view.timing}</span>")

    def refresh(self) -> None:
        """Redraw now from the job's current state (the card also does it by itself)."""
        view = self._view()
        bar = self.progress_bar
        with hold_all(self._synced):
            assign(self.title_html, value=view.title)
            assign(self.status_html, value=self._status(view))
            set_bar(bar, value=view.bar_value, max=view.bar_max, description=view.bar_text, bar_style=view.bar_style)
            assign(self.error_html, value=block(view.error))
            assign(self.error_html.layout, display=_shown(bool(view.error)))
            assign(self.cancel_button, disabled=not view.can_cancel)
            assign(self.retry_button, disabled=not view.can_retry)
            self._set_thumbnail(view)
        self._after_refresh(self._job.status)

    def _set_thumbnail(self, view: JobView) -> None:
        """The stored image once complete; while running, the live preview (a new one is sent only
        when the generator made one, a few times a second at most)."""
        preview = self._job.preview
        if view.image is None and preview is not None:
            if preview is not self._preview_of:
                self._preview_of = preview
                assign(self.thumbnail, format="jpeg", value=preview_jpeg(preview, self.thumbnail_size))
                self._thumb_of = None
            shown = True
        elif view.image != self._thumb_of or self._preview_of is not None:
            self._preview_of = None
            png = thumbnail_png(view.image, self.thumbnail_size) if view.image else None
            self._thumb_of = view.image if png else None
            if png:
                assign(self.thumbnail, format="png", value=png)
            shown = png is not None
        else:
            return
        side = f"{self.thumbnail_size}px"  # small images are scaled up to it, large ones were shrunk
        assign(self.thumbnail.layout, display=_shown(shown), width=side, height=side)

    def _after_refresh(self, status: JobStatus) -> None:
        if status.is_final:
            if not self._final_sent:
                # the whole state once more, so that a notebook saved now (nbclient) holds the final one
                self._final_sent = True
                for widget in [self, *self._containers, *self._synced]:
                    widget.send_state()
            if status is JobStatus.COMPLETE:
                self.live.unsubscribe()  # nothing can happen to a complete job any more
        else:
            self._final_sent = False
            if status in (JobStatus.PROCESSING, JobStatus.PENDING):
                self.live.tick(1.0)  # elapsed time, ETA and the retry countdown move without events

    def close(self) -> None:
        """Stop following the queue and close the card and every widget in it."""
        self._close_all()
