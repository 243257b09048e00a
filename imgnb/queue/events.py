"""Fan-out of job events to subscribers.

The queue calls ``deliver`` on its loop thread only (the kernel's, in Jupyter), so a widget callback
may touch widget state directly. A callback that raises is logged and kept; it cannot stop the queue.
A subscriber takes events one by one, or (``batches=True``) each delivered batch at once: a widget
that redraws once a burst need not look at each of a bulk edit's 100,000 events (``BulkEvents``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..core.records import JobEvent

__all__ = ["BatchSubscriber", "EventBus", "Subscriber"]

log = logging.getLogger("imgnb")
Subscriber = Callable[[JobEvent], object]
BatchSubscriber = Callable[[Sequence[JobEvent]], object]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[Callable[[Any], object], bool]] = []  # (callback, takes batches)
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber | BatchSubscriber, *, batches: bool = False) -> Callable[[], None]:
        entry = (callback, bool(batches))
        with self._lock:
            self._subscribers = [*self._subscribers, entry]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not entry]

        return unsubscribe

    def __len__(self) -> int:
        return len(self._subscribers)

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Call every subscriber with each event, in order, or with the whole batch (on the queue's
        loop thread)."""
        if not events:
            return
        for callback, batches in self._subscribers:
            if batches:
                try:
                    callback(events)
                except Exception:
                    log.exception("imgnb: event subscriber %r failed on %r", callback, events)
                continue
            for event in events:
                try:
                    callback(event)
                except Exception:
                    log.exception("imgnb: event subscriber %r failed on %r", callback, event)
