"""Who holds a job or a device lock, and whether that holder is dead. Pure: no I/O.

An owner is the string ``host:pid:start:token``: the host name, the process id, the process's start
time (centiseconds since the epoch, so that a pid the system hands out again is not mistaken for
the process that died) and a random token per queue. A queue on the same host can tell at once
whether an owner's process still lives; a queue on another host cannot, and waits for the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Owner", "dead_on_host"]


@dataclass(frozen=True, kw_only=True)
class Owner:
    host: str
    pid: int
    started: int  # the process's start time, in centiseconds since the epoch
    token: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}:{self.token}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner a string names, or None for one this version did not write."""
        parts = text.rsplit(":", 3)  # a host name may itself hold a ':' (an IPv6 address)
        if len(parts) != 4 or not parts[0]:
            return None
        host, pid, started, token = parts
        if not (pid.isdigit() and started.isdigit()):
            return None
        return cls(host=host, pid=int(pid), started=int(started), token=token)


def dead_on_host(holders: Iterable[str], *, host: str, alive: Callable[[int, int], bool]) -> list[str]:
    """The holders on ``host`` whose process is gone. ``alive(pid, started)`` says whether a process
    with that pid and start time runs now. Holders on other hosts are never judged here."""
    dead = []
    for text in holders:
        owner = Owner.parse(text)
        if owner is not None and owner.host == host and not alive(owner.pid, owner.started):
            dead.append(text)
    return dead
