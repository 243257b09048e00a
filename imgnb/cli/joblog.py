"""The worker's job log: one line per state change of the jobs this worker runs.

Events arrive on the queue's loop and carry neither device nor owner. A thread of the log's own
looks a job up once, when a run starts (a database read: never on the loop), keeps the live handle
while it runs (the queue keeps the handle's record current), and writes the lines of that run
from it. Jobs other workers run are left out: every worker of a database sees all its events.
"""

from __future__ import annotations

import logging
import queue as queues
import threading
import time

from ..core.records import EventKind, JobEvent, JobRecord
from ..core.states import JobStatus
from ..queue import ImageQueue, Job
from .worklog import job_line

__all__ = ["JobLog", "Lines"]

log = logging.getLogger("imgnb")


class Lines:
    """Whole lines to stdout, flushed at once, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)


class JobLog:
    """Subscribe ``on_event`` to the queue; ``finish()`` writes what is pending and stops."""

    def __init__(self, q: ImageQueue, out: Lines, *, as_json: bool) -> None:
        self._queue = q
        self._out = out
        self._as_json = as_json
        self._events: queues.SimpleQueue[tuple[float, JobEvent] | None] = queues.SimpleQueue()
        self._running: dict[int, Job] = {}  # touched by the log thread only
        self._thread = threading.Thread(target=self._log, name="imgnb-log", daemon=True)
        self._thread.start()

    def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.STATUS:
            self._events.put((time.time(), event))

    def finish(self) -> None:
        """Write the lines of the events received so far, then stop."""
        self._events.put(None)
        self._thread.join()

    def _log(self) -> None:
        while (item := self._events.get()) is not None:
            t, event = item
            record = self._record_of(event)
            if record is not None:
                line = job_line(
                    t, job_id=event.job_id, status=event.status, error=event.error, record=record, as_json=self._as_json
                )
                self._out.write(line)

    def _record_of(self, event: JobEvent) -> JobRecord | None:
        """The job's record if this worker runs it, else None."""
        job = self._running.get(event.job_id)
        if job is None and event.status is JobStatus.PROCESSING:
            try:
                job = self._queue.get(event.job_id)
            except Exception as exc:  # a database hiccup costs one log line, never the log thread
                log.warning("imgnb worker: job %s started but could not be read for the log: %s", event.job_id, exc)
                return None
            if job.record.owner != self._queue.owner:
                return None  # another worker's job
        if job is None:
            return None
        if event.status is JobStatus.PROCESSING:
            self._running[event.job_id] = job
        else:
            self._running.pop(event.job_id, None)
        return job.record
