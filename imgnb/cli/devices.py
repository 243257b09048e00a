"""Which devices ``imgnb worker`` may run on, checked with torch before any job is claimed.

A device that does not exist must stop the worker at start-up with a clear line, not fail every job
it claims later. The checks ask torch whether a backend is available and how many devices it has
(for CUDA, without creating a context on any GPU). Names are normalised (``cuda`` -> ``cuda:0``)
because the device lock is per name: ``cuda`` and ``cuda:0`` must not be two locks on one GPU, and a
notebook's pipeline on the first GPU reports ``cuda:0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .failures import BadArgument

__all__ = ["check_devices", "default_device", "same_device"]


def default_device() -> str:
    """``cuda:0`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_devices(specs: Sequence[str]) -> list[str]:
    """The normalised names of ``specs``; raises ``BadArgument`` for one that does not exist here
    or is given twice."""
    devices: list[str] = []
    for spec in specs:
        device = _check_device(spec)
        if device in devices:
            raise BadArgument(f"--device {spec!r} is given twice (as {device}); one worker runs each device once")
        devices.append(device)
    return devices


def _check_device(spec: str) -> str:
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise BadArgument(f"--device {spec!r} is not a device name torch knows; e.g. cuda:0, cpu, mps") from None
    if device.type == "cpu":
        return "cpu"
    backend: Any = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu...
    if backend is None or not callable(getattr(backend, "is_available", None)):
        raise BadArgument(f"--device {spec!r}: imgnb runs jobs on cpu, cuda, mps, xpu and similar accelerators")
    if not backend.is_available():
        raise BadArgument(f"--device {spec!r}: torch sees no {device.type} device on this machine")
    count = int(backend.device_count()) if hasattr(backend, "device_count") else 1
    index = device.index or 0
    if index >= count:
        have = f"{device.type}:0" if count == 1 else f"{device.type}:0 to {device.type}:{count - 1}"
        raise BadArgument(f"--device {spec!r} does not exist: this machine has {have}")
    return f"{device.type}:{index}"


def same_device(asked: str, actual: str) -> bool:
    """Whether ``actual`` (where a pipeline runs) is the device ``asked`` for; no index means 0."""
    asked_type, _, asked_index = asked.partition(":")
    actual_type, _, actual_index = actual.partition(":")
    return asked_type == actual_type and (asked_index or "0") == (actual_index or "0")
