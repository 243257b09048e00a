"""The queue's adapter for any diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, SD3, FLUX.1, Z-Image...).

Parameters are not hard-coded per pipeline class: the pipeline's ``__call__`` signature says what
it takes, so one adapter serves every pipeline whose ``__call__`` takes ``prompt``,
``num_inference_steps``, ``generator`` and ``callback_on_step_end``; a pipeline without them (PixArt-Sigma
has only the older ``callback``) is refused with ``UnsupportedPipeline``. Users say ``steps`` for
``num_inference_steps``; the parameters imgnb itself provides (``_OWNED``) are refused. Family quirks
come from the signature too: SD3's ``prompt_3``, FLUX.1's ``true_cfg_scale`` (a negative prompt is
refused unless it is above 1, because the pipeline would silently ignore it), Z-Image's
``cfg_truncation``. FLUX.1 [dev] takes ``guidance_scale`` as an input of the model (one pass per
step); FLUX.1 [schnell] ignores it.

Previews: while a job runs, ``on_step`` also receives small preview images (see ``preview`` and
``denoised``): the model's current estimate of the finished image, at most one set per
``preview_interval`` seconds, made on the generation thread in well under a millisecond.

Progress and stopping go through ``callback_on_step_end``: it calls ``on_step``, and when that
raises ``JobInterrupted`` the exception leaves the pipeline's loop at once, before the next step and
before the VAE decode (diffusers 0.42's own ``pipe._interrupt`` flag would still decode and return an
image, which must not be stored as a result). The pipeline is reusable after such an exit.

Seeds: every request gets its own ``torch.Generator`` seeded with the request's seed, on the
pipeline's device when that is CUDA and on the CPU otherwise (diffusers' advice for CPU and MPS).
The same seed on the same device and software gives the same pixels; a CUDA seed does not reproduce
a CPU image. A request run inside a batch may differ from the same request run alone by 1/255 in a
few pixels (batched matrix products round differently); re-run alone it reproduces exactly.

Threads: the queue calls a generator from one worker thread per device. A diffusers pipeline holds
per-call state on itself, so one pipeline must never run two calls at once: do not share a pipeline
between two generators that may run concurrently.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch

from ..core.records import GenerationRequest
from ..core.validation import invalid
from ..errors import InvalidJob, UnsupportedPipeline
from .base import OnStep
from .denoised import DenoisedTap
from .loading import free_memory
from .preview import Previewer

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    from PIL.Image import Image

__all__ = ["DiffusersGenerator", "PipelineParams"]

logger = logging.getLogger(__name__)

_REQUIRED = ("prompt", "num_inference_steps", "generator", "callback_on_step_end")

_OWNED = frozenset(
    {
        "prompt",  # the job's prompt
        "num_inference_steps",  # given as ``steps``
        "generator",  # built from the job's seed
        "latents",  # drawn from the job's seed
        "callback_on_step_end",  # drives progress and cancellation
        "callback_on_step_end_tensor_inputs",
        "callback",  # deprecated callbacks: they would bypass cancellation
        "callback_steps",
        "output_type",  # the queue stores PIL images
        "return_dict",
        "ip_adapter_image",  # images and tensors cannot be stored as JSON job parameters
        "negative_ip_adapter_image",
    }
)
"""Pipeline arguments a job may not set; so are all ``*_embeds`` tensors."""

_STEPS = "steps"

Check = Callable[["PipelineParams", str, Any], Any]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_steps(gen: PipelineParams, field: str, value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= gen.max_steps:
        raise invalid(field, value, f"an integer from 1 to {gen.max_steps}")
    return int(value)


def _check_size(gen: PipelineParams, field: str, value: Any) -> int:
    if not _is_int(value) or value <= 0 or value % gen.size_multiple:
        raise invalid(field, value, f"a positive multiple of {gen.size_multiple} (pixels)")
    return int(value)


def _check_non_negative(gen: PipelineParams, field: str, value: Any) -> float:
    if not _is_real(value) or value < 0:
        raise invalid(field, value, "a finite number >= 0")
    return float(value)


def _check_count(gen: PipelineParams, field: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise invalid(field, value, "an integer >= 1")
    return int(value)


def _check_clip_skip(gen: PipelineParams, field: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise invalid(field, value, "an integer >= 0 (text-encoder layers to skip)")
    return int(value)


def _check_text(gen: PipelineParams, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(field, value, "a string")
    return value


_CHECKS: dict[str, Check] = {
    _STEPS: _check_steps,
    "width": _check_size,
    "height": _check_size,
    "guidance_scale": _check_non_negative,
    "true_cfg_scale": _check_non_negative,
    "max_sequence_length": _check_count,
    "guidance_rescale": _check_non_negative,
    "eta": _check_non_negative,
    "num_images_per_prompt": _check_count,
    "clip_skip": _check_clip_skip,
}
"""Checks for the common parameters; others go to the pipeline as given (the core checks JSON)."""


def _takes_previews(on_step: OnStep) -> bool:
    """Whether ``on_step`` accepts a third argument: older callbacks take ``(step, total)`` only."""
    try:
        inspect.signature(on_step).bind(1, 1, None)
    except (TypeError, ValueError):  # ValueError: a callable with no inspectable signature
        return False
    return True


def _is_text(name: str) -> bool:
    """Texts given per prompt (``negative_prompt``, SDXL's ``prompt_2``...): lists in a batched call."""
    stem = name.removeprefix("negative_")
    return name == "negative_prompt" or (stem.startswith("prompt_") and stem.removeprefix("prompt_").isdigit())


class PipelineParams:
    """The job parameters one pipeline takes, read from its class's ``__call__`` signature, and their checks.

    A ``DiffusersGenerator`` has the exact ones of its pipeline (``job_params``). ``of_class`` makes them
    from a pipeline class alone, so that jobs for a model not loaded yet are checked at submit (a
    loader declares its class with ``imgnb.loader``): the class says which parameters exist and how
    each is checked, but not the pipeline's size grid nor its scheduler's training steps, which are
    then taken as the common 8 pixels and 1000 steps, and checked exactly again when the job runs.
    A class without ``callback_on_step_end`` is refused with ``UnsupportedPipeline``.
    """

    def __init__(
        self,
        pipeline_class: type,
        parameters: Mapping[str, inspect.Parameter],
        *,
        max_steps: int = 1000,
        size_multiple: int = 8,
    ) -> None:
        missing = [arg for arg in _REQUIRED if arg not in parameters]
        if missing:
            raise UnsupportedPipeline(
                f"{pipeline_class.__name__}.__call__ lacks {', '.join(missing)}: imgnb needs {', '.join(_REQUIRED)}. "
                "callback_on_step_end is how imgnb reports each step and stops a cancelled or timed-out job before "
                "the next one; the older callback/callback_steps cannot stop a run before the image is decoded."
            )
        self.pipeline_name = pipeline_class.__name__
        self.parameters = parameters
        self.accepted = frozenset(
            arg
            for arg, param in parameters.items()
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            and arg not in _OWNED
            and not arg.endswith("_embeds")
        ) | {_STEPS}
        default_steps = parameters["num_inference_steps"].default
        self.default_steps: int = default_steps if _is_int(default_steps) else 50
        self.max_steps = max_steps
        self.size_multiple = size_multiple

    @classmethod
    def of_class(cls, pipeline_class: type) -> PipelineParams:
        """From the class alone: nothing is loaded or built."""
        parameters = list(inspect.signature(pipeline_class.__call__).parameters.values())[1:]  # without self
        return cls(pipeline_class, {p.name: p for p in parameters})

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check a job's parameters; returns them under the user's names, numbers normalised.

        ``None`` means "the pipeline's default" and is dropped.
        """
        checked: dict[str, Any] = {}
        for field, value in params.items():
            if field not in self.accepted:
                raise self._unknown(field, value)
            if value is None:
                continue
            if field in _CHECKS:
                checked[field] = _CHECKS[field](self, field, value)
            elif _is_text(field):
                checked[field] = _check_text(self, field, value)
            else:
                checked[field] = value
        self._check_true_cfg(checked)
        return checked

    def _check_true_cfg(self, params: Mapping[str, Any]) -> None:
        """FLUX.1 and QwenImage use a negative prompt only with ``true_cfg_scale > 1`` (two model passes
        a step); below, they ignore it without a word. Refuse the job rather than ignore what it asked."""
        if "true_cfg_scale" not in self.parameters:
            return
        scale = params.get("true_cfg_scale", self.parameters["true_cfg_scale"].default)
        for field, value in params.items():
            if field.startswith("negative_prompt") and _is_text(field) and not (_is_real(scale) and scale > 1):
                why = f"only with true_cfg_scale > 1 ({self.pipeline_name} ignores it otherwise)"
                raise invalid(field, value, why)

    def _unknown(self, field: str, value: object) -> InvalidJob:
        names = ", ".join(sorted(self.accepted))
        if field == "num_inference_steps":
            return invalid(field, value, f"give it as {_STEPS}=...")
        if field in _OWNED or field.endswith("_embeds"):
            return invalid(field, value, f"not a job parameter (imgnb sets it); job parameters: {names}")
        return invalid(field, value, f"a parameter {self.pipeline_name} takes: {names}")

    def batch_key(self, model: str, request: GenerationRequest) -> str | None:
        """Equal for requests to ``model`` whose parameters agree except for their prompts, texts and seeds."""
        try:
            return self.key(model, self.validate(request.params))
        except (InvalidJob, TypeError, ValueError):
            return None  # it runs alone, and fails there with its own error

    @staticmethod
    def key(model: str, params: Mapping[str, Any]) -> str:
        shared = {field: value for field, value in params.items() if not _is_text(field)}
        texts = sorted(field for field in params if _is_text(field))
        key = {"model": model, "params": shared, "texts": texts}
        return json.dumps(key, sort_keys=True, allow_nan=False)


class DiffusersGenerator:
    """Runs queue jobs on a diffusers pipeline: ``DiffusersGenerator(pipe)``.

    ``device`` names the device the pipeline runs on, for the queue's one-job-per-device lock; it
    defaults to the pipeline's execution device. The pipeline is not moved: call ``pipe.to(...)``
    (or enable offloading) first. ``name`` is the model recorded with each image; it defaults to
    ``pipe.name_or_path``. The pipeline's progress bar is switched off: the queue reports progress.

    Previews: with ``previews=True`` (the default) a step's ``on_step`` call carries, at most once
    per ``preview_interval`` seconds (the first step always), a list of small preview images, one
    per request of the call; other steps carry None. ``preview_vae`` is an optional
    ``AutoencoderTiny`` on the latents of this pipeline's family (TAESD for SD 1.x, TAESDXL, TAESD3,
    TAEF1...) for sharper previews; without it a linear map of the latents is used and nothing is
    downloaded. An ``on_step`` that takes only ``(step, total)`` gets no previews, and costs none.
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        *,
        device: str | None = None,
        name: str | None = None,
        previews: bool = True,
        preview_interval: float = 0.25,
        preview_vae: Any = None,
    ) -> None:
        scheduler_config = getattr(getattr(pipeline, "scheduler", None), "config", None)
        self.job_params = PipelineParams(
            type(pipeline),
            inspect.signature(pipeline.__call__).parameters,
            max_steps=int(getattr(scheduler_config, "num_train_timesteps", None) or 1000),
            size_multiple=self._size_multiple(pipeline),
        )
        """The job parameters the pipeline takes, and their checks."""
        runs_on = self._execution_device(pipeline)
        if device is not None and torch.device(device).type != runs_on.type:
            raise ValueError(f"device={device!r} but the pipeline runs on {runs_on}; move it with pipe.to({device!r})")
        if not (_is_real(preview_interval) and preview_interval >= 0):
            raise ValueError(f"preview_interval={preview_interval!r}: give a finite number of seconds >= 0")
        self.pipeline = pipeline
        self.device = device if device is not None else str(runs_on)
        self.name: str = name or getattr(pipeline, "name_or_path", None) or type(pipeline).__name__
        self.preview_interval = float(preview_interval)
        self.previewer: Previewer | None = None
        """Makes the previews; None when they are off. ``previewer.format`` names the latent map in use."""
        if previews:
            self._check_preview_vae(pipeline, preview_vae)
            self.previewer = Previewer(pipeline, vae=preview_vae)
        self._preview_failed = False
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]

    @staticmethod
    def _size_multiple(pipeline: DiffusionPipeline) -> int:
        """diffusers' pipelines refuse (or silently resize) sizes off their grid: multiples of 8; of
        ``vae_scale_factor * patch_size`` for transformers that patchify latents (SD3); of their image
        processor's factor for pipelines that pack 2x2 latents into tokens (FLUX.1, Z-Image: 16)."""
        patch = getattr(pipeline, "patch_size", 1)
        scale = int(getattr(pipeline, "vae_scale_factor", 8)) * (patch if _is_int(patch) else 1)
        processor = getattr(getattr(pipeline, "image_processor", None), "config", None)
        packed = getattr(processor, "vae_scale_factor", 1)
        return math.lcm(8, scale, packed if _is_int(packed) and packed > 0 else 1)

    @staticmethod
    def _check_preview_vae(pipeline: DiffusionPipeline, vae: Any) -> None:
        if vae is None:
            return
        wanted = getattr(getattr(getattr(pipeline, "vae", None), "config", None), "latent_channels", None)
        given = getattr(getattr(vae, "config", None), "latent_channels", None)
        if not callable(getattr(vae, "decode", None)) or given is None:
            raise TypeError(f"preview_vae={vae!r}: give an AutoencoderTiny (a VAE with decode and config)")
        if wanted is not None and given != wanted:
            raise ValueError(
                f"preview_vae decodes {given}-channel latents, {type(pipeline).__name__} makes {wanted}-channel ones"
            )

    def __repr__(self) -> str:
        return f"DiffusersGenerator({type(self.pipeline).__name__}, name={self.name!r}, device={self.device!r})"

    @property
    def parameters(self) -> frozenset[str]:
        """The parameter names a job may give."""
        return self.job_params.accepted

    @property
    def default_steps(self) -> int:
        return self.job_params.default_steps

    @property
    def max_steps(self) -> int:
        return self.job_params.max_steps

    @property
    def size_multiple(self) -> int:
        return self.job_params.size_multiple

    # -- validation and batching ---------------------------------------------------------------

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check a job's parameters; returns them under the user's names, numbers normalised.

        ``None`` means "the pipeline's default" and is dropped.
        """
        return self.job_params.validate(params)

    def batch_key(self, request: GenerationRequest) -> str | None:
        """Equal for requests whose parameters agree except for their prompts, texts and seeds."""
        return self.job_params.batch_key(self.name, request)

    def _key(self, params: Mapping[str, Any]) -> str:
        return self.job_params.key(self.name, params)

    # -- running -------------------------------------------------------------------------------

    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image]:
        params = self.validate_params(request.params)
        texts = {field: value for field, value in params.items() if _is_text(field)}
        # One prompt and one generator, exactly as a bare pipe(prompt, generator=...) call.
        return self._run(request.prompt, texts, self._seeded(request.seed), params, on_step, firsts=[0])

    def generate_batch(self, requests: Sequence[GenerationRequest], on_step: OnStep) -> list[list[Image]]:
        """One pipeline call for requests with the same ``batch_key``; their images, per request."""
        if len(requests) <= 1:
            return [self(request, on_step) for request in requests]
        all_params = [self.validate_params(request.params) for request in requests]
        if len({self._key(params) for params in all_params}) != 1:
            raise ValueError("generate_batch needs requests with one batch_key; run the others apart")
        params = all_params[0]
        per_prompt = int(params.get("num_images_per_prompt", 1))
        texts = {field: [p[field] for p in all_params] for field in params if _is_text(field)}
        # One generator per image: a request's images are drawn from its own seed, one after another.
        generators: list[torch.Generator] = []
        for request in requests:
            generators += [self._seeded(request.seed)] * per_prompt
        prompts = [request.prompt for request in requests]
        firsts = [i * per_prompt for i in range(len(requests))]
        images = self._run(prompts, texts, generators, params, on_step, firsts=firsts)
        return [images[i * per_prompt : (i + 1) * per_prompt] for i in range(len(requests))]

    def _run(
        self,
        prompt: str | list[str],
        texts: Mapping[str, str | list[str]],
        generator: torch.Generator | list[torch.Generator],
        params: Mapping[str, Any],
        on_step: OnStep,
        *,
        firsts: list[int],
    ) -> list[Image]:
        """One pipeline call. ``firsts``: the index, in the call's batch, of each request's first image."""
        steps = int(params.get(_STEPS, self.default_steps))
        previewing = self.previewer is not None and _takes_previews(on_step)
        size = self._image_size(params)
        tap = DenoisedTap(getattr(self.pipeline, "scheduler", None)) if previewing else None
        last_preview = -math.inf

        def on_step_end(pipe: Any, index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal last_preview
            # Second-order schedulers (Heun, DPM2) call back about twice per step: count timesteps.
            total = getattr(pipe, "num_timesteps", None)
            step, total = index + 1, total if _is_int(total) and total > index else steps
            if not previewing:
                on_step(step, total)
                return callback_kwargs  # the loop pops the latents from what it gets back
            previews = None
            if time.monotonic() - last_preview >= self.preview_interval:
                assert tap is not None
                previews = self._previews(tap.estimate(), callback_kwargs.get("latents"), firsts, size)
                last_preview = time.monotonic()
            on_step(step, total, previews)
            return callback_kwargs

        kwargs = self._pipeline_kwargs(params)
        kwargs.update(texts)
        # DiffusionPipeline declares no __call__; every pipeline class defines its own.
        call = cast(Callable[..., Any], self.pipeline)
        try:
            with tap if tap is not None else nullcontext():
                output = call(
                    prompt=prompt,
                    generator=generator,
                    callback_on_step_end=on_step_end,
                    output_type="pil",
                    return_dict=True,
                    **kwargs,
                )
        except torch.cuda.OutOfMemoryError as exc:  # the same class as torch.OutOfMemoryError since torch 2.5
            self._reset()
            self._free_memory(exc)
            raise  # the queue retries it, with the memory given back
        except BaseException:
            self._reset()
            raise
        images: list[Image] = list(output.images)
        self._annotate(images, getattr(output, "nsfw_content_detected", None))
        return images

    def _image_size(self, params: Mapping[str, Any]) -> tuple[int, int] | None:
        """The call's ``(height, width)``: the job's, else the pipeline's default where it says it."""
        default_latent = getattr(self.pipeline, "default_sample_size", None)
        scale = getattr(self.pipeline, "vae_scale_factor", None)
        default = default_latent * scale if _is_int(default_latent) and _is_int(scale) else None
        height, width = params.get("height", default), params.get("width", default)
        return (height, width) if _is_int(height) and _is_int(width) else None

    def _previews(
        self, estimate: torch.Tensor | None, latents: object, firsts: list[int], size: tuple[int, int] | None
    ) -> list[Image] | None:
        """Each request's first image, previewed from x0 where the scheduler gives it, else the latents.

        A preview must never fail a job: a failure is logged once and that step has no preview.
        """
        chosen = estimate if estimate is not None else latents
        if self.previewer is None or not isinstance(chosen, torch.Tensor) or max(firsts) >= len(chosen):
            return None
        try:
            return self.previewer(chosen[firsts], size=size)
        except Exception:
            if not self._preview_failed:
                self._preview_failed = True
                logger.warning("imgnb: no previews from %s", self, exc_info=True)
            return None

    def _pipeline_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for field, value in params.items():
            if _is_text(field):
                continue
            name = "num_inference_steps" if field == _STEPS else field
            # JSON has no tuples; SDXL's size conditioning adds tuples together.
            if isinstance(value, list) and "tuple" in str(self.job_params.parameters[name].annotation):
                value = tuple(value)
            kwargs[name] = value
        return kwargs

    def _annotate(self, images: list[Image], nsfw: object) -> None:
        scheduler = type(getattr(self.pipeline, "scheduler", None)).__name__
        flags = nsfw if isinstance(nsfw, list) and len(nsfw) == len(images) else [None] * len(images)
        for image, flag in zip(images, flags, strict=True):
            image.info["model"] = self.name
            image.info["scheduler"] = scheduler
            if flag is not None:  # a safety checker blacked the image out
                image.info["nsfw_content_detected"] = str(bool(flag))

    def _seeded(self, seed: int) -> torch.Generator:
        runs_on = self._execution_device(self.pipeline)
        device = runs_on if runs_on.type == "cuda" else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _execution_device(pipeline: DiffusionPipeline) -> torch.device:
        # Under model offloading ``pipe.device`` says "cpu"; the execution device is where it computes.
        device = getattr(pipeline, "_execution_device", None) or getattr(pipeline, "device", None)
        return torch.device(device if device is not None else "cpu")

    def _reset(self) -> None:
        """After a call that raised: offload models and reset hooks as a finished call would have."""
        free_hooks = getattr(self.pipeline, "maybe_free_model_hooks", None)
        if free_hooks is None:
            return
        try:
            free_hooks()
        except Exception:  # the job's own exception says what happened to it; keep that one
            logger.exception("could not reset %s after a failed call", self)

    def _free_memory(self, exc: BaseException) -> None:
        # The traceback's frames hold the call's tensors; the cache can only be emptied once they go.
        traceback.clear_frames(exc.__traceback__)
        free_memory(str(self._execution_device(self.pipeline)))
