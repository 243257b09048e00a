"""Small preview images of latents, cheap enough to make on the generation thread.

A latent pixel is, to a good approximation, a linear function of the RGB pixel it decodes to, so a
matrix of a few numbers per family (latent channels x RGB) plus a bias turns a latent into a
low-resolution image in microseconds, where the real VAE decode takes longer than a denoising step.
The factors are the published ones (see ``FORMATS``); they apply to latents as the pipelines hold
them, scaled by the VAE's ``scaling_factor`` (and shifted by its ``shift_factor``), and give RGB in
[-1, 1]. A family is recognised by its VAE's latent channels and scaling; a latent space nobody
published factors for is shown as the channel mean, stretched to black..white. A user may instead
pass a tiny autoencoder (diffusers' ``AutoencoderTiny``, e.g. TAESD) for sharp previews at the cost
of a small decode; nothing is ever downloaded here.

Latents may arrive packed: FLUX.1 (and QwenImage) hand the step callback sequences of tokens, each
the 2x2 latent pixels of one patch side by side; ``unpack`` puts them back on the latent grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image as PILImage

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "FORMATS",
    "PREVIEW_SIZE",
    "LatentFormat",
    "Previewer",
    "detect_format",
    "latents_to_rgb",
    "packed_grid",
    "unpack",
]

PREVIEW_SIZE = 256
"""Longest side of a preview in pixels (smaller when the image itself is smaller)."""


@dataclass(frozen=True)
class LatentFormat:
    """One family's latent space: how its VAE scales latents, and their linear map to RGB."""

    name: str
    scaling_factor: float
    shift_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]  # one (R, G, B) row per latent channel
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def channels(self) -> int:
        return len(self.rgb_factors)


