"""Checks on what a user submits, before anything is stored. Pure: no I/O.

Every error is an ``InvalidJob`` naming the field, the value given (shortened) and what is allowed;
inside a batch it names the item's index too.

What passes here is stored, read back and run the same way on SQLite and PostgreSQL, and fits in a
PNG's text chunks: text holds no NUL (PostgreSQL's text cannot) and no lone surrogate (UTF-8
cannot); params and metadata are JSON within ``MAX_JSON_DEPTH`` and ``MAX_JSON_BYTES`` (a deeper
document cannot be decoded by every reader, and one bad row must not stop the queue), and they are
normalised by a JSON round trip, so the submitting process holds exactly what others read back.
"""

from __future__ import annotations

import json
import math
import operator
import random
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, SupportsIndex

from ..errors import InvalidJob, JobNotFound
from .ordering import Priority
from .records import JobSpec

__all__ = [
    "MAX_GROUP_LENGTH",
    "MAX_INT64",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MODEL_LENGTH",
    "MAX_SEED",
    "JobSettings",
    "ParamsValidator",
    "draw_seed",
    "invalid",
    "job_spec",
    "json_data",
    "parse_priority",
    "shorten",
    "validate_group",
    "validate_job",
    "validate_job_id",
    "validate_model",
    "validate_patch",
    "validate_settings",
]

MAX_INT64 = 2**63 - 1  # the databases' BIGINT: seeds and job ids
MAX_SEED = MAX_INT64
MAX_GROUP_LENGTH = 200  # characters; the group column's size
MAX_MODEL_LENGTH = 200  # characters; the model column's size
MAX_JSON_DEPTH = 32  # nested lists and dicts in params, metadata or a metadata patch
MAX_JSON_BYTES = 64 * 1024  # params, metadata or a patch as compact JSON in UTF-8
ParamsValidator = Callable[[dict[str, Any]], dict[str, Any]]
"""Checks generation parameters for one generator; returns them normalised or raises InvalidJob."""

# made once: json.dumps with options builds a new encoder on every call
_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 60


def shorten(value: object) -> str:
    """``repr(value)`` cut to 80 characters, safe for any value: no recursion into deep nesting,
    no failure on an integer too long to print or on a broken ``__repr__``."""
    try:
        shown = _SHORT.repr(value)
    except Exception:
        shown = f"<int of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


def invalid(field: str, value: object, allowed: str, *, item: int | None = None) -> InvalidJob:
    where = f"batch item {item}: " if item is not None else ""
    return InvalidJob(f"{where}{field}={shorten(value)} is invalid; allowed: {allowed}")


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


def _check_text(where: Where, text: str, *, item: int | None) -> None:
    if "\x00" in text:
        raise invalid(_path(where), text, "text without NUL characters (PostgreSQL cannot store them)", item=item)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        allowed = "text without lone surrogates (UTF-8 cannot store them)"
        raise invalid(_path(where), text, allowed, item=item) from None


Where = str | tuple["Where", object]  # a field, or (the container's place, the key): a path built when shown


def _path(where: Where) -> str:
    """The path of a nested value, as messages show it: ``metadata['tags'][0]``."""
    keys: list[object] = []
    while isinstance(where, tuple):
        where, key = where
        keys.append(key)
    steps = "".join(f"[{shorten(key)}]" for key in reversed(keys))
    return where + (steps if len(steps) <= 120 else "[...]")


def _key_text(where: Where, key: object, *, item: int | None) -> str:
    """A dict key as JSON writes it (``5`` -> ``"5"``), or InvalidJob for a key JSON cannot write."""
    if isinstance(key, str):
        _check_text(where, key, item=item)
        return key
    if key is None or isinstance(key, (int, float)):
        try:
            return str(next(iter(json.loads(json.dumps({key: 0}, allow_nan=False)))))
        except ValueError:  # nan, infinity, an integer too long to write
            pass
    allowed = "dict keys that are text (numbers, True, False and None become text)"
    raise invalid(_path(where), key, allowed, item=item)


