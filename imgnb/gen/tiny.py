"""A real Stable Diffusion pipeline with tiny random weights, built offline in about 0.1 s.

Tests, notebooks and Binder need a generator that exercises the genuine diffusers code path
(tokenizer, text encoder, UNet loop, scheduler, VAE decode, callbacks) without downloading a
checkpoint or a GPU. The images are noise, but they are reproducible noise: every component is
built under its own fixed seed, so two builds, even in two processes, hold identical weights and
give identical pixels for the same job seed.
"""

# diffusers' constructors and config helpers carry no annotations that mypy accepts as typed.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

# Imported from their modules: through ``diffusers``' lazy top level, type checkers see placeholders.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = ["TINY_MODEL_NAME", "tiny_pipeline"]

TINY_MODEL_NAME = "imgnb/tiny-sd"
"""What ``pipe.name_or_path`` says, and so what generated images record as their model."""

_MAX_TOKENS = 77  # CLIP's context length, which diffusers pads every prompt to
_HIDDEN = 32  # width of the text encoder, and so the UNet's cross-attention width

_T = TypeVar("_T")


def _seeded(seed: int, build: Callable[[], _T]) -> _T:
    """Build a module from a fixed seed without disturbing the caller's global RNG state.

    Module constructors draw their initial weights from torch's global generator, so it is reseeded
    for the build and restored afterwards. A thread drawing from the global CPU generator during
    the build (about 0.1 s) would change the weights: build before starting work in other threads.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with no merges: every byte of a word is one token, so any prompt tokenizes.

    Built from in-memory ``vocab``/``merges``: in transformers 5, ``CLIPTokenizer(vocab_file=...,
    merges_file=...)`` ignores the files and silently gives a tokenizer that knows only its
    special tokens, so that every prompt encodes alike.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # BPE marks the last symbol of each word with "</w>", so each byte needs a word-final twin.
    symbols = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_MAX_TOKENS)


def _unet() -> UNet2DConditionModel:
    unet: UNet2DConditionModel = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,  # latents of 32x32, i.e. 64x64 images by default
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
    )
    return unet


def _vae() -> AutoencoderKL:
    vae: AutoencoderKL = AutoencoderKL(
        block_out_channels=(32, 64),  # two blocks: vae_scale_factor 2
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    return vae


def _text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,  # CLIP pads with its end-of-text token
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=_MAX_TOKENS,
    )
    return CLIPTextModel(config)


def _scheduler() -> DDIMScheduler:
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


def tiny_pipeline(*, device: str = "cpu") -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of 1.7 M random parameters, identical on every call.

    It makes 64x64 images by default (any multiple of 8 works): 4 steps take about 0.25 s on one
    CPU core. It is moved to ``device`` after it is built, so the weights do not depend on it. It
    round-trips through ``save_pretrained`` / ``StableDiffusionPipeline.from_pretrained`` (which
    names it after the folder). The progress bar is off: imgnb reports progress itself.
    """
    tokenizer = _tokenizer()
    # Untyped on purpose: the pipeline's annotations refuse None for the optional safety checker.
    components: dict[str, Any] = {
        "vae": _seeded(1, _vae),
        "text_encoder": _seeded(2, lambda: _text_encoder(len(tokenizer))),
        "tokenizer": tokenizer,
        "unet": _seeded(3, _unet),
        "scheduler": _scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
    }
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=TINY_MODEL_NAME)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe
