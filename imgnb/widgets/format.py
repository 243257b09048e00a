"""What the widgets say about a job or a queue, as plain functions of plain values. Pure: no I/O.

``job_view`` turns a stored record (plus the live position and step) into every string and flag a
``JobCard`` shows; the card only copies the fields that changed onto its widgets. The static HTML
and text fallbacks use the same functions with ``now=None``, which leaves out every clock reading,
so the output of a finished job is the same each time it is drawn (nbval compares it).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..core.describe import attempt_text, ordinal, queue_place, short
from ..core.records import DeviceState, JobRecord, ModelLoad
from ..core.states import JobStatus

__all__ = [
    "JobView",
    "QueuedRow",
    "StepClock",
    "block",
    "counts_html",
    "devices_html",
    "duration",
    "job_view",
    "loading_text",
    "model_label",
    "more_html",
    "queued_html",
]

STATUS_COLOURS = {
    JobStatus.QUEUED: "#616161",
    JobStatus.PENDING: "#ef6c00",
    JobStatus.PROCESSING: "#1565c0",
    JobStatus.COMPLETE: "#2e7d32",
    JobStatus.ERROR: "#c62828",
    JobStatus.CANCELLED: "#8d6e63",
}
COUNT_ORDER = ("processing", "queued", "pending", "complete", "error", "cancelled")


def block(markup: str) -> str:
    """Lines at text spacing: an HTML widget spaces lines as tall as a button (28 px) otherwise."""
    return f'<div style="line-height:1.4">{markup}</div>' if markup else ""


def duration(seconds: float) -> str:
    """Whole seconds, so that a clock shown while a job runs changes at most once a second."""
    s = round(max(0.0, seconds))
    if s < 1:
        return "<1 s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class StepClock:
    """Seconds per generation step, measured from the steps seen (monotonic times), for an ETA.

    A step number lower than the last one seen means a new run started (a retry): it starts over.
    """

    def __init__(self) -> None:
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def observe(self, step: int, at: float) -> None:
        if self._last is not None and step < self._last[0]:
            self._first = None
        if self._first is None:
            self._first = (step, at)
        self._last = (step, at)

    def seconds_per_step(self) -> float | None:
        """The mean over the steps seen so far; None until two different steps were seen."""
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return None
        return (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])


@dataclass(frozen=True, kw_only=True)
class JobView:
    """Everything a job card shows. HTML fields are escaped; ``image`` is a file path."""

    title: str
    state: str
    timing: str  # clocks (elapsed, ETA, next retry); empty without ``now``
    error: str
    bar_value: int
    bar_max: int
    bar_text: str
    bar_style: str  # '', 'info', 'success', 'warning' or 'danger'
    can_cancel: bool
    can_retry: bool
    image: str | None


def model_label(model: str | None) -> str:
    """A job's model, in grey, with the separator before it; nothing for an unnamed one."""
    return f" · <span style='color:#757575'>{html.escape(short(model, 40))}</span>" if model else ""


def loading_text(load: ModelLoad, now: float | None) -> str:
    """'loading sdxl on cuda:0', and for how long when ``now`` is given (escaped HTML)."""
    text = f"loading {html.escape(load.model)} on {html.escape(load.device)}"
    return f"{text} · {duration(now - load.since)}" if now is not None else text


def _badge(status: JobStatus) -> str:
    return f'<b style="color:{STATUS_COLOURS[status]}">{status.value}</b>'


def _state(record: JobRecord, position: int | None, loading: ModelLoad | None) -> str:
    s, details = record.status, []
    if s is JobStatus.QUEUED and position is not None:
        details.append(queue_place(position))
    elif s is JobStatus.PROCESSING:
        if loading is not None:
            details.append(loading_text(loading, None))
        if record.max_retries:
            details.append(attempt_text(max(record.attempts, 1), record.max_retries))
        if record.cancel_requested:
            details.append("stopping (cancel asked)")
    elif s is JobStatus.PENDING:
        details.append(f"{attempt_text(record.attempts, record.max_retries)} failed")
    elif s is JobStatus.COMPLETE and record.attempts > 1:
        details.append(f"after {record.attempts} attempts")
    elif s is JobStatus.ERROR and record.attempts:
        details.append(f"after {record.attempts} attempt{'s' if record.attempts > 1 else ''}")
    return " · ".join([_badge(s), *details])


def _timing(
    record: JobRecord,
    step: tuple[int, int] | None,
    now: float | None,
    per_step: float | None,
    loading: ModelLoad | None,
) -> str:
    if now is None:
        return ""
    s = record.status
    if s is JobStatus.PROCESSING and record.started_at is not None:
        parts = [f"elapsed {duration(now - record.started_at)}"]
        if loading is not None:
            parts.append(f"loading for {duration(now - loading.since)}")
        elif step is not None and step[0] >= 1:
            mean = per_step if per_step is not None else (now - record.started_at) / step[0]
            parts.append(f"about {duration(mean * (step[1] - step[0]))} left")
        elif 0 < record.progress < 1:  # running in another process: only its stored share is known
            elapsed = now - record.started_at
            parts.append(f"about {duration(elapsed / record.progress * (1 - record.progress))} left")
        return " · ".join(parts)
    if s is JobStatus.PENDING:
        at = datetime.fromtimestamp(record.run_at).strftime("%H:%M:%S")
        wait = record.run_at - now
        return f"next attempt at {at}, " + (f"in {duration(wait)}" if wait >= 0.5 else "due now")
    if s.is_final and record.started_at is not None and record.finished_at is not None:
        return f"took {duration(record.finished_at - record.started_at)}"
    return ""


