"""The model's current guess at the finished latents (x0), read from the scheduler during a pipeline call.

A preview of the latents a step callback receives shows mostly noise until the last steps; the
model's prediction of the clean latents shows the picture from the first steps on. Diffusers'
step callbacks receive only the noisy latents, so ``DenoisedTap`` watches ``scheduler.step`` for
the length of one call (an instance attribute shadowing the method, removed afterwards) and keeps
the latest step's inputs and output. ``estimate()`` then gives x0, computed only when asked:

1. the scheduler's own ``pred_original_sample`` (DDIM, DDPM, Euler, Euler ancestral, Heun, LMS,
   KDPM2...) or ``denoised`` (LCM), which it computes anyway;
2. flow matching (``FlowMatchEulerDiscreteScheduler``: SD3, FLUX.1, Z-Image, QwenImage):
   ``x0 = x_t - sigma_t * v``, with the sigma of the step just taken;
3. schedulers on the variance-preserving schedule (DPM-Solver++, UniPC, DEIS, PNDM): from the noise
   (or v) prediction and ``alphas_cumprod[t]``;
4. otherwise None: the caller previews the noisy latents instead.

The tap never changes what the pipeline computes: it calls the real ``step`` with the same
arguments, asking for the scheduler's output object and handing the pipeline the tuple it asked
for (the same values: ``BaseOutput.to_tuple`` is how every scheduler builds it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.utils.outputs import BaseOutput

__all__ = ["DenoisedTap", "x0_from_noise", "x0_from_velocity"]


def x0_from_velocity(sample: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching: ``x_t = (1 - sigma) x0 + sigma noise`` and ``v = noise - x0``, so ``x0 = x_t - sigma v``."""
    return sample - sigma * velocity


def x0_from_noise(sample: torch.Tensor, prediction: torch.Tensor, alpha_cumprod: float, kind: str) -> torch.Tensor:
    """Variance-preserving: ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``; ``kind`` is the scheduler's
    ``prediction_type``: "epsilon" (the noise), "v_prediction" or "sample" (x0 itself)."""
    a, b = math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod)
    if kind == "epsilon":
        return (sample - b * prediction) / a
    if kind == "v_prediction":
        return a * sample - b * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"prediction_type={kind!r} is not a variance-preserving prediction")


class DenoisedTap:
    """``with DenoisedTap(pipe.scheduler) as tap: pipe(...)``; in a step callback, ``tap.estimate()``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._step: Callable[..., Any] | None = getattr(scheduler, "step", None)
        self._signature = inspect.signature(self._step) if callable(self._step) else None
        self._installed = False
        self._last: tuple[Any, torch.Tensor, torch.Tensor, Any, int | None] | None = None

    def __enter__(self) -> DenoisedTap:
        signature = self._signature
        if signature is not None and {"model_output", "timestep", "sample"} <= signature.parameters.keys():
            self.scheduler.step = self._tapped
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._installed:
            del self.scheduler.step  # the class's method again
            self._installed = False
        self._last = None  # let the call's tensors go

    def _tapped(self, *args: Any, **kwargs: Any) -> Any:
        assert self._step is not None and self._signature is not None
        bound = self._signature.bind(*args, **kwargs)
        wants_object = bound.arguments.get("return_dict", True)
        if "return_dict" in self._signature.parameters:
            bound.arguments["return_dict"] = True
        out = self._step(*bound.args, **bound.kwargs)
        self._last = (
            out,
            bound.arguments["model_output"],
            bound.arguments["sample"],
            bound.arguments["timestep"],
            self._index_taken(),
        )
        if wants_object or not isinstance(out, BaseOutput):
            return out
        return out.to_tuple()

    def _index_taken(self) -> int | None:
        """Flow matching: the index of the step just taken (the scheduler's has moved on by one)."""
        scheduler = self.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.step_index is None:
            return None
        return int(scheduler.step_index) - 1

    def estimate(self) -> torch.Tensor | None:
        """x0 as of the latest step, in the same layout as the pipeline's latents (packed or not)."""
        if self._last is None:
            return None
        out, prediction, sample, timestep, flow_index = self._last
        for field in ("pred_original_sample", "denoised"):
            given = getattr(out, field, None)
            if isinstance(given, torch.Tensor):
                return given
        if flow_index is not None:  # sigmas stay put during a call: read only when asked
            return x0_from_velocity(sample, prediction, float(self.scheduler.sigmas[flow_index]))
        return self._from_schedule(prediction, sample, timestep)

    def _from_schedule(self, prediction: torch.Tensor, sample: torch.Tensor, timestep: Any) -> torch.Tensor | None:
        alphas = getattr(self.scheduler, "alphas_cumprod", None)
        config = getattr(self.scheduler, "config", None)
        kind = getattr(config, "prediction_type", None)
        if not isinstance(alphas, torch.Tensor) or kind not in ("epsilon", "v_prediction", "sample"):
            return None
        t = int(timestep)
        if not 0 <= t < len(alphas):
            return None
        return x0_from_noise(sample, prediction, float(alphas[t]), kind)
