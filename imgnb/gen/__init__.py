"""Generators the queue runs: the protocol, the diffusers adapter and a tiny offline pipeline.

This is the only part of imgnb that imports torch and diffusers, and it does so lazily: the
queue imports ``imgnb.gen.base`` (the protocol) without paying the seconds torch takes to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BatchGenerator, Generator, OnStep

if TYPE_CHECKING:
    from .diffusers_gen import DiffusersGenerator
    from .tiny import TINY_MODEL_NAME, tiny_pipeline

__all__ = ["TINY_MODEL_NAME", "BatchGenerator", "DiffusersGenerator", "Generator", "OnStep", "tiny_pipeline"]

_LAZY = {"DiffusersGenerator": "diffusers_gen", "TINY_MODEL_NAME": "tiny", "tiny_pipeline": "tiny"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
