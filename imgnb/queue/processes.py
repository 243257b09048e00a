"""This process's owner identity, and whether another process on this host still lives (psutil)."""

from __future__ import annotations

import os
import socket
import uuid

import psutil

from ..core.owners import Owner

__all__ = ["HOST_ENV", "alive", "host_name", "new_owner"]

HOST_ENV = "IMGNB_HOST"
"""Overrides the host name in owner identities and device lock names: for testing several machines
on one, or for a host whose name is not unique."""


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _started(pid: int) -> int:
    """The start time of process ``pid`` in centiseconds since the epoch (psutil errors propagate).
    A zombie (exited, not yet reaped by its parent) counts as gone."""
    process = psutil.Process(pid)
    if process.status() == psutil.STATUS_ZOMBIE:
        raise psutil.ZombieProcess(pid)
    created: float = process.create_time()
    return round(created * 100)


def alive(pid: int, started: int) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started`` (not a reused pid)."""
    try:
        return abs(_started(pid) - started) <= 1  # a centisecond of rounding
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return False
    except psutil.AccessDenied:  # it exists; we may not look at it, so we do not judge it dead
        return True


def new_owner() -> Owner:
    """A fresh identity for one queue of this process."""
    pid = os.getpid()
    return Owner(host=host_name(), pid=pid, started=_started(pid), token=uuid.uuid4().hex[:8])
