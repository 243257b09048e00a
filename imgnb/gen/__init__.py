"""Generators the queue runs: the protocol, the diffusers adapter, previews and tiny offline pipelines.

This is the only part of imgnb that imports torch and diffusers, and it does so lazily: the
queue imports ``imgnb.gen.base`` (the protocol) without paying the seconds torch takes to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BatchGenerator, Generator, OnStep

if TYPE_CHECKING:
    from .diffusers_gen import DiffusersGenerator
    from .preview import Previewer
    from .tiny import TINY_FAMILIES, TINY_MODEL_NAME, tiny_pipeline

__all__ = [
    "TINY_FAMILIES",
    "TINY_MODEL_NAME",
    "BatchGenerator",
    "DiffusersGenerator",
    "Generator",
    "OnStep",
    "Previewer",
    "tiny_pipeline",
]

_LAZY = {
    "DiffusersGenerator": "diffusers_gen",
    "Previewer": "preview",
    "TINY_FAMILIES": "tiny",
    "TINY_MODEL_NAME": "tiny",
    "tiny_pipeline": "tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
