"""The tiny offline pipeline: a real, deterministic StableDiffusionPipeline that downloads nothing."""

from __future__ import annotations

import hashlib
import inspect
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from imgnb.gen import TINY_MODEL_NAME, tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return tiny_pipeline()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def run(pipe: StableDiffusionPipeline, prompt: str = "a lighthouse at dusk", seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    images = pipe(prompt, num_inference_steps=3, generator=generator, height=64, width=64).images
    return np.stack([np.asarray(image) for image in images])


def weights_hash(pipe: StableDiffusionPipeline) -> str:
    digest = hashlib.sha256()
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_builds_offline_in_well_under_a_second(offline: None) -> None:
    start = time.perf_counter()
    pipe = tiny_pipeline()
    elapsed = time.perf_counter() - start
    assert isinstance(pipe, StableDiffusionPipeline)
    assert elapsed < 3.0  # about 0.1 s here; generous for a loaded CI runner
    assert pipe.name_or_path == TINY_MODEL_NAME


def test_default_image_is_64_pixels_square(pipe: StableDiffusionPipeline) -> None:
    image = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_two_builds_hold_identical_weights(pipe: StableDiffusionPipeline) -> None:
    assert weights_hash(tiny_pipeline()) == weights_hash(pipe)


def test_another_process_builds_identical_weights(pipe: StableDiffusionPipeline) -> None:
    script = "\n".join(
        [
            "from __future__ import annotations",
            "import hashlib",
            "from imgnb.gen import tiny_pipeline",
            inspect.getsource(weights_hash),
            "print(weights_hash(tiny_pipeline()))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == weights_hash(pipe)


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    tiny_pipeline()
    assert torch.equal(torch.rand(4), expected)


def test_two_builds_give_identical_pixels(pipe: StableDiffusionPipeline) -> None:
    np.testing.assert_array_equal(run(tiny_pipeline()), run(pipe))


def test_tokenizer_tells_prompts_apart(pipe: StableDiffusionPipeline) -> None:
    ids = [pipe.tokenizer(prompt).input_ids for prompt in ("a cat", "a dog", "A CAT", "ünïcode ✓")]
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]  # CLIP lower-cases
    assert len(ids[3]) > 3  # every byte has a token: nothing falls back to the unknown token
    assert pipe.tokenizer.unk_token_id not in ids[3][1:-1]
    assert pipe.tokenizer.model_max_length == 77


def test_different_prompts_give_different_pixels(pipe: StableDiffusionPipeline) -> None:
    assert not np.array_equal(run(pipe, "a cat"), run(pipe, "a dog"))


def test_save_and_load_round_trip(pipe: StableDiffusionPipeline, tmp_path: Path, offline: None) -> None:
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    assert len(loaded.tokenizer) == len(pipe.tokenizer)
    for prompt in ("a cat", "a dog"):
        np.testing.assert_array_equal(run(loaded, prompt), run(pipe, prompt))
