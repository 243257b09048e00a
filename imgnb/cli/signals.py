"""Stopping on SIGTERM or Ctrl-C: the first signal asks for a clean stop, a second one exits at once.

A supervisor stops a worker with SIGTERM and, when that takes too long, sends another (or SIGKILL);
a person presses Ctrl-C twice. The clean stop runs in the main program; the handler only records
the first signal or, the second time, writes one line to stderr and calls ``os._exit(128 + signal)``.

Python runs signal handlers in the main thread, between two bytecodes; but the kernel delivers a
signal to whichever thread it picks (the queue has several, torch more), and then a main thread
blocked in a wait that only another thread can end (a pipe read, a thread join) would never get to
run the handler. So the main thread waits in slices of ``TICK`` seconds and the handler runs at the
latest at the end of the current slice, whatever the other threads are doing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

__all__ = ["TICK", "StopSignals"]

TICK = 0.1  # seconds: the longest a signal waits for the main thread


class StopSignals:
    """Installs the handlers for SIGTERM and SIGINT (from the main thread)."""

    def __init__(self, command: str) -> None:
        self._command = command
        self._first: int | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._first is None:
            self._first = signum
            return
        message = (
            f"{self._command}: second {signal.Signals(signum).name}: exiting at once; jobs still held go back "
            "to the queue when their lease runs out\n"
        )
        os.write(sys.stderr.fileno(), message.encode())
        os._exit(128 + signum)

    def wait(self) -> int:
        """Block until the first signal; return its number."""
        while self._first is None:
            time.sleep(TICK)
        return self._first

    def join(self, thread: threading.Thread) -> None:
        """Wait for ``thread`` to end; a second signal meanwhile exits at once."""
        while thread.is_alive():
            thread.join(TICK)
