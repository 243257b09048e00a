"""What a user may give for a model, and how it becomes a generator on a device.

``ImageQueue(models={name: x})`` takes, for each model, one of:

- a diffusers pipeline, already on the device it runs on (``pipe.to("cuda")``): wrapped in a
  ``DiffusersGenerator``, it stays loaded for the queue's life;
- a generator, any ``generator(request, on_step)`` object (``FakeGenerator``, a
  ``DiffusersGenerator``): used as it is, and stays loaded too;
- a loader, ``load(device) -> pipeline or generator``: called the first time a job needs the model
  on a device. A loader is a function (or method, or ``functools.partial``) whose one required
  argument is the device, or any callable marked with ``imgnb.loader``.

``imgnb.loader(PipelineClass)`` declares the class of the pipeline a loader returns, so that jobs
for the model are checked at submit against that class's ``__call__`` signature without loading it
(``PipelineParams.of_class``); setting ``load.pipeline_class = PipelineClass`` does the same. A
loader without a declared class gets the generic checks at submit (parameters must be JSON), and
its pipeline's own checks when the job runs: a parameter it does not take then fails that job, not
retried. torch and diffusers are not imported here: a pipeline is recognised only once diffusers
is loaded, which any code that made one has done.
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .base import Generator
    from .diffusers_gen import PipelineParams

__all__ = [
    "as_generator",
    "declared_class",
    "default_device",
    "free_memory",
    "is_loader",
    "is_pipeline",
    "loader",
    "params_of_class",
]

F = TypeVar("F", bound=Callable[..., Any])
_PIPELINE_MODULE = "diffusers.pipelines.pipeline_utils"


def loader(pipeline_class: type | None = None) -> Callable[[F], F]:
    """Mark a function as a model loader and declare the class of the pipeline it returns::

        @imgnb.loader(StableDiffusionXLPipeline)
        def load_sdxl(device):
            return StableDiffusionXLPipeline.from_pretrained(...).to(device)

    With a class, jobs for the model are checked at submit as that class's pipelines check them;
    ``@imgnb.loader()`` only marks a callable whose signature would not say it is a loader.
    """
    if pipeline_class is not None and not is_pipeline_class(pipeline_class):
        raise TypeError(f"pipeline_class={pipeline_class!r}: give a diffusers pipeline class, or None")

    def mark(load: F) -> F:
        load.pipeline_class = pipeline_class  # type: ignore[attr-defined]
        return load

    return mark


def is_pipeline(obj: object) -> bool:
    """A diffusers pipeline instance (recognised without importing diffusers)."""
    module = sys.modules.get(_PIPELINE_MODULE)
    return module is not None and isinstance(obj, module.DiffusionPipeline)


def is_pipeline_class(obj: object) -> bool:
    module = sys.modules.get(_PIPELINE_MODULE)
    return module is not None and isinstance(obj, type) and issubclass(obj, module.DiffusionPipeline)


def _binds_one(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind("cpu")
    except (TypeError, ValueError):  # ValueError: no inspectable signature
        return False
    return True


def is_loader(obj: object) -> bool:
    """A loader rather than a pipeline or a generator: see the module's docstring."""
    if not callable(obj) or is_pipeline(obj):
        return False
    if hasattr(obj, "pipeline_class"):
        return True
    plain = inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, functools.partial)
    return plain and _binds_one(obj)


def declared_class(load: Callable[..., Any]) -> type | None:
    """The pipeline class a loader declares, if any."""
    cls = getattr(load, "pipeline_class", None)
    if cls is not None and not is_pipeline_class(cls):
        raise TypeError(f"{load!r}.pipeline_class={cls!r}: give a diffusers pipeline class, or None")
    return cls


def params_of_class(pipeline_class: type) -> PipelineParams:
    """The job parameters a pipeline class takes (raises ``UnsupportedPipeline`` for one imgnb cannot run)."""
    from .diffusers_gen import PipelineParams

    return PipelineParams.of_class(pipeline_class)


def as_generator(
    obj: object,
    *,
    device: str | None,
    name: str,
    previews: bool,
    preview_interval: float,
    expected: type | None = None,
) -> Generator:
    """The generator that runs ``obj``'s jobs on ``device``: a pipeline is wrapped, a generator kept.

    ``name`` is the model the images record; ``expected`` the class a loader declared.
    """
    if is_pipeline(obj):
        if expected is not None and not isinstance(obj, expected):
            raise TypeError(f"returned a {type(obj).__name__}, not the {expected.__name__} it declares")
        from .diffusers_gen import DiffusersGenerator

        return DiffusersGenerator(
            obj,  # type: ignore[arg-type]
            device=device,
            name=name,
            previews=previews,
            preview_interval=preview_interval,
        )
    if callable(obj) and not is_loader(obj):
        if expected is not None:
            raise TypeError(f"returned {obj!r}, not the {expected.__name__} it declares")
        return obj
    raise TypeError(f"returned {obj!r}: give a diffusers pipeline or a generator(request, on_step) -> images")


def free_memory(device: str) -> None:
    """Give memory back once the last reference to a model is gone: collect the cycles that still
    hold its tensors, then return torch's cached blocks on that device to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    kind = device.split(":", 1)[0]
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def default_device() -> str:
    """Where jobs run when no device is named: the accelerator torch sees (the first CUDA GPU, or
    Apple's MPS), else the CPU. Without torch installed, the CPU."""
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