# Every factor and bias below is from ComfyUI, comfy/latent_formats.py (github.com/Comfy-Org/ComfyUI,
# commit 75399d78ddcc01f46f9b94521b29f1fe8a90ed53), classes SD15, SDXL, SD3 and Flux; ComfyUI applies
# them (latent_preview.py, Latent2RGBPreviewer) to the sampler's x0 in the same scaled latent space as
# diffusers' pipelines, mapping to [-1, 1]. The scaling and shift factors are the published VAEs'
# (each model's vae/config.json; ComfyUI's scale_factor and shift_factor agree).
FORMATS: dict[str, LatentFormat] = {
    "sd1": LatentFormat(  # Stable Diffusion 1.x and 2.x (one VAE): ComfyUI's SD15
        name="sd1",
        scaling_factor=0.18215,
        shift_factor=0.0,
        rgb_factors=(
            (0.3512, 0.2297, 0.3227),
            (0.3250, 0.4974, 0.2350),
            (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177),
        ),
    ),
    "sdxl": LatentFormat(  # ComfyUI's SDXL
        name="sdxl",
        scaling_factor=0.13025,
        shift_factor=0.0,
        rgb_factors=(
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        rgb_bias=(0.1084, -0.0175, -0.0011),
    ),
    "sd3": LatentFormat(  # Stable Diffusion 3 and 3.5: ComfyUI's SD3
        name="sd3",
        scaling_factor=1.5305,
        shift_factor=0.0609,
        rgb_factors=(
            (-0.0922, -0.0175, 0.0749),
            (0.0311, 0.0633, 0.0954),
            (0.1994, 0.0927, 0.0458),
            (0.0856, 0.0339, 0.0902),
            (0.0587, 0.0272, -0.0496),
            (-0.0006, 0.1104, 0.0309),
            (0.0978, 0.0306, 0.0427),
            (-0.0042, 0.1038, 0.1358),
            (-0.0194, 0.0020, 0.0669),
            (-0.0488, 0.0130, -0.0268),
            (0.0922, 0.0988, 0.0951),
            (-0.0278, 0.0524, -0.0542),
            (0.0332, 0.0456, 0.0895),
            (-0.0069, -0.0030, -0.0810),
            (-0.0596, -0.0465, -0.0293),
            (-0.1448, -0.1463, -0.1189),
        ),
        rgb_bias=(0.2394, 0.2135, 0.1925),
    ),
    "flux": LatentFormat(  # FLUX.1, and Z-Image, which uses FLUX.1's VAE: ComfyUI's Flux
        name="flux",
        scaling_factor=0.3611,
        shift_factor=0.1159,
        rgb_factors=(
            (-0.0346, 0.0244, 0.0681),
            (0.0034, 0.0210, 0.0687),
            (0.0275, -0.0668, -0.0433),
            (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329),
            (0.0004, 0.0383, 0.0115),
            (0.0405, 0.0861, 0.0915),
            (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180),
            (0.1008, 0.0755, -0.0421),
            (-0.0515, 0.0201, 0.0011),
            (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749),
            (-0.1264, -0.0522, -0.1103),
            (-0.0280, -0.0881, -0.0499),
            (-0.1262, -0.0982, -0.0778),
        ),
        rgb_bias=(-0.0329, -0.0718, -0.0851),
    ),
}
"""Latent formats by name: SD 1.x/2.x, SDXL, SD3, FLUX.1."""


def _config(component: object) -> Any:
    return getattr(component, "config", None)


def detect_format(pipeline: object) -> LatentFormat | None:
    """The pipeline's latent format, recognised by its VAE's latent channels, scaling and shift.

    Matching the VAE rather than the pipeline class covers every pipeline of a family (img2img,
    ControlNet, fine-tunes) and no pipeline whose latents merely look alike. None when unknown.
    """
    config = _config(getattr(pipeline, "vae", None))
    if config is None:
        return None
    channels = getattr(config, "latent_channels", None)
    scaling = getattr(config, "scaling_factor", None)
    shift = getattr(config, "shift_factor", None) or 0.0
    if not isinstance(scaling, (int, float)):
        return None
    for fmt in FORMATS.values():
        if (
            channels == fmt.channels
            and math.isclose(scaling, fmt.scaling_factor, rel_tol=1e-4)
            and math.isclose(shift, fmt.shift_factor, rel_tol=1e-4, abs_tol=1e-6)
        ):
            return fmt
    return None


def unpack(packed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(batch, tokens, channels * 4)`` packed latents back to ``(batch, channels, 2 * rows, 2 * cols)``.

    FLUX.1 packs each 2x2 patch of latent pixels into one token, channel-major, row by row:
    token ``r * cols + c`` holds channel ``k``'s pixel ``(2r + i, 2c + j)`` at ``k * 4 + i * 2 + j``.
    """
    rows, cols = grid
    batch, tokens, width = packed.shape
    if tokens != rows * cols or width % 4:
        raise ValueError(f"cannot unpack {tuple(packed.shape)} latents onto a {rows}x{cols} grid of 2x2 patches")
    channels = width // 4
    spread = packed.view(batch, rows, cols, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return spread.reshape(batch, channels, rows * 2, cols * 2)


def packed_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of patches for ``tokens`` packed latents of an image ``height`` x ``width``."""
    rows = max(1, round(math.sqrt(tokens * height / width)))
    if tokens % rows:
        raise ValueError(f"{tokens} packed latents do not form a grid for a {width}x{height} image")
    return rows, tokens // rows


def latents_to_rgb(latents: torch.Tensor, fmt: LatentFormat | None) -> torch.Tensor:
    """``(batch, channels, h, w)`` latents to ``(batch, h, w, 3)`` uint8 RGB, on the latents' device.

    With a format: its linear map, [-1, 1] to 0..255. Without: each image's channel mean, stretched
    from its own minimum to its maximum, as grey.
    """
    x = latents.float()
    if fmt is not None and fmt.channels == x.shape[1]:
        factors = torch.tensor(fmt.rgb_factors, device=x.device)
        bias = torch.tensor(fmt.rgb_bias, device=x.device)
        unit = ((torch.einsum("bchw,cr->bhwr", x, factors) + bias + 1) / 2).clamp(0, 1)
    else:
        mean = x.mean(dim=1)
        low = mean.amin(dim=(1, 2), keepdim=True)
        span = (mean.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-6)
        unit = ((mean - low) / span).unsqueeze(-1).expand(-1, -1, -1, 3)
    return (unit * 255).round().to(torch.uint8)


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``longest``."""
    width, height = size
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Previewer:
    """Turns a pipeline's latents into preview images: ``previewer(latents, size=(h, w))``.

    ``pipeline`` gives the latent format (``detect_format``) and the VAE's downscale factor; ``vae``
    is an optional ``AutoencoderTiny`` (or any VAE with ``decode`` and ``config.scaling_factor``)
    decoding the same latents; ``size`` caps the longest side of a preview (``PREVIEW_SIZE``).
    """

    def __init__(self, pipeline: object, *, vae: Any = None, size: int = PREVIEW_SIZE) -> None:
        self.format = detect_format(pipeline)
        self.vae = vae
        self.size = size
        scale = getattr(pipeline, "vae_scale_factor", 8)
        self.vae_scale_factor = scale if isinstance(scale, int) and scale > 0 else 8

    def __repr__(self) -> str:
        how = type(self.vae).__name__ if self.vae is not None else (self.format.name if self.format else "grey")
        return f"Previewer({how}, size={self.size})"

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, *, size: tuple[int, int] | None = None) -> list[Image]:
        """Previews of a batch of latents as the pipeline holds them (packed or not, 4 or 5 dims).

        ``size`` is the image's ``(height, width)`` in pixels: it places packed latents on their
        grid, and the previews keep its aspect ratio. Without it packed latents are taken as square.
        """
        if latents.ndim == 3:
            height, width = size or (1, 1)
            latents = unpack(latents, packed_grid(latents.shape[1], height, width))
        elif latents.ndim == 5:  # (batch, channels, frames, h, w): an image model's one frame
            latents = latents[:, :, 0]
        pixels = latents_to_rgb(latents, self.format) if self.vae is None else self._decode(latents)
        full = (latents.shape[-1] * self.vae_scale_factor, latents.shape[-2] * self.vae_scale_factor)
        target = _fit(full, min(self.size, max(full)))
        images = []
        for frame in pixels.cpu().numpy():
            image = PILImage.fromarray(frame)
            images.append(image if image.size == target else image.resize(target, PILImage.Resampling.BILINEAR))
        return images

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode with the tiny VAE, undoing the pipeline's scaling as the pipelines do before theirs."""
        config = self.vae.config
        parameter = next(self.vae.parameters())
        x = latents.to(device=parameter.device, dtype=parameter.dtype)
        x = x / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        decoded = self.vae.decode(x, return_dict=False)[0]  # (batch, 3, H, W) in [-1, 1]
        unit: torch.Tensor = ((decoded.float() + 1) / 2).clamp(0, 1)
        return (unit.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
