"""The models of a queue: their names, how a job for each is checked at submit, and per device
which of them are loaded.

``ModelCatalog`` is made once per queue from ``generator=``, ``pipeline=`` or ``models=`` (see
``ImageQueue``); ``DeviceModels`` is one device's share of it, used by that device's worker: it
hands the worker the generator of a job's model, loading it first when needed (in the worker's
generation thread, as generation itself) after unloading the least recently used model beyond
``max_loaded``. Models given as pipelines or generators are always loaded: imgnb did not make
them and cannot free them while the caller holds them.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.records import DeviceState, GenerationRequest, JobSpec, ModelLoad
from ..core.validation import MAX_MODEL_LENGTH, ParamsValidator, validate_model
from ..errors import InvalidJob, ModelLoadError, QueueConfigError
from ..gen.base import BatchGenerator, Generator, ParamsChecker
from ..gen.loading import (
    as_generator,
    declared_class,
    default_device,
    free_memory,
    is_loader,
    is_pipeline,
    params_of_class,
)

__all__ = ["DeviceModels", "ModelCatalog", "pipeline_name"]

BatchKey = Callable[[GenerationRequest], "str | None"]
ReportLoading = Callable[["ModelLoad | None"], None]
"""``report(load)``: a load began (``load``) or ended (None); called from the generation thread."""


@dataclass(kw_only=True)
class _Model:
    name: str | None  # None: the one unnamed generator of a generator= queue
    pinned: dict[str, Generator] = field(default_factory=dict)  # device -> generator, always loaded
    load: Callable[[str], Any] | None = None
    declared: type | None = None  # the pipeline class the loader declares
    check: ParamsValidator | None = None
    key: BatchKey | None = None


def pipeline_name(pipe: Any) -> str:
    """The model name of a queue's one ``pipeline=``: its ``name_or_path`` (a folder's path when
    loaded from disk: the end of a long one), or "default" when it has none."""
    return str(getattr(pipe, "name_or_path", None) or "default")[-MAX_MODEL_LENGTH:]


def _named(name: object) -> str:
    """A key of ``models=``: a name a job can store (the rule is ``validate_model``'s)."""
    try:
        checked = validate_model(name, None)
    except InvalidJob:
        checked = None
    if checked is None:
        raise QueueConfigError(f"models key {name!r} is invalid; allowed: a name of 1 to {MAX_MODEL_LENGTH} characters")
    return checked


class ModelCatalog:
    """Model name -> how to get it on a device and how its jobs are checked; and the devices."""

    def __init__(
        self,
        *,
        generator: Any = None,
        pipeline: Any = None,
        models: Mapping[str, Any] | None = None,
        devices: Sequence[str] | None = None,
        previews: bool = True,
        preview_interval: float = 0.25,
    ) -> None:
        sources = {"generator": generator, "pipeline": pipeline, "models": models}
        given = [f"{name}=" for name, value in sources.items() if value is not None]
        if len(given) > 1:
            raise QueueConfigError(f"give one of generator=, pipeline= and models=, not {' and '.join(given)}")
        if devices is not None and (isinstance(devices, str) or not all(isinstance(d, str) and d for d in devices)):
            raise QueueConfigError(f"devices={devices!r} is invalid; allowed: a list of device names, e.g. ['cuda:0']")
        self.previews = previews
        self.preview_interval = preview_interval
        self._models: dict[str | None, _Model] = {}
        self.devices: list[str] = []
        self.known: tuple[str, ...] | None = None  # None: any name (a queue that runs no jobs itself)
        if generator is not None:
            self._pinned(None, generator, devices)
        elif pipeline is not None:
            first = next(iter(pipeline.values()), None) if isinstance(pipeline, Mapping) else pipeline
            self._pinned(pipeline_name(first), pipeline, devices)
        elif models is not None:
            self._from_models(models, devices)
        elif devices:
            raise QueueConfigError("devices= needs models= (or generator= or pipeline=) to run jobs on them")
        if self._models:
            self.known = tuple(name for name in self._models if name is not None)

    # -- building -------------------------------------------------------------------------------

    def _generator(self, name: str | None, value: Any, device: str | None) -> Generator:
        """A pipeline wrapped in a ``DiffusersGenerator`` recording ``name``, or a generator as it is.
        ``UnsupportedPipeline`` goes through as it is: it says what the pipeline lacks."""
        if is_pipeline(value):
            try:
                return as_generator(
                    value,
                    device=device,
                    name=name or "default",
                    previews=self.previews,
                    preview_interval=self.preview_interval,
                )
            except ValueError as exc:  # not on the device named
                raise QueueConfigError(f"model {name!r}: {exc}") from None
        if not callable(value):
            what = f"models[{name!r}]" if name is not None else "generator"
            allowed = "a diffusers pipeline, a generator(request, on_step) -> images, or a loader load(device)"
            raise QueueConfigError(f"{what}={value!r} is invalid; allowed: {allowed}")
        gen: Generator = value
        return gen

    def _pinned(self, name: str | None, value: Any, devices: Sequence[str] | None) -> None:
        """One model given as a pipeline or generator, or as a dict of them by device."""
        if isinstance(value, Mapping):
            if devices is not None:
                raise QueueConfigError("devices= cannot rename the devices of a dict by device; leave it out")
            pinned = {str(d): self._generator(name, v, None) for d, v in value.items()}
        else:
            if devices is not None and len(devices) != 1:
                raise QueueConfigError(
                    f"devices={list(devices)!r}: a pipeline or generator runs on one device; for several, "
                    "give models= with a loader load(device), or a dict by device"
                )
            named = devices[0] if devices else None
            gen = self._generator(name, value, named)
            pinned = {named or str(getattr(gen, "device", "default")): gen}
        self._add(_Model(name=name, pinned=pinned))
        self.devices = list(pinned)

    def _from_models(self, models: Mapping[str, Any], devices: Sequence[str] | None) -> None:
        if not isinstance(models, Mapping) or not models:
            raise QueueConfigError(f"models={models!r} is invalid; allowed: a dict of model name -> pipeline or loader")
        pinned: dict[str, Any] = {}
        for name, value in models.items():
            _named(name)
            if isinstance(value, Mapping):  # a pipeline or generator per device, as ``imgnb worker`` builds them
                if devices is None or set(map(str, value)) != set(devices):
                    raise QueueConfigError(
                        f"models[{name!r}] is a dict by device: give devices= naming exactly its devices"
                    )
                self._add(
                    _Model(name=name, pinned={str(d): self._generator(name, v, str(d)) for d, v in value.items()})
                )
                continue
            if not is_loader(value):
                pinned[name] = value
                self._models[name] = _Model(name=name)  # its place in the order given
                continue
            try:
                cls = declared_class(value)
            except TypeError as exc:
                raise QueueConfigError(f"model {name!r}: {exc}") from None
            params = params_of_class(cls) if cls is not None else None  # raises UnsupportedPipeline
            self._add(
                _Model(
                    name=name,
                    load=value,
                    declared=cls,
                    check=params.validate if params is not None else None,
                    key=functools.partial(params.batch_key, name) if params is not None else None,
                )
            )
        if pinned and devices is not None and len(devices) != 1:
            raise QueueConfigError(
                f"models {', '.join(map(repr, pinned))} are given as pipelines or generators, which run on one "
                f"device; for devices={list(devices)!r} give loaders load(device) instead"
            )
        device = devices[0] if devices else None
        on: set[str] = set()
        for name, value in pinned.items():
            gen = self._generator(name, value, device)
            where = device or str(getattr(gen, "device", "default"))
            on.add(where)
            self._add(_Model(name=name, pinned={where: gen}))
        if len(on) > 1:
            raise QueueConfigError(
                f"the pipelines of models= are on several devices ({', '.join(sorted(on))}): "
                "give loaders load(device) and devices= instead"
            )
        self.devices = list(devices) if devices else sorted(on) or [default_device()]

    def _add(self, model: _Model) -> None:
        """Add (or replace) a model; a pinned one is checked and batched as its generator says."""
        gens = model.pinned.values()
        if model.check is None:
            model.check = next((g.validate_params for g in gens if isinstance(g, ParamsChecker)), None)
        if model.key is None:
            model.key = next((g.batch_key for g in gens if isinstance(g, BatchGenerator)), None)
        self._models[model.name] = model

    # -- at submit ------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The models' names, in the order given (the first runs the jobs stored without one)."""
        return self.known or ()

    def resolve(self, model: object, *, item: int | None = None) -> str | None:
        """The name a job stores, or ``InvalidJob`` naming the models this queue knows."""
        return validate_model(model, self.known, item=item)

    def check_params(self, model: str | None) -> ParamsValidator | None:
        entry = self._models.get(model)
        return entry.check if entry is not None else None

    def batch_key(self, spec: JobSpec) -> str | None:
        """Jobs with equal keys may share one pipeline call: the model's key, with the model in it."""
        entry = self._models.get(spec.model)
        if entry is None or entry.key is None:
            return None
        key = entry.key(GenerationRequest(job_id=0, prompt=spec.prompt, params=spec.params, seed=spec.seed))
        if key is None or spec.model is None:
            return key
        return json.dumps([spec.model, key])

    # -- on the devices -------------------------------------------------------------------------

    def for_device(self, device: str, *, max_loaded: int) -> DeviceModels:
        return DeviceModels(self, device, max_loaded=max_loaded)

    def entries(self) -> Iterable[_Model]:
        return self._models.values()


class DeviceModels:
    """The models one device holds: the pinned ones (given as pipelines or generators), and at most
    ``max_loaded`` that loaders made, the least recently used unloaded first when another is needed.

    ``generator`` runs in the worker's generation thread; ``state`` and ``loaded`` may be read from
    any thread.
    """

    def __init__(self, catalog: ModelCatalog, device: str, *, max_loaded: int) -> None:
        self.device = device
        self.max_loaded = max_loaded
        self._catalog = catalog
        self._lock = threading.Lock()
        entries = list(catalog.entries())
        self._default = entries[0].name if entries else None
        self._entries = {e.name: e for e in entries}
        self._pinned = {e.name: e.pinned[device] for e in entries if device in e.pinned}
        self.serves = tuple(
            e.name for e in entries if e.name is not None and (e.load is not None or e.name in self._pinned)
        )
        """The named models this device can run, for the claim: jobs naming others are left for
        the workers that run them."""
        self._loaded: OrderedDict[str | None, Generator] = OrderedDict()
        self._loading: ModelLoad | None = None
        self._loads = 0
        self._load_seconds = 0.0
        self.can_batch = any(isinstance(g, BatchGenerator) for g in self._pinned.values()) or any(
            e.declared is not None for e in entries
        )
        """Whether a batch of jobs may ever share a call here (``ImageQueue(batch_size=...)``)."""

    def name_of(self, model: str | None) -> str | None:
        """The model a job runs on: its own, or for a job stored without one the first model."""
        return model if model is not None else self._default

    def loaded(self) -> set[str | None]:
        """The models held now, for the claim's affinity; None stands for the jobs stored without a model."""
        with self._lock:
            held: set[str | None] = {*self._pinned, *self._loaded}
        if self._default in held:
            held.add(None)
        return held

    def state(self) -> DeviceState:
        with self._lock:
            return DeviceState(
                device=self.device,
                loaded=tuple(name for name in (*self._pinned, *self._loaded) if name is not None),
                loading=self._loading,
                loads=self._loads,
                load_seconds=self._load_seconds,
            )

    def generator(self, model: str | None, *, report: ReportLoading) -> Generator:
        """The generator of ``model`` on this device, loaded first if need be (generation thread).
        A load is reported as it begins and as it ends, however it ends; a failed one raises
        ``ModelLoadError`` with the loader's error."""
        name = self.name_of(model)
        pinned = self._pinned.get(name)
        if pinned is not None:
            return pinned
        with self._lock:
            gen = self._loaded.get(name)
            if gen is not None:
                self._loaded.move_to_end(name)
                return gen
        entry = self._entries.get(name)
        if entry is None or entry.load is None:
            known = ", ".join(repr(n) for n in self._catalog.names) or "none"
            raise InvalidJob(f"model={name!r} is not one this queue runs on {self.device} (its models: {known})")
        self._make_room()
        return self._load(entry, report)

    def _make_room(self) -> None:
        """Unload the least recently used models until one more fits, and give their memory back."""
        with self._lock:
            dropped = 0
            while self._loaded and len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)  # the last reference imgnb holds
                dropped += 1
        if dropped:
            free_memory(self.device)

    def _load(self, entry: _Model, report: ReportLoading) -> Generator:
        assert entry.load is not None and entry.name is not None
        name = entry.name
        load = ModelLoad(model=name, device=self.device, since=time.time())
        with self._lock:
            self._loading = load
        report(load)
        started = time.monotonic()
        try:
            gen = as_generator(
                entry.load(self.device),
                device=self.device,
                name=name,
                previews=self._catalog.previews,
                preview_interval=self._catalog.preview_interval,
                expected=entry.declared,
            )
        except Exception as exc:
            raise ModelLoadError(f"loading {name} on {self.device} failed: {type(exc).__name__}: {exc}") from exc
        else:
            with self._lock:
                self._loaded[name] = gen
                self._loads += 1
                self._load_seconds += time.monotonic() - started
            return gen
        finally:
            with self._lock:
                self._loading = None
            report(None)

    def clear(self) -> None:
        """Drop every loaded model (at ``close()``); a generation still running keeps its own until it ends."""
        with self._lock:
            held = bool(self._loaded)
            self._loaded.clear()
        if held:
            free_memory(self.device)
