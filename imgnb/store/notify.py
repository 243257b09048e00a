"""Announcements of other processes' committed writes, heard in a daemon thread of their own.

``Listener`` (PostgreSQL): every write transaction of ``SQLStore`` sends ``NOTIFY`` with its
revision; the server delivers it at commit to every session that ran ``LISTEN`` on the channel, so a
waiting worker or watcher learns of a change in about a millisecond instead of at its next poll.

``VersionWatcher`` (SQLite, which cannot announce): a connection of its own asks SQLite every
``INTERVAL`` seconds for ``PRAGMA data_version``, which changes when any other connection, of any
process, commits to the file; it costs a look at the WAL index in shared memory, no disk read and
no lock. Then it reads the revision and calls back. A wake-up thus comes within about ``INTERVAL``
instead of the 0.25 s poll, for a few microseconds of work fifty times a second.

A lost session (a server restart, a terminated backend, a network fault, a file moved away) is
opened again with a growing pause between tries, and the callback is then called with ``None``:
announcements sent while nobody listened are lost, so the queue reads the database once to catch
up. Polling goes on beside either in any case; they only make changes arrive sooner.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["APPLICATION_NAME", "INTERVAL", "Listener", "VersionWatcher"]

log = logging.getLogger("imgnb")

APPLICATION_NAME = "imgnb-listen"  # how the listening session shows in pg_stat_activity
WAIT = 0.2  # seconds between looks at whether the listener was stopped
RETRY_FIRST, RETRY_MAX = 0.05, 2.0  # seconds between tries to connect again (doubling)
INTERVAL = 0.02  # seconds between looks at SQLite's data_version


class _Announcer(ABC):
    """One session in a daemon thread, opened again whenever it fails, until ``stop()``."""

    def __init__(self, connect: Callable[[], Any], callback: Callable[[int | None], None]) -> None:
        self._connect = connect
        self._callback = callback
        self._stopped = threading.Event()
        self.connected = threading.Event()  # set while a session is open (tests wait on it)
        self._thread = threading.Thread(target=self._run, name="imgnb-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end: it closes its session within ``WAIT`` seconds and calls back no
        more (not waited for: closing a queue should not take that long)."""
        self._stopped.set()

    def _run(self) -> None:
        pause = RETRY_FIRST
        missed = False  # a session was lost: announcements may have been missed
        while not self._stopped.is_set():
            try:
                self._session(missed)
                pause = RETRY_FIRST
            except Exception as exc:  # any failure of the session: try again, never die
                if self._stopped.is_set():
                    return
                log.info("imgnb: lost the session that hears other processes' writes (%s); reconnecting", exc)
                self._stopped.wait(pause)
                pause = min(2 * pause, RETRY_MAX)
            finally:
                self.connected.clear()
            missed = True

    @abstractmethod
    def _session(self, missed: bool) -> None:
        """Open a session, call back ``None`` first when ``missed``, then for each write heard,
        until stopped; raise when the session fails."""


class Listener(_Announcer):
    """PostgreSQL's ``LISTEN`` on ``channel``. ``connect`` opens a psycopg connection; ``ignore``
    holds the backend ids whose announcements are not passed on (the store's own sessions: their
    writes are known to their caller)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        callback: Callable[[int | None], None],
        *,
        ignore: Collection[int] = (),
    ) -> None:
        self._channel = channel
        self._ignore = ignore
        super().__init__(connect, callback)

    def _session(self, missed: bool) -> None:
        conn = self._connect()
        try:
            conn.autocommit = True
            conn.execute(f"SET application_name = '{APPLICATION_NAME}'")
            conn.execute(f"LISTEN {self._channel}")
            self.connected.set()
            if missed:
                self._callback(None)
            while not self._stopped.is_set():
                for note in conn.notifies(timeout=WAIT):
                    if note.pid not in self._ignore and not self._stopped.is_set():
                        self._callback(_revision(note.payload))
        finally:
            conn.close()


class VersionWatcher(_Announcer):
    """SQLite's ``PRAGMA data_version``, looked at every ``interval`` seconds on a ``sqlite3``
    connection of its own; once it changed, ``revision_sql`` reads a revision, and the callback
    gets it when it moved too (a work-only watcher reads the last work write's, which most
    commits leave alone). Writes of the store's own connections are heard too (SQLite cannot
    tell them apart): the callback's caller drops the revisions it knows.

    The first session is opened before the constructor returns, so every write committed after
    it is heard (a session opened later by the thread might miss the writes just before it)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        revision_sql: str,
        callback: Callable[[int | None], None],
        *,
        interval: float = INTERVAL,
    ) -> None:
        self._revision_sql = revision_sql
        self._interval = interval
        self._first: tuple[sqlite3.Connection, int, int | None] | None = None
        try:
            conn = connect()
            self._first = (conn, conn.execute("PRAGMA data_version").fetchone()[0], self._read(conn))
        except Exception as exc:  # the thread tries again, and then calls back None
            log.info("imgnb: cannot watch the SQLite file for other processes' writes yet (%s)", exc)
        super().__init__(connect, callback)

    def _session(self, missed: bool) -> None:
        first, self._first = self._first, None
        if first is None:
            conn = self._connect()
            seen, revision = conn.execute("PRAGMA data_version").fetchone()[0], self._read(conn)
            missed = True  # writes just before this session opened went unheard
        else:
            conn, seen, revision = first
        try:
            self.connected.set()
            if missed:
                self._callback(None)
            while not self._stopped.wait(self._interval):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen, last, revision = version, revision, self._read(conn)
                    if (revision != last or revision is None) and not self._stopped.is_set():
                        self._callback(revision)
        finally:
            conn.close()

    def _read(self, conn: sqlite3.Connection) -> int | None:
        row = conn.execute(self._revision_sql).fetchone()
        return int(row[0]) if row is not None else None


def _revision(payload: str) -> int | None:
    """The revision an announcement carries; None for one imgnb did not send (anyone may NOTIFY)."""
    try:
        return int(payload)
    except ValueError:
        return None
