"""Keeping a widget in step with a queue: subscribe, coalesce, redraw on the queue's loop.

Queue events come fast (one per generation step, a thousand position events when the head of a
long queue moves), and every widget message costs the kernel and the browser. ``LiveUpdates``
turns any number of events into at most one redraw per ``interval`` (0.1 s: ten per second),
always on the queue's event loop, which in Jupyter is the kernel's: widgets are touched only there.

``LiveBox`` is the base of the card and the board: the redraw rate, the buttons' error notice and
closing every widget inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from traitlets import Float, TraitError, observe, validate

from ..core.bulk_events import BulkEvents
from ..core.records import JobEvent
from ..errors import ImgnbError

if TYPE_CHECKING:
    from ..queue import ImageQueue
    from ..queue.loop import QueueLoop

__all__ = ["LiveBox", "LiveUpdates", "assign", "close_tree", "hold_all", "set_bar", "try_action"]

log = logging.getLogger("imgnb")


def try_action(action: Callable[[], object]) -> str | None:
    """Run what a button asks for; return the message to show on the widget if imgnb refused it
    (an illegal transition, a closed queue), since an exception in a button callback is lost."""
    try:
        action()
    except ImgnbError as exc:
        return str(exc)
    return None


class LiveUpdates:
    """Calls ``redraw()`` on the queue's loop at most once per ``interval`` seconds after ``mark()``.

    ``wants(event)`` runs for every event of the queue and must be cheap: it says whether the
    event may change what the widget shows. ``wants_bulk(events)`` says it at once for the status
    events of a bulk edit (``BulkEvents``: 100,000 jobs cancelled), which are then not made one by
    one; without it, ``wants`` looks at each. The first mark after a quiet spell redraws at once;
    marks within ``interval`` of the last redraw wait for its end, so a burst costs one redraw.
    """

    def __init__(
        self,
        queue: ImageQueue,
        *,
        wants: Callable[[JobEvent], bool],
        redraw: Callable[[], None],
        interval: float,
        wants_bulk: Callable[[BulkEvents], bool] | None = None,
    ) -> None:
        self._qloop: QueueLoop = queue.loop  # the kernel's loop in Jupyter, the queue's own thread elsewhere
        self._wants = wants
        self._wants_bulk = wants_bulk
        self._redraw = redraw
        self.interval = interval
        self._due: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._last = float("-inf")
        self._stopped = False
        self.events = 0  # events this widget wanted (for tests and measurements)
        self.redraws = 0
        self._unsubscribe = queue.subscribe(self._on_events, batches=True)
        self._unhook = self._flush_after_each_cell()

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._qloop.loop

    def _on_events(self, events: Sequence[JobEvent]) -> None:
        if isinstance(events, BulkEvents) and self._wants_bulk is not None:
            wanted = len(events) if self._wants_bulk(events) else 0
        else:
            wanted = sum(1 for event in events if self._wants(event))
        if wanted:
            self.events += wanted
            self.mark()

    def mark(self) -> None:
        """Something changed: redraw soon (from any thread)."""
        self._qloop.call(self._schedule)

    def tick(self, seconds: float) -> None:
        """Redraw again in ``seconds`` even without events (clocks), unless a tick is already set."""
        self._qloop.call(self._set_tick, seconds)

    def _set_tick(self, seconds: float) -> None:
        if self._tick is None and not self._stopped and not self._loop.is_closed():
            self._tick = self._loop.call_later(seconds, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self._schedule()

    def _schedule(self) -> None:
        if self._due is not None or self._stopped or self._loop.is_closed():
            return
        delay = max(0.0, self._last + self.interval - self._loop.time())
        self._due = self._loop.call_later(delay, self._run)

    def _run(self) -> None:
        self._due = None
        if self._stopped:
            return
        self._last = self._loop.time()
        self.redraws += 1
        try:
            # In a fresh context: ipykernel sends a widget message on behalf of the request whose
            # context the code runs in, and a redraw woken by a worker task runs in the context of
            # the cell that opened the queue. nbclient (nbconvert --execute, papermill) records only
            # the cell running now, so a saved notebook would keep widgets as they were. In no
            # context, ipykernel falls back to the latest request.
            contextvars.Context().run(self._redraw)
        except Exception:  # a broken redraw must not stop the next ones, nor the loop
            log.exception("imgnb: widget redraw failed")

    def _flush_after_each_cell(self) -> Callable[[], None]:
        """In IPython, draw what is pending when a cell ends, on behalf of that cell: the last job of
        a cell that waits for its jobs completes a moment before its redraw is due, and nbclient
        would not see a redraw sent once the cell is over. Returns the function that unhooks it."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return lambda: None

        def flush(result: object = None) -> None:
            # on the loop's thread only, where redraws run (the kernel's loop; not a terminal IPython's)
            if self._due is not None and self._qloop.on_loop_thread():
                self._due.cancel()
                self._run()

        shell.events.register("post_run_cell", flush)
        return lambda: shell.events.unregister("post_run_cell", flush)

    @property
    def pending(self) -> bool:
        """True while a redraw is scheduled."""
        return self._due is not None

    def unsubscribe(self) -> None:
        """Follow the queue's events no more; ``mark()`` still redraws."""
        self._unsubscribe()

    def stop(self) -> None:
        """Unsubscribe and drop any scheduled redraw (for ``close()``)."""
        self._stopped = True
        self._unsubscribe()
        self._unhook()
        self._unhook = lambda: None
        for handle in (self._due, self._tick):
            if handle is not None:
                self._qloop.call(handle.cancel)
        self._due = self._tick = None


