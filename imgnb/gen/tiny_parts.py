"""The parts the tiny pipelines are built from: tokenizers, text encoders and autoencoders, all offline.

Each part is the real transformers or diffusers class, configured a few thousand times smaller than
the published models, so the pipelines run their genuine code paths (tokenize, encode, denoise,
decode) in milliseconds on a CPU. Tokenizers are built from in-memory vocabularies that cover every
character a prompt may hold, so different prompts give different token ids and so different images.
"""

# diffusers' and transformers' constructors carry no annotations that mypy accepts as typed.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TypeVar

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "CLIP_MAX_TOKENS",
    "autoencoder",
    "clip_text_encoder",
    "clip_tokenizer",
    "qwen3_text_encoder",
    "qwen_tokenizer",
    "seeded",
    "t5_text_encoder",
    "t5_tokenizer",
]

CLIP_MAX_TOKENS = 77  # CLIP's context length, which diffusers pads every prompt to

_T = TypeVar("_T")

_QWEN_CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's chat layout, which Z-Image wraps each prompt in before encoding it."""


def seeded(seed: int, build: Callable[[], _T]) -> _T:
    """Build a module from a fixed seed without disturbing the caller's global RNG state.

    Module constructors draw their initial weights from torch's global generator, so it is reseeded
    for the build and restored afterwards. A thread drawing from the global CPU generator during
    the build (about 0.1 s) would change the weights: build before starting work in other threads.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _byte_alphabet() -> list[str]:
    """The 256 symbols byte-level BPE writes bytes as: every UTF-8 text is a sequence of them."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with no merges: every byte of a word is one token, so any prompt tokenizes.

    Built from in-memory ``vocab``/``merges``: in transformers 5, ``CLIPTokenizer(vocab_file=...,
    merges_file=...)`` ignores the files and silently gives a tokenizer that knows only its
    special tokens, so that every prompt encodes alike.
    """
    alphabet = _byte_alphabet()
    # BPE marks the last symbol of each word with "</w>", so each byte needs a word-final twin.
    symbols = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_TOKENS)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer whose pieces are single printable ASCII characters (others become ``<unk>``).

    T5's tokenizer is a Unigram model; with one-character pieces it spells every word out. It
    round-trips through ``save_pretrained``/``from_pretrained``, which a ``WordLevel`` model passed
    as ``tokenizer_object`` does not (the loader insists on Unigram).
    """
    pieces = ["<pad>", "</s>", "<unk>", "\u2581", *(c for c in string.printable if not c.isspace())]
    return T5Tokenizer(vocab=[(piece, 0.0) for piece in pieces], extra_ids=0, model_max_length=512)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen tokenizer with no merges and Qwen's chat template (Z-Image applies it)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {symbol: index for index, symbol in enumerate([*_byte_alphabet(), *specials])}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=512,
    )
    tokenizer.add_tokens(["<|im_start|>"], special_tokens=True)
    tokenizer.chat_template = _QWEN_CHAT
    return tokenizer


def clip_text_encoder(
    vocab_size: int, *, hidden: int = 32, projection: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """CLIP's text tower; ``projection`` adds the projection SDXL's and SD3's second encoders have."""
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,  # CLIP pads with its end-of-text token
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=CLIP_MAX_TOKENS,
        projection_dim=projection or hidden,
    )
    if projection is None:
        return CLIPTextModel(config)
    return CLIPTextModelWithProjection(config)


def t5_text_encoder(vocab_size: int, *, hidden: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=hidden,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def qwen3_text_encoder(vocab_size: int, *, hidden: int) -> Qwen3Model:
    config = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=vocab_size,
        max_position_embeddings=512,
    )
    return Qwen3Model(config)


def autoencoder(*, latent_channels: int, scaling_factor: float, shift_factor: float | None = None) -> AutoencoderKL:
    """A two-block KL autoencoder (latents are half the image's size) with a family's latent scaling.

    The scaling and shift are the published model's: the pipelines scale latents with them, and
    imgnb's previews recognise a family's latent space by them.
    """
    vae: AutoencoderKL = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
    return vae
