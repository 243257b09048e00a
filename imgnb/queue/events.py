"""Fan-out of job events to subscribers.

The queue calls ``deliver`` on its loop thread only (the kernel's, in Jupyter), so a widget callback
may touch widget state directly. A callback that raises is logged and kept; it cannot stop the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from ..core.records import JobEvent

__all__ = ["EventBus", "Subscriber"]

log = logging.getLogger("imgnb")
Subscriber = Callable[[JobEvent], object]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def __len__(self) -> int:
        return len(self._subscribers)

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Call every subscriber with each event, in order (on the queue's loop thread)."""
        for callback in self._subscribers:
            for event in events:
                try:
                    callback(event)
                except Exception:
                    log.exception("imgnb: event subscriber %r failed on %r", callback, event)
