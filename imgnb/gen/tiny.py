"""Real diffusers pipelines with tiny random weights, one per major family, built offline in well under a second.

Tests, notebooks and Binder need generators that exercise the genuine diffusers code paths
(tokenizers, text encoders, denoising loop, scheduler, VAE decode, callbacks) without downloading a
checkpoint or a GPU. The images are noise, but they are reproducible noise: every component is
built under its own fixed seed, so two builds, even in two processes, hold identical weights and
give identical pixels for the same job seed. The builders live in ``families``.
"""

# diffusers' pipeline methods carry no annotations that mypy accepts as typed.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

from .quiet import quiet_logs

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

__all__ = ["TINY_FAMILIES", "TINY_MODEL_NAME", "tiny_pipeline"]

TINY_FAMILIES = ("sd", "sdxl", "sd3", "flux", "z-image", "pixart-sigma")
"""The families ``tiny_pipeline`` builds. imgnb runs all but ``pixart-sigma``, whose pipeline has no
``callback_on_step_end``: it is there to show how imgnb refuses such a pipeline."""

TINY_MODEL_NAME = "imgnb/tiny-sd"
"""What ``tiny_pipeline().name_or_path`` says, and so what its images record as their model;
another family's pipeline is named ``imgnb/tiny-<family>``."""


@overload
def tiny_pipeline(family: Literal["sd"] = "sd", *, device: str = "cpu") -> StableDiffusionPipeline: ...


@overload
def tiny_pipeline(family: str, *, device: str = "cpu") -> DiffusionPipeline: ...


def tiny_pipeline(family: str = "sd", *, device: str = "cpu") -> DiffusionPipeline:
    """The family's real pipeline class with tiny random weights, identical on every call.

    ``family`` is one of ``TINY_FAMILIES``: ``"sd"`` (Stable Diffusion 1.x, 1.7 M parameters),
    ``"sdxl"``, ``"sd3"``, ``"flux"`` (FLUX.1 [dev]), ``"z-image"``, ``"pixart-sigma"``. Each makes
    64x64 images by default (Z-Image: give ``width`` and ``height``, its pipeline's default is
    1024); 4 steps take a few tenths of a second on one CPU core. It is moved to ``device`` after
    it is built, so the weights do not depend on it. The progress bar is off: imgnb reports
    progress itself. Nothing is downloaded, and nothing is logged: transformers' notices about
    missing optional packages are silenced for the build only (see ``quiet_logs``).
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"family={family!r} is not one of {', '.join(TINY_FAMILIES)}")
    with quiet_logs():  # torch and diffusers load here, not when this module is imported
        import torch

        from .families import BUILDERS

        pipe = BUILDERS[family]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them: a constructed T5 would apply dropout
    pipe.register_to_config(_name_or_path=f"imgnb/tiny-{family}")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe
