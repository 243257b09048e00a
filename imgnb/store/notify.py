"""``Listener``: PostgreSQL's announcements of committed writes, heard on a connection of its own.

Every write transaction of ``SQLStore`` on PostgreSQL sends ``NOTIFY`` with its revision; the server
delivers it at commit, to every session that ran ``LISTEN`` on the channel. A listener holds one
such session in a daemon thread and calls back for each announcement, so a waiting worker or
watcher learns of a change in about a millisecond instead of at its next poll.

A dropped connection (a server restart, a terminated backend, a network fault) is opened again
with a growing pause between tries, and the callback is then called with ``None``: announcements
sent while nobody listened are lost, so the queue reads the database once to catch up. Polling
goes on beside the listener in any case; a listener only makes changes arrive sooner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["APPLICATION_NAME", "Listener"]

log = logging.getLogger("imgnb")

APPLICATION_NAME = "imgnb-listen"  # how the listening session shows in pg_stat_activity
WAIT = 0.2  # seconds between looks at whether the listener was stopped
RETRY_FIRST, RETRY_MAX = 0.05, 2.0  # seconds between tries to connect again (doubling)


class Listener:
    """One ``LISTEN`` session in a daemon thread, until ``stop()``.

    ``connect`` opens a psycopg connection; ``ignore`` holds the backend ids whose announcements
    are not passed on (the store's own sessions: their writes are known to their caller).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        callback: Callable[[int | None], None],
        *,
        ignore: Collection[int] = (),
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._callback = callback
        self._ignore = ignore
        self._stopped = threading.Event()
        self.connected = threading.Event()  # set while a LISTEN session is open (tests wait on it)
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
                self._listen(missed)
                pause = RETRY_FIRST
            except Exception as exc:  # any failure of the session: try again, never die
                if self._stopped.is_set():
                    return
                log.info("imgnb: lost the PostgreSQL notification session (%s); reconnecting", exc)
                self._stopped.wait(pause)
                pause = min(2 * pause, RETRY_MAX)
            finally:
                self.connected.clear()
            missed = True

    def _listen(self, missed: bool) -> None:
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


def _revision(payload: str) -> int | None:
    """The revision an announcement carries; None for one imgnb did not send (anyone may NOTIFY)."""
    try:
        return int(payload)
    except ValueError:
        return None
