"""``batch_specs``: the items of a ``submit_batch`` as validated ``JobSpec``s. Pure: no I/O.

A batch of 100,000 items repeats the same settings 100,000 times, so what the items share
(priority, group and the defaults of timeout, retries, metadata and model) is validated once, and
an item that overrides some of it on its own. The first bad item ends it with an ``InvalidJob``
naming the item's index, before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .records import JobSpec
from .validation import ParamsValidator, invalid, job_spec, validate_settings

__all__ = ["batch_specs"]

_BATCH_LEVEL = frozenset({"priority", "group"})  # one value for a whole batch, so its jobs stay together
_ITEM_SETTINGS = frozenset({"timeout", "max_retries", "metadata"})  # batch defaults an item may override
_NO_PROMPT = object()  # an item without a prompt


def batch_specs(
    items: object,
    *,
    priority: object,
    group: object,
    timeout: object,
    max_retries: object,
    metadata: object,
    model: object,
    resolve: Callable[..., str | None],
    check_params: Callable[[str | None], ParamsValidator | None],
) -> list[JobSpec]:
    """``items`` (dicts with ``prompt`` and optionally ``seed``, ``timeout``, ``max_retries``,
    ``metadata``, ``model`` and generation parameters) as specs. ``resolve(model, item=i)`` and
    ``check_params(name)``: the queue's model names and each one's parameter checks."""
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes, Mapping)):
        raise invalid("items", items, "a list of dicts, each with at least 'prompt'")
    shared = validate_settings(
        priority=priority, group=group, timeout=timeout, max_retries=max_retries, metadata=metadata
    )
    models: dict[object, tuple[str | None, ParamsValidator | None]] = {}  # name given -> name, checks
    specs: list[JobSpec] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise invalid("item", item, "a dict with at least 'prompt'", item=i)
        fields: dict[str, Any] = dict(item)
        if not _BATCH_LEVEL.isdisjoint(fields):
            name = min(_BATCH_LEVEL & fields.keys())
            raise invalid(name, fields[name], f"set {name}= once for the whole batch", item=i)
        prompt = fields.pop("prompt", _NO_PROMPT)
        if prompt is _NO_PROMPT:
            raise invalid("prompt", None, "every item needs a 'prompt'", item=i)
        settings = shared
        if not _ITEM_SETTINGS.isdisjoint(fields):
            settings = validate_settings(
                priority=priority,
                group=group,
                timeout=fields.pop("timeout", timeout),
                max_retries=fields.pop("max_retries", max_retries),
                metadata=fields.pop("metadata", metadata),
                item=i,
            )
        given = fields.pop("model", model)
        found = models.get(given) if isinstance(given, str | None) else None
        if found is None:
            named = resolve(given, item=i)
            found = models[given] = (named, check_params(named))
        named, check = found
        seed = fields.pop("seed", None)
        spec = job_spec(prompt, settings=settings, seed=seed, params=fields, check_params=check, model=named, item=i)
        specs.append(spec)
    return specs
