"""Pipeline factories for the ``imgnb worker`` tests: one per way a factory can be wrong, and one
without a ``device`` parameter."""

from __future__ import annotations

from typing import Any

from imgnb.testing import FakeGenerator

NOT_CALLABLE = 42


def broken() -> Any:
    raise RuntimeError("no weights here\n(its second line)")


def not_a_pipeline() -> Any:
    return FakeGenerator()  # a generator the queue could run, but not a diffusers pipeline


def tiny_without_device() -> Any:
    from imgnb.gen.tiny import tiny_pipeline

    return tiny_pipeline()  # on the CPU, where it is used as it is


def tiny_sdxl(device: str) -> Any:
    """A second model for ``--model``: another pipeline class than the default tiny one."""
    from imgnb.gen.tiny import tiny_pipeline

    return tiny_pipeline("sdxl", device=device)
