"""Stopping on SIGTERM or Ctrl-C: the first signal asks for a clean stop, a second one exits at once.

A supervisor stops a worker with SIGTERM and, when that takes too long, sends another (or SIGKILL);
a person presses Ctrl-C twice. The clean stop runs in the main program; the handler itself only
writes one byte to a pipe (``wait`` reads it) or, the second time, one line to stderr and
``os._exit(128 + signal)``, both safe whatever the main thread was doing when the signal came.
The main thread must wait only in ways a signal interrupts (a pipe read, a thread join), never in
a long C call, so that the second signal is acted on at once.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["StopSignals"]


class StopSignals:
    """SIGTERM and SIGINT: the first asks for a clean stop (``wait`` returns it), a second exits at
    once. The handler only writes to a pipe or exits, both safe whatever the main thread was doing."""

    def __init__(self, command: str) -> None:
        self._command = command
        self._read, self._write = os.pipe()
        self._received = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._received += 1
        if self._received > 1:
            message = (
                f"{self._command}: second {signal.Signals(signum).name}: exiting at once; jobs still held go back "
                "to the queue when their lease runs out\n"
            )
            os.write(sys.stderr.fileno(), message.encode())
            os._exit(128 + signum)
        os.write(self._write, bytes([signum]))

    def wait(self) -> int:
        """Block until the first signal; return its number."""
        return os.read(self._read, 1)[0]