def assign(widget: Any, **values: Any) -> None:
    """Set only the traits whose value differs: an unchanged trait sends nothing."""
    for name, value in values.items():
        if getattr(widget, name) != value:
            setattr(widget, name, value)


@contextlib.contextmanager
def hold_all(widgets: Iterable[Any]) -> Iterator[None]:
    """``hold_sync()`` on several widgets: each sends at most one message for the whole burst."""
    with contextlib.ExitStack() as stack:
        for widget in widgets:
            stack.enter_context(widget.hold_sync())
        yield


def close_tree(widget: Any) -> None:
    """Close a widget, its children, and their layouts and styles (each one is a model too)."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if part is not None and hasattr(part, "close"):
            part.close()
    widget.close()


def set_bar(bar: w.IntProgress, *, value: int, max: int, description: str, bar_style: str) -> None:
    """Move a progress bar, keeping value <= max at every step (or the trait clamps the value)."""
    if max >= bar.value:
        assign(bar, max=max, value=value)
    else:
        assign(bar, value=value, max=max)
    assign(bar, description=description, bar_style=bar_style)


class LiveBox(w.VBox):  # type: ignore[misc]
    """A box that follows a queue: subclasses set ``self._live`` and implement ``refresh()``."""

    interval = Float(0.1, help="Least seconds between two redraws (0.1: ten per second at most).")

    _live: LiveUpdates | None = None  # None while the constructor runs
    _notice: str | None = None  # why the last button press was refused, shown until the next one

    @validate("interval")
    def _valid_interval(self, proposal: dict[str, Any]) -> float:
        if not proposal["value"] > 0:
            raise TraitError(f"interval={proposal['value']!r} is invalid; allowed: seconds > 0")
        return float(proposal["value"])

    @observe("interval")
    def _interval_changed(self, change: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.interval = self.interval
            self._live.mark()

    @property
    def live(self) -> LiveUpdates:
        """How this widget follows its queue: events wanted, redraws made, a redraw pending."""
        assert self._live is not None, "used before the constructor finished"
        return self._live

    def _act(self, action: Callable[[], object]) -> None:
        """A button's action: show why imgnb refused it, if it did, and redraw."""
        self._notice = try_action(action)
        if self._live is not None:
            self._live.mark()

    def _close_all(self, extra: Iterable[Any] = ()) -> None:
        """Stop following the queue and close this box, every widget in it and ``extra`` ones."""
        if self._live is not None:
            self._live.stop()
        children, layout = self.children, self.layout
        super().close()
        layout.close()
        for widget in [*children, *extra]:
            close_tree(widget)
