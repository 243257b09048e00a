"""Checks on what a user submits, before anything is stored. Pure: no I/O.

Every error is an ``InvalidJob`` naming the field, the value given and what is allowed; inside a
batch it names the item's index too.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidJob
from .ordering import Priority
from .records import JobSpec

__all__ = ["MAX_SEED", "ParamsValidator", "draw_seed", "invalid", "parse_priority", "validate_job", "validate_patch"]

MAX_SEED = 2**63 - 1
ParamsValidator = Callable[[dict[str, Any]], dict[str, Any]]
"""Checks generation parameters for one generator; returns them normalised or raises InvalidJob."""


def invalid(field: str, value: object, allowed: str, *, item: int | None = None) -> InvalidJob:
    where = f"batch item {item}: " if item is not None else ""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidJob(f"{where}{field}={shown} is invalid; allowed: {allowed}")


def draw_seed() -> int:
    """A fresh seed in [0, 2**32), small enough for every RNG a generator may feed it to."""
    return random.SystemRandom().randrange(2**32)


def parse_priority(value: object, *, item: int | None = None) -> Priority:
    allowed = "'low', 'normal', 'high' (or imgnb.Priority)"
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.lower() in ("low", "normal", "high"):
        return Priority[value.upper()]
    raise invalid("priority", value, allowed, item=item)


def _check_json(field: str, value: object, *, item: int | None) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise invalid(field, value, f"JSON-serialisable values ({exc})", item=item) from None


def validate_patch(patch: object) -> dict[str, Any]:
    """A metadata patch for ``update_metadata``: a JSON-serialisable dict."""
    if not isinstance(patch, Mapping):
        raise invalid("patch", patch, "a dict to merge into the metadata")
    checked = dict(patch)
    _check_json("patch", checked, item=None)
    return checked


def validate_job(
    prompt: object,
    *,
    priority: object = "normal",
    group: object = None,
    timeout: object = 300.0,
    max_retries: object = 3,
    metadata: object = None,
    seed: object = None,
    params: Mapping[str, Any],
    check_params: ParamsValidator | None = None,
    item: int | None = None,
) -> JobSpec:
    """Turn one submission into a ``JobSpec`` or raise ``InvalidJob``."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", prompt, "a non-empty string", item=item)
    level = parse_priority(priority, item=item)
    if group is not None and (not isinstance(group, str) or not group):
        raise invalid("group", group, "None or a non-empty string", item=item)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0
    ):
        raise invalid("timeout", timeout, "None (no limit) or seconds > 0", item=item)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 100:
        raise invalid("max_retries", max_retries, "an integer from 0 to 100", item=item)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise invalid("metadata", metadata, "None or a dict", item=item)
    if metadata:
        _check_json("metadata", metadata, item=item)
    if seed is None:
        seed = draw_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise invalid("seed", seed, f"None (drawn for you) or an integer from 0 to {MAX_SEED}", item=item)
    checked = dict(params)
    if check_params is not None:
        try:
            checked = check_params(checked)
        except InvalidJob as exc:
            if item is None:
                raise
            raise InvalidJob(f"batch item {item}: {exc}") from None
    if checked:
        _check_json("params", checked, item=item)
    return JobSpec(
        prompt=prompt,
        params=checked,
        seed=seed,
        priority=int(level),
        group=group,
        timeout=None if timeout is None else float(timeout),
        max_retries=max_retries,
        metadata=metadata,
    )
