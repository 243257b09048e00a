"""What the queue needs from a generator, and the optional hooks it uses when present.

A generator is any callable ``generator(request, on_step) -> list[PIL.Image.Image]``. It calls
``on_step(step, total)`` after each step, or ``on_step(step, total, previews)`` when it has preview
images of the job so far; ``on_step`` raises ``JobInterrupted`` (``JobTimedOut`` for a timeout)
when the job must stop, and the generator lets it propagate.

Optional capabilities, each a protocol below that the queue checks with ``isinstance``:

- ``device: str`` (``OnDevice``): the device it runs on ("cuda:0", "cpu"); one job at a time runs
  per device.
- ``validate_params(params) -> params`` (``ParamsChecker``): raise ``InvalidJob`` for parameters it
  cannot take; called at submit time, before anything is stored.
- ``batch_key(request) -> str | None`` and ``generate_batch(requests, on_step) ->
  list[list[Image]]`` (``BatchGenerator``): requests with the same non-None key may share one call,
  ``on_step`` called once per step for the whole batch.

String entries a generator puts in an image's ``info`` (model name, scheduler) are written into
the stored PNG's text chunks next to the job's prompt, seed and parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..core.records import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["BatchGenerator", "Generator", "OnDevice", "OnStep", "ParamsChecker"]


class OnStep(Protocol):
    """``on_step(step, total, previews=None)``: step counts from 1; raises ``JobInterrupted`` to stop the job.

    ``previews``, when given, holds one small image (longest side at most 256 px) per request of the
    call, in request order (one for a plain call, one per job for ``generate_batch``): what each job
    is becoming. A generator gives it now and then (``DiffusersGenerator``: at most every
    ``preview_interval`` seconds) and None or nothing on other steps: an ``on_step`` takes a third
    argument and does not require it. It runs on the generation thread: hand the images on, do not
    draw them there.
    """

    def __call__(self, step: int, total: int, previews: Sequence[Image] | None = None, /) -> None: ...


@runtime_checkable
class Generator(Protocol):
    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image]: ...


@runtime_checkable
class BatchGenerator(Generator, Protocol):
    def batch_key(self, request: GenerationRequest) -> str | None: ...

    def generate_batch(self, requests: Sequence[GenerationRequest], on_step: OnStep) -> list[list[Image]]: ...


@runtime_checkable
class ParamsChecker(Protocol):
    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class OnDevice(Protocol):
    device: Any  # a str or a torch.device: str() of it names the device
