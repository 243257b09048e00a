"""JSON merge patch (RFC 7396), the rule ``update_metadata`` follows. Pure: no I/O.

A patch's keys replace the target's, objects merge recursively, and a ``None`` (JSON null)
value deletes the key. SQLite's ``json_patch()`` implements the same rule in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in; neither argument is changed."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