def _check_tree(field: str, value: object, *, item: int | None) -> None:
    """Depth, text and keys, walked without recursion (a 10,000-deep dict must not overflow the
    stack), stopping as soon as the value is too deep or too big to be within the limits. A bad
    text or key is named by its path; a limit by the whole value."""
    too_big = f"at most {MAX_JSON_BYTES} bytes as JSON"
    stack: list[tuple[object, int, Where]] = [(value, 0, field)]
    seen = 0
    while stack:
        node, depth, where = stack.pop()
        seen += 1
        if seen > MAX_JSON_BYTES:  # every value takes at least one byte of JSON
            raise invalid(field, value, too_big, item=item)
        if isinstance(node, str):
            if len(node) > MAX_JSON_BYTES:
                raise invalid(field, value, too_big, item=item)
            _check_text(where, node, item=item)
        elif isinstance(node, (dict, list, tuple)):
            if depth >= MAX_JSON_DEPTH:
                raise invalid(field, value, f"lists and dicts nested at most {MAX_JSON_DEPTH} deep", item=item)
            if isinstance(node, dict):
                names = [_key_text(where, key, item=item) for key in node]
                if len(set(names)) < len(names):
                    allowed = "dict keys that stay distinct as text (5 and '5' collide)"
                    raise invalid(_path(where), node, allowed, item=item)
                stack.extend((child, depth + 1, (where, key)) for key, child in node.items())
            else:
                stack.extend((child, depth + 1, (where, i)) for i, child in enumerate(node))


def json_data(field: str, value: object, *, item: int | None = None) -> Any:
    """``value`` as it will be stored and read back: checked against the limits, then through a
    JSON round trip (tuples become lists, number keys text), so nothing aliases the caller's."""
    if type(value) is dict and not value:  # the common case: no metadata
        return {}
    _check_tree(field, value, item=item)
    try:
        text = _COMPACT.encode(value)
    except (TypeError, ValueError) as exc:
        allowed = f"JSON-serialisable values: text, numbers, True/False/None, lists and dicts ({exc})"
        raise invalid(field, value, allowed, item=item) from None
    size = len(text.encode("utf-8"))
    if size > MAX_JSON_BYTES:
        raise invalid(field, value, f"at most {MAX_JSON_BYTES} bytes as JSON (this is {size})", item=item)
    return json.loads(text)


def validate_patch(patch: object) -> dict[str, Any]:
    """A metadata patch for ``update_metadata``: a dict within the JSON limits."""
    if not isinstance(patch, Mapping):
        raise invalid("patch", patch, "a dict to merge into the metadata")
    checked: dict[str, Any] = json_data("patch", dict(patch))
    return checked


def validate_group(group: object, *, item: int | None = None) -> str | None:
    """A group name, as stored or as asked for in ``jobs(group=...)``."""
    if group is None:
        return None
    if not isinstance(group, str) or not group or len(group) > MAX_GROUP_LENGTH:
        raise invalid("group", group, f"None or a non-empty string of at most {MAX_GROUP_LENGTH} characters", item=item)
    _check_text("group", group, item=item)
    return group


def validate_model(model: object, known: Sequence[str] | None, *, item: int | None = None) -> str | None:
    """The model a job runs on, by name. ``known``: the queue's models; None for a queue that runs
    no jobs itself (other processes do), which takes any name; empty for one that runs a single
    unnamed generator, which takes none. With one model the name may be left out (None)."""
    if known is None:
        if model is None:
            return None
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_LENGTH:
            raise invalid("model", model, f"None or a model name of 1 to {MAX_MODEL_LENGTH} characters", item=item)
        _check_text("model", model, item=item)
        return model
    if not known:
        if model is None:
            return None
        raise invalid("model", model, "None: this queue runs one generator, which has no model name", item=item)
    if model is None and len(known) == 1:
        return known[0]
    if isinstance(model, str) and model in known:
        return model
    names = ", ".join(repr(name) for name in known)
    raise invalid("model", model, f"one of this queue's models: {names}", item=item)


