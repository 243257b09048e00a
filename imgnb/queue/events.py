"""Fan-out of job events to subscribers, always on the queue's event loop.

Callbacks run on the loop thread (the kernel's, in Jupyter), so a widget callback may touch widget
state directly. A callback that raises is logged and kept; it cannot stop the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from ..core.records import JobEvent
from .loop import QueueLoop

__all__ = ["EventBus", "Subscriber"]

log = logging.getLogger("imgnb")
Subscriber = Callable[[JobEvent], object]


class EventBus:
    def __init__(self, loop: QueueLoop) -> None:
        self._loop = loop
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def publish(self, events: Sequence[JobEvent]) -> None:
        if events and self._subscribers:
            self._loop.call(self._deliver, list(events))

    def _deliver(self, events: list[JobEvent]) -> None:
        for callback in self._subscribers:
            for event in events:
                try:
                    callback(event)
                except Exception:
                    log.exception("imgnb: event subscriber %r failed on %r", callback, event)