def _bar(record: JobRecord, step: tuple[int, int] | None, loading: bool) -> tuple[int, int, str, str]:
    s, share = record.status, record.progress
    if s is JobStatus.PROCESSING:
        if loading:
            return 0, 1, "loading model", "info"
        if step is not None:
            return step[0], step[1], f"step {step[0]}/{step[1]}", "info"
        return round(share * 100), 100, f"{share:.0%}", "info"
    if s is JobStatus.COMPLETE:
        return 1, 1, "done", "success"
    if s is JobStatus.ERROR:
        return 1, 1, "failed", "danger"
    if s is JobStatus.CANCELLED:
        return round(share * 100), 100, "cancelled", "warning"
    return 0, 1, "", ""


def _error(record: JobRecord, notice: str | None) -> str:
    lines = [f'<span style="color:#c62828">{html.escape(notice)}</span>'] if notice else []
    if record.error and record.status in (JobStatus.ERROR, JobStatus.PENDING):
        lines.append(f'<span style="color:#c62828">{html.escape(record.error)}</span>')
    elif record.error and record.status is JobStatus.PROCESSING:
        lines.append(f'<span style="color:#757575">last attempt: {html.escape(record.error)}</span>')
    return "<br>".join(lines)


def job_view(
    record: JobRecord,
    *,
    position: int | None,
    step: tuple[int, int] | None,
    now: float | None = None,
    seconds_per_step: float | None = None,
    notice: str | None = None,
    recheck_every: float | None = None,
    loading: ModelLoad | None = None,
) -> JobView:
    """What to show for a job. ``now`` (epoch seconds) adds the clocks; ``notice`` is shown above
    the job's own error (a button whose action failed says why there); ``loading`` is the model load
    a running job waits for.

    A running job whose lease has run out (its worker died or hangs) is shown as such, with no ETA
    and a still bar: it is not running, whatever its status says until a queue re-queues it, which
    one looking every ``recheck_every`` seconds does by then."""
    s = record.status
    loading = loading if s is JobStatus.PROCESSING else None
    value, top, text, style = _bar(record, step, loading is not None)
    state, timing = _state(record, position, loading), _timing(record, step, now, seconds_per_step, loading)
    if s is JobStatus.PROCESSING and now is not None and record.lease_until is not None and now > record.lease_until:
        when = f"within {duration(recheck_every)}" if recheck_every is not None else "soon"
        state = f"{_badge(s)} · worker stopped responding · re-queued at its place {when}"
        timing, text, style = "", "stalled", "warning"
    return JobView(
        title=f"<b>Job {record.id}</b>{model_label(record.model)} · {html.escape(short(record.prompt, 80))}",
        state=state,
        timing=timing,
        error=_error(record, notice),
        bar_value=value,
        bar_max=top,
        bar_text=text,
        bar_style=style,
        can_cancel=s in (JobStatus.QUEUED, JobStatus.PENDING)
        or (s is JobStatus.PROCESSING and not record.cancel_requested),
        can_retry=s in (JobStatus.ERROR, JobStatus.CANCELLED),
        image=record.images[0] if s is JobStatus.COMPLETE and record.images else None,
    )


def counts_html(counts: Mapping[str, int]) -> str:
    return " · ".join(f"<b>{counts.get(name, 0):,}</b> {name}" for name in COUNT_ORDER)


@dataclass(frozen=True, kw_only=True)
class QueuedRow:
    position: int
    job_id: int
    prompt: str
    priority: str
    model: str | None = None


def more_html(more: int) -> str:
    """How many jobs wait behind those listed."""
    return f"<div style='color:#757575'>+{more:,} more</div>" if more > 0 else ""


def queued_html(rows: Sequence[QueuedRow], more: int) -> str:
    """The head of the queue as a small table, and how many jobs wait behind it."""
    if not rows:
        return '<i style="color:#757575">nothing queued</i>'
    cells = "".join(
        f"<tr><td style='text-align:right;padding-right:8px'>{ordinal(r.position)}</td>"
        f"<td style='padding-right:8px'>#{r.job_id}</td><td>{html.escape(short(r.prompt))}</td>"
        f"<td style='color:#757575;padding-left:8px'>{html.escape(short(r.model or '', 40))}</td>"
        f"<td style='color:#757575;padding-left:8px'>{'' if r.priority == 'normal' else r.priority}</td></tr>"
        for r in rows
    )
    tail = more_html(more)
    return block(f"<table style='border-collapse:collapse'>{cells}</table>{tail}")


def devices_html(states: Sequence[DeviceState], now: float | None) -> str:
    """One line per device: what it is loading (and for how long, given ``now``), the models it
    holds, and how many loads it made and the time they took."""
    lines = []
    for state in states:
        parts = [f"<b>{html.escape(state.device)}</b>"]
        if state.loading is not None:
            parts.append(loading_text(state.loading, now))
        held = ", ".join(html.escape(name) for name in state.loaded)
        parts.append(f"holds {held}" if held else "holds no model")
        if state.loads:
            parts.append(f"{state.loads} load{'s' if state.loads > 1 else ''} in {duration(state.load_seconds)}")
        lines.append(" · ".join(parts))
    return block("<br>".join(lines))
