"""From ``--pipeline MODULE:FACTORY`` to one diffusers pipeline per device, checked before any job
is claimed.

FACTORY is any callable that returns a diffusers pipeline. If it has a ``device`` parameter it is
called once per device as ``factory(device="cuda:1")`` and must return a pipeline on that device.
Otherwise it is called once per device with no arguments and its pipeline is used where it is:
nothing is moved, and a pipeline found on another device than the one asked for is refused (such a
factory can serve one device). Each device needs a pipeline object of its own, because a diffusers
pipeline keeps per-call state and must never run two calls at once.

MODULE is imported as ``python -m`` would from the current directory (the directory is put first on
``sys.path``, as uvicorn and gunicorn do), so ``--pipeline mymodels:sdxl`` finds ``./mymodels.py``
from the ``imgnb`` script too. FACTORY may be dotted (``Loader.build``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .devices import same_device
from .failures import BadArgument, StartFailed
from .text import one_line

__all__ = [
    "FactorySpec",
    "ModelLoader",
    "ModelSpec",
    "build_pipelines",
    "describe_pipeline",
    "parse_factory",
    "parse_model",
    "resolve_factory",
    "takes_device",
]

Factory = Callable[..., Any]


@dataclass(frozen=True)
class FactorySpec:
    """``MODULE:FACTORY`` as given on the command line."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}:{self.name}"


def parse_factory(text: str) -> FactorySpec:
    """The argparse ``type`` of ``MODULE:FACTORY``: refuses a malformed one as a usage error."""
    module, colon, name = text.partition(":")
    parts = [*module.split("."), *name.split(".")]
    if not colon or not all(part.isidentifier() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not MODULE:FACTORY, e.g. imgnb.gen.tiny:tiny_pipeline")
    return FactorySpec(module, name)


@dataclass(frozen=True)
class ModelSpec:
    """``--model NAME=MODULE:FACTORY`` as given on the command line."""

    name: str
    factory: FactorySpec

    def __str__(self) -> str:
        return f"{self.name}={self.factory}"


def parse_model(text: str) -> ModelSpec:
    """The argparse ``type`` of ``NAME=MODULE:FACTORY``: the name is one a job can store."""
    from ..core.validation import MAX_MODEL_LENGTH, validate_model
    from ..errors import InvalidJob

    name, equals, factory = text.partition("=")
    try:
        checked = validate_model(name, None) if equals else None
    except InvalidJob:
        checked = None
    if checked is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=MODULE:FACTORY with a NAME of 1 to {MAX_MODEL_LENGTH} characters, "
            "e.g. sdxl=mymodels:sdxl"
        )
    return ModelSpec(checked, parse_factory(factory))


class ModelLoader:
    """A ``--model`` factory as the queue's loader ``load(device)``: called when a job first needs
    the model on a device (and again after ``--max-loaded`` unloaded it), as ``FACTORY(device=...)``
    or, for a factory without a ``device`` parameter, ``FACTORY()``."""

    pipeline_class = None  # what marks a loader (``imgnb.loader()``): the class is known once loaded

    def __init__(self, spec: ModelSpec, factory: Factory) -> None:
        self.spec = spec
        self._factory = factory
        self._with_device = takes_device(factory)

    def __call__(self, device: str) -> Any:
        pipe = self._factory(device=device) if self._with_device else self._factory()
        if not _is_pipeline(pipe):
            raise TypeError(f"--model {self.spec} returned a {type(pipe).__name__}, not a diffusers pipeline")
        return pipe


def _error(exc: BaseException) -> str:
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def resolve_factory(spec: FactorySpec, given: str | None = None) -> Factory:
    """Import the module and find the callable; raises ``BadArgument`` naming the argument as
    ``given`` (default ``--pipeline MODULE:FACTORY``) and what is missing."""
    given = given or f"--pipeline {spec}"
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        target: Any = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name and (spec.module + ".").startswith(exc.name + "."):  # the module itself, not an import in it
            raise BadArgument(f"{given}: no module named {exc.name!r} in {here} or on the Python path") from None
        raise BadArgument(f"{given}: importing {spec.module} failed: {_error(exc)}") from None
    except Exception as exc:  # the module's own code failed: a syntax error, a missing dependency
        raise BadArgument(f"{given}: importing {spec.module} failed: {_error(exc)}") from None
    for part in spec.name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise BadArgument(f"{given}: module {spec.module!r} has no attribute {spec.name!r}") from None
    if not callable(target):
        raise BadArgument(f"{given}: {spec.name} is a {type(target).__name__}, not a callable")
    factory: Factory = target
    return factory


def takes_device(factory: Factory) -> bool:
    """Whether ``factory`` can be called as ``factory(device=...)`` (a named parameter, not ``**kwargs``:
    a factory that forwards its keywords to ``from_pretrained`` does not place the pipeline)."""
    try:
        parameter = inspect.signature(factory).parameters.get("device")
    except (TypeError, ValueError):  # no signature to read (a builtin): call it without arguments
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def build_pipelines(spec: FactorySpec, factory: Factory, devices: Sequence[str]) -> dict[str, Any]:
    """Call the factory for each device and check what it returns: a text-to-image pipeline that
    imgnb can drive, on that device, a distinct object per device."""
    with_device = takes_device(factory)
    pipelines: dict[str, Any] = {}
    for device in devices:
        call = f"{spec}(device={device!r})" if with_device else f"{spec}()"
        try:
            pipe = factory(device=device) if with_device else factory()
        except Exception as exc:
            raise StartFailed(f"--pipeline {call} raised {_error(exc)}") from None
        if not _is_pipeline(pipe):
            raise BadArgument(f"--pipeline {call} returned a {type(pipe).__name__}, not a diffusers pipeline")
        if any(pipe is other for other in pipelines.values()):
            raise BadArgument(
                f"--pipeline {call} returned the pipeline it returned for another device; "
                "a pipeline runs one call at a time, so each device needs its own"
            )
        runs_on = _device_of(pipe, call)
        if not same_device(device, runs_on):
            hint = "move it there in the factory" if with_device else "give the factory a `device` parameter"
            raise BadArgument(f"--pipeline {call} returned a pipeline on {runs_on}, not on {device}; {hint}")
        pipelines[device] = pipe
    return pipelines


def _device_of(pipe: Any, call: str) -> str:
    """Where the pipeline runs, as the queue's adapter sees it; refuses a pipeline the adapter
    cannot drive (its ``__call__`` lacks a prompt, steps, a generator or step callbacks)."""
    from ..gen.diffusers_gen import DiffusersGenerator

    try:
        return DiffusersGenerator(pipe).device
    except TypeError as exc:
        raise BadArgument(f"--pipeline {call}: {one_line(str(exc))}") from None


def _is_pipeline(obj: object) -> bool:
    """Whether ``obj`` is a diffusers pipeline. Without diffusers imported it cannot be one, and
    importing it (seconds) only to say so would slow every refusal down."""
    pipeline_utils = sys.modules.get("diffusers.pipelines.pipeline_utils")
    return pipeline_utils is not None and isinstance(obj, pipeline_utils.DiffusionPipeline)


def describe_pipeline(pipe: Any) -> dict[str, str]:
    """The pipeline's class and model name, for the start-up line."""
    return {"class": type(pipe).__name__, "model": str(getattr(pipe, "name_or_path", "") or "")}
