"""One tiny random-weight pipeline per family people use today, assembled from ``tiny_parts``.

Each builder returns the family's real diffusers pipeline class, wired exactly as the published
model is (the same text encoders and tokenizers in the same slots, the same scheduler family, the
same latent channels and latent scaling), with every part a few thousand times smaller. Every
module is built under its own fixed seed, so two builds hold identical weights. Import this module
inside ``quiet_logs()``: importing the pipeline classes makes transformers log notices.
"""

# diffusers' constructors carry no annotations that mypy accepts as typed.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import PixArtSigmaPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.z_image.pipeline_z_image import ZImagePipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

from .tiny_parts import (
    autoencoder,
    clip_text_encoder,
    clip_tokenizer,
    qwen3_text_encoder,
    qwen_tokenizer,
    seeded,
    t5_text_encoder,
    t5_tokenizer,
)

__all__ = ["BUILDERS"]

_SAMPLE_SIZE = 32  # latents of 32x32 with a two-block autoencoder: 64x64 images by default

# The published models' latent scaling (each model's vae/config.json): SD 1.x/2.x, SDXL, SD3, and
# FLUX.1, whose autoencoder Z-Image reuses.
_SD_SCALE = 0.18215
_SDXL_SCALE = 0.13025
_SD3_SCALE, _SD3_SHIFT = 1.5305, 0.0609
_FLUX_SCALE, _FLUX_SHIFT = 0.3611, 0.1159


def _flux_vae() -> AutoencoderKL:
    return autoencoder(latent_channels=16, scaling_factor=_FLUX_SCALE, shift_factor=_FLUX_SHIFT)


def _sd_scheduler() -> DDIMScheduler:
    # Stable Diffusion 1.x's schedule; DDIM has no randomness of its own at eta=0.
    scheduler: DDIMScheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return scheduler


def sd() -> StableDiffusionPipeline:
    """Stable Diffusion 1.x: one CLIP text encoder, a UNet, a 4-channel autoencoder, DDIM."""
    tokenizer = clip_tokenizer()
    unet = seeded(
        3,
        lambda: UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        ),
    )
    # Untyped on purpose: the pipeline's annotations refuse None for the optional safety checker.
    components: dict[str, Any] = {
        "vae": seeded(1, lambda: autoencoder(latent_channels=4, scaling_factor=_SD_SCALE)),
        "text_encoder": seeded(2, lambda: clip_text_encoder(len(tokenizer))),
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": _sd_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
    }
    return StableDiffusionPipeline(**components, requires_safety_checker=False)


def sdxl() -> StableDiffusionXLPipeline:
    """SDXL: two CLIP text encoders (the second with a projection), size conditioning, Euler."""
    tokenizer = clip_tokenizer()
    unet = seeded(
        13,
        lambda: UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six size numbers, then the pooled text
            cross_attention_dim=32 + 32,  # both encoders' hidden states, side by side
        ),
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    components: dict[str, Any] = {
        "vae": seeded(11, lambda: autoencoder(latent_channels=4, scaling_factor=_SDXL_SCALE)),
        "text_encoder": seeded(12, lambda: clip_text_encoder(len(tokenizer))),
        "text_encoder_2": seeded(14, lambda: clip_text_encoder(len(tokenizer), projection=32)),
        "tokenizer": tokenizer,
        "tokenizer_2": clip_tokenizer(),
        "unet": unet,
        "scheduler": scheduler,
    }
    return StableDiffusionXLPipeline(**components, add_watermarker=False)


def sd3() -> StableDiffusion3Pipeline:
    """SD3: two CLIP encoders and a T5, an MMDiT over 2x2 patches of 16-channel latents, flow matching."""
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    transformer = seeded(
        23,
        lambda: SD3Transformer2DModel(
            sample_size=_SAMPLE_SIZE,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=64,  # the T5's width, which the two CLIPs' 32 + 32 are padded to
            pooled_projection_dim=64,  # the two CLIPs' pooled projections, side by side
            pos_embed_max_size=32,
        ),
    )
    components: dict[str, Any] = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": seeded(21, lambda: autoencoder(latent_channels=16, scaling_factor=_SD3_SCALE, shift_factor=_SD3_SHIFT)),
        "text_encoder": seeded(22, lambda: clip_text_encoder(len(clip), projection=32)),
        "tokenizer": clip,
        "text_encoder_2": seeded(24, lambda: clip_text_encoder(len(clip), projection=32)),
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": seeded(25, lambda: t5_text_encoder(len(t5), hidden=64)),
        "tokenizer_3": t5,
    }
    return StableDiffusion3Pipeline(**components)


