"""JSON merge patch (RFC 7396), as ``update_metadata`` applies it. Pure: no I/O.

Done in Python, inside the store's write transaction, rather than by the database: SQLite's
``json_patch`` and a PostgreSQL function would each parse numbers their own way (JSONB turns
``1e16`` into an integer) and PostgreSQL's recursion hits its stack limit on deep patches.
"""

from __future__ import annotations

from typing import Any

__all__ = ["merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in: dicts merge key by key, ``None`` deletes a key, any
    other value replaces. Neither argument is changed. Recursion follows the patch only, whose depth
    validation bounds."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
