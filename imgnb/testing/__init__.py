"""Fakes for tests, notebooks and benchmarks, shipped with the package as procrastinate ships its
``InMemoryConnector``: ``FakeGenerator`` (no torch, sleeps per step, fails on demand) and
``MemoryStore`` (the Store interface in memory: the second implementation that proves it is one).
"""

from .fake_generator import FakeGenerator, TransientError
from .memory_store import MemoryStore

__all__ = ["FakeGenerator", "MemoryStore", "TransientError"]