def flux() -> FluxPipeline:
    """FLUX.1 [dev]: a CLIP and a T5, guidance distilled into the transformer, 2x2-packed latents."""
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    transformer = seeded(
        33,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16 * 4,  # 16 latent channels, packed 2x2 into each token
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # the T5's width
            pooled_projection_dim=32,  # the CLIP's pooled output
            guidance_embeds=True,  # [dev]: guidance_scale is an input of the model, not two passes
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    components: dict[str, Any] = {
        "scheduler": scheduler,
        "vae": seeded(
            31, lambda: autoencoder(latent_channels=16, scaling_factor=_FLUX_SCALE, shift_factor=_FLUX_SHIFT)
        ),
        "text_encoder": seeded(32, lambda: clip_text_encoder(len(clip))),
        "tokenizer": clip,
        "text_encoder_2": seeded(34, lambda: t5_text_encoder(len(t5), hidden=32)),
        "tokenizer_2": t5,
        "transformer": transformer,
    }
    pipe = FluxPipeline(**components)
    pipe.default_sample_size = _SAMPLE_SIZE  # the published 128 would make 256-pixel images here
    return pipe


def _z_image_transformer() -> ZImageTransformer2DModel:
    transformer: ZImageTransformer2DModel = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,  # the Qwen3 encoder's width
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    # Its two padding tokens are allocated with torch.empty: whatever memory held. Fix them.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    return transformer


def z_image() -> ZImagePipeline:
    """Z-Image: a Qwen3 text encoder over a chat-templated prompt, a single-stream DiT, FLUX's autoencoder.

    Its pipeline has no default size of its own but 1024x1024 (65 536 tokens for this transformer):
    give ``width`` and ``height``.
    """
    tokenizer = qwen_tokenizer()
    components: dict[str, Any] = {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": seeded(
            41, lambda: autoencoder(latent_channels=16, scaling_factor=_FLUX_SCALE, shift_factor=_FLUX_SHIFT)
        ),
        "text_encoder": seeded(42, lambda: qwen3_text_encoder(len(tokenizer), hidden=16)),
        "tokenizer": tokenizer,
        "transformer": seeded(43, _z_image_transformer),
    }
    return ZImagePipeline(**components)


def pixart_sigma() -> PixArtSigmaPipeline:
    """PixArt-Sigma: a T5 and a DiT. Its ``__call__`` has no ``callback_on_step_end``, so imgnb
    refuses it; it is here to show that refusal."""
    t5 = t5_tokenizer()
    transformer = seeded(
        53,
        lambda: PixArtTransformer2DModel(
            sample_size=_SAMPLE_SIZE,
            num_layers=1,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,  # the T5's width
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,  # PixArt also predicts the variance
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ),
    )
    components: dict[str, Any] = {
        "tokenizer": t5,
        "text_encoder": seeded(54, lambda: t5_text_encoder(len(t5), hidden=32)),
        "vae": seeded(51, lambda: autoencoder(latent_channels=4, scaling_factor=_SD_SCALE)),
        "transformer": transformer,
        "scheduler": _sd_scheduler(),
    }
    return PixArtSigmaPipeline(**components)


BUILDERS: Mapping[str, Callable[[], DiffusionPipeline]] = {
    "sd": sd,
    "sdxl": sdxl,
    "sd3": sd3,
    "flux": flux,
    "z-image": z_image,
    "pixart-sigma": pixart_sigma,
}
"""Family name -> builder; ``tiny_pipeline(family)`` names, moves and quiets the result."""