def validate_job_id(job_id: object) -> int:
    """A job id as the database can hold it: ``JobNotFound`` for an integer no job can have."""
    if isinstance(job_id, bool) or not isinstance(job_id, SupportsIndex):
        raise invalid("job_id", job_id, "an integer job id")
    number = operator.index(job_id)
    if not 1 <= number <= MAX_INT64:
        raise JobNotFound(f"no job with id {shorten(number)}")
    return number


def _validate_timeout(timeout: object, *, item: int | None) -> float | None:
    if timeout is None:
        return None
    allowed = "None (no limit) or seconds > 0"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise invalid("timeout", timeout, allowed, item=item)
    try:
        seconds = float(timeout)
    except OverflowError:
        raise invalid("timeout", timeout, allowed, item=item) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise invalid("timeout", timeout, allowed, item=item)
    return seconds


class JobSettings(NamedTuple):
    """What a job is stored with besides its prompt, seed and parameters, as validated. A batch's
    jobs share one (validated once: 100,000 items of a ``submit_batch`` repeat the same values)."""

    priority: int
    group: str | None
    timeout: float | None
    max_retries: int
    metadata: dict[str, Any]


def validate_settings(
    *,
    priority: object = "normal",
    group: object = None,
    timeout: object = 300.0,
    max_retries: object = 3,
    metadata: object = None,
    item: int | None = None,
) -> JobSettings:
    level = parse_priority(priority, item=item)
    checked_group = validate_group(group, item=item)
    seconds = _validate_timeout(timeout, item=item)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 100:
        raise invalid("max_retries", max_retries, "an integer from 0 to 100", item=item)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise invalid("metadata", metadata, "None or a dict", item=item)
    stored_metadata: dict[str, Any] = json_data("metadata", metadata, item=item)
    return JobSettings(int(level), checked_group, seconds, max_retries, stored_metadata)


def job_spec(
    prompt: object,
    *,
    settings: JobSettings,
    seed: object = None,
    params: Mapping[str, Any],
    check_params: ParamsValidator | None = None,
    model: str | None = None,
    item: int | None = None,
) -> JobSpec:
    """One submission with validated ``settings`` as a ``JobSpec``, or ``InvalidJob``. ``model``
    was checked by ``validate_model`` first, and ``check_params`` is that model's."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", prompt, "a non-empty string", item=item)
    _check_text("prompt", prompt, item=item)
    if seed is None:
        seed = draw_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise invalid("seed", seed, f"None (drawn for you) or an integer from 0 to {MAX_SEED}", item=item)
    checked: dict[str, Any] = json_data("params", params if type(params) is dict else dict(params), item=item)
    if check_params is not None:
        try:
            returned = check_params(checked)
        except InvalidJob as exc:
            if item is None:
                raise
            raise InvalidJob(f"batch item {item}: {exc}") from None
        checked = json_data("params", returned, item=item)
    priority, group, timeout, max_retries, metadata = settings
    return JobSpec(
        prompt=prompt,
        params=checked,
        seed=seed,
        priority=priority,
        group=group,
        timeout=timeout,
        max_retries=max_retries,
        metadata=metadata,
        model=model,
    )


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
    model: str | None = None,
    item: int | None = None,
) -> JobSpec:
    """Turn one submission into a ``JobSpec`` or raise ``InvalidJob``: ``validate_settings`` then
    ``job_spec``."""
    settings = validate_settings(
        priority=priority, group=group, timeout=timeout, max_retries=max_retries, metadata=metadata, item=item
    )
    return job_spec(
        prompt, settings=settings, seed=seed, params=params, check_params=check_params, model=model, item=item
    )
