"""The side channel of the soak benchmark: what each worker process did, one line per event.

A process appends to a ledger file of its own; each line is one ``os.write`` on an ``O_APPEND``
descriptor, so a line is either all there or absent, even when the process is killed with SIGKILL
while writing, and nothing sits in a buffer that a SIGKILL would lose. The kinds of line:

- ``open OWNER T``: the queue opened (``T``: the epoch time just before ``ImageQueue(...)``);
- ``batch GROUP ID,ID,...``: a ``submit_batch`` returned these job ids;
- ``start JOB T`` / ``gen JOB T``: the generator was called / returned an image for the job;
- ``stored JOB``: the store accepted this process's ``complete`` outcome for the job;
- ``go T`` / ``done T``: the batch submitter is about to call ``submit_batch`` / it returned.

A process's log goes to its stderr, which the benchmark keeps in a file: ``capture_logs()`` makes
every record (uncaught exceptions included) start with ``@@ LEVEL``, and ``log_records()`` splits
such a file back into records, to count "database is locked" and other errors.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["append", "capture_logs", "entries", "log_records"]

_MARK = "@@ "


def append(path: Path, kind: str, *fields: object) -> None:
    line = " ".join([kind, *(str(f) for f in fields)]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def entries(path: Path, kind: str) -> list[list[str]]:
    """The fields of every ``kind`` line of the ledger, in the order written (none if no file)."""
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines())
    return [row[1:] for row in rows if row and row[0] == kind]


def capture_logs() -> None:
    """Log warnings and errors to stderr, uncaught exceptions (any thread) included, as records."""
    logging.basicConfig(level=logging.WARNING, format=_MARK + "%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("soak")

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught exception", exc_info=(kind, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log.critical("uncaught exception in %s", args.thread, exc_info=args.exc_value)

    sys.excepthook = hook
    threading.excepthook = thread_hook


def log_records(path: Path) -> list[tuple[str, str]]:
    """``(level, text)`` of each record of a captured log; stray stderr text is level ``""``."""
    if not path.exists():
        return []
    records = []
    for chunk in ("\n" + path.read_text(errors="replace")).split("\n" + _MARK):
        if chunk.strip():
            level, _, text = chunk.partition(" ")
            records.append((level, text) if level in logging.getLevelNamesMapping() else ("", chunk))
    return records
