"""Persistence: the ``Store`` interface and its SQL implementation. SQL lives only here."""

from .base import Store
from .sql import SQLStore

__all__ = ["SQLStore", "Store"]
