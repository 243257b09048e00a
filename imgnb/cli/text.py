"""Small text pieces both commands print: times, databases, hosts and devices. Pure: no I/O.

An owner is ``host:pid:...`` (``ImageQueue.owner``) and a job's stored device is its lock name,
``host/device``; people read them as a host and a device, so both commands split them the same way.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

__all__ = ["database_label", "device_label", "host_of", "one_line", "timestamp"]


def timestamp(t: float) -> str:
    """ISO 8601 in local time with its UTC offset, to the millisecond: sortable and unambiguous."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def database_label(url: sa.URL) -> str:
    """An SQLite database by its file path; a server by its URL, the password hidden."""
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


def host_of(owner: str | None) -> str | None:
    """The host part of an owner (``host:pid:...``), or None when the job has no owner."""
    return owner.partition(":")[0] if owner else None


def device_label(device: str | None, owner: str | None) -> str | None:
    """A stored device (the lock name ``host/cuda:0``) without its owner's host: ``cuda:0``."""
    host = host_of(owner)
    if device and host and device.startswith(f"{host}/"):
        return device[len(host) + 1 :]
    return device


def one_line(text: str) -> str:
    """A message on one line (collapsed whitespace): a log line or an error must not span several."""
    return " ".join(text.split())
