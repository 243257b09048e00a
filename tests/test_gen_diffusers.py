"""DiffusersGenerator on the tiny pipeline: progress, stopping, seeds, batching, validation."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from PIL.Image import Image

from imgnb.core.records import GenerationRequest
from imgnb.errors import InvalidJob, JobInterrupted, JobTimedOut
from imgnb.gen import TINY_MODEL_NAME, BatchGenerator, DiffusersGenerator, Generator, tiny_pipeline

SMALL = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def gen(pipe: StableDiffusionPipeline) -> DiffusersGenerator:
    return DiffusersGenerator(pipe)


def request(prompt: str = "a red fox", *, seed: int = 0, job_id: int = 1, **params: Any) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, prompt=prompt, params={**SMALL, **params}, seed=seed)


def ignore(step: int, total: int) -> None:
    pass


def pixels(images: list[Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


@pytest.fixture(scope="module")
def fox(gen: DiffusersGenerator) -> np.ndarray:
    """The reference image of ``request()``."""
    return pixels(gen(request(), ignore))


class Counter:
    """Counts UNet passes and VAE decodes, to see which parts of the pipeline ran."""

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        self.unet = 0
        self.decodes = 0
        self._hook = pipe.unet.register_forward_hook(self._on_unet)
        self._decode = pipe.vae.decode
        pipe.vae.decode = self._on_decode

    def _on_unet(self, *args: object) -> None:
        self.unet += 1

    def _on_decode(self, *args: Any, **kwargs: Any) -> Any:
        self.decodes += 1
        return self._decode(*args, **kwargs)

    def remove(self, pipe: StableDiffusionPipeline) -> None:
        self._hook.remove()
        del pipe.vae.decode  # back to the class's method


@pytest.fixture
def counter(pipe: StableDiffusionPipeline) -> Iterator[Counter]:
    counting = Counter(pipe)
    yield counting
    counting.remove(pipe)


def test_it_is_a_batch_generator(gen: DiffusersGenerator) -> None:
    assert isinstance(gen, Generator)
    assert isinstance(gen, BatchGenerator)
    assert gen.device == "cpu"
    assert gen.name == TINY_MODEL_NAME


@pytest.mark.parametrize("steps", [2, 4])
def test_on_step_is_called_once_per_step(gen: DiffusersGenerator, steps: int) -> None:
    calls: list[tuple[int, int]] = []
    gen(request(steps=steps), lambda step, total: calls.append((step, total)))
    assert calls == [(step, steps) for step in range(1, steps + 1)]


# diffusers 0.42.1's Heun calls np.array(tensor, copy=False), which numpy 2.4 deprecates for torch tensors.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_second_order_schedulers_count_every_model_pass() -> None:
    pipe = tiny_pipeline()
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    calls: list[tuple[int, int]] = []
    [image] = DiffusersGenerator(pipe)(request(steps=3), lambda step, total: calls.append((step, total)))
    assert calls == [(step, 5) for step in range(1, 6)]  # Heun: 2 * steps - 1 timesteps, one callback each
    assert image.info["scheduler"] == "HeunDiscreteScheduler"


@pytest.mark.parametrize("stop", [JobInterrupted, JobTimedOut])
def test_on_step_raising_stops_the_run_and_the_pipeline_stays_usable(
    gen: DiffusersGenerator, pipe: StableDiffusionPipeline, counter: Counter, fox: np.ndarray, stop: type[Exception]
) -> None:
    calls: list[int] = []

    def on_step(step: int, total: int) -> None:
        calls.append(step)
        if step == 2:
            raise stop()

    with pytest.raises(stop):
        gen(request(steps=4), on_step)
    assert calls == [1, 2]
    assert counter.unet == 2  # one (classifier-free guided) UNet pass per step: steps 3 and 4 never ran
    assert counter.decodes == 0  # nothing was decoded into an image either
    np.testing.assert_array_equal(pixels(gen(request(), ignore)), fox)


def test_same_seed_gives_identical_pixels(gen: DiffusersGenerator, fox: np.ndarray) -> None:
    np.testing.assert_array_equal(pixels(gen(request(job_id=2), ignore)), fox)


def test_different_seeds_give_different_pixels(gen: DiffusersGenerator, fox: np.ndarray) -> None:
    assert not np.array_equal(pixels(gen(request(seed=1), ignore)), fox)


def test_different_prompts_give_different_pixels(gen: DiffusersGenerator, fox: np.ndarray) -> None:
    assert not np.array_equal(pixels(gen(request("a blue whale"), ignore)), fox)


def test_pixels_equal_a_bare_pipeline_call(gen: DiffusersGenerator, pipe: StableDiffusionPipeline) -> None:
    params: dict[str, Any] = {"guidance_scale": 5.0, "negative_prompt": "blurry"}
    ours = gen(request("a red fox", seed=7, **params), ignore)
    bare = pipe(
        "a red fox",
        num_inference_steps=SMALL["steps"],
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(7),
        **params,
    ).images
    np.testing.assert_array_equal(pixels(ours), pixels(bare))


def test_images_record_model_and_scheduler(pipe: StableDiffusionPipeline) -> None:
    named = DiffusersGenerator(pipe, name="my-model")
    for image in named(request(steps=2, num_images_per_prompt=2), ignore):
        assert image.info["model"] == "my-model"
        assert image.info["scheduler"] == "DDIMScheduler"


def test_batched_images_match_unbatched_ones_in_order(gen: DiffusersGenerator) -> None:
    requests = [
        request(prompt, seed=seed, job_id=seed, negative_prompt=negative)
        for seed, (prompt, negative) in enumerate([("a cat", "dog"), ("a dog", "cat"), ("a boat", ""), ("a tree", "x")])
    ]
    assert len({gen.batch_key(each) for each in requests}) == 1
    calls: list[tuple[int, int]] = []
    batched = gen.generate_batch(requests, lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # once per step for the whole batch
    alone = [pixels(gen(each, ignore)) for each in requests]
    assert [len(images) for images in batched] == [1, 1, 1, 1]
    for i, images in enumerate(batched):
        # Batched matrix products round differently: at most 1/255 off, and never closer to another job.
        assert np.abs(pixels(images) - alone[i]).max() <= 1
        assert all(not np.array_equal(pixels(images), other) for j, other in enumerate(alone) if j != i)
        assert images[0].info["model"] == TINY_MODEL_NAME


def test_a_batch_splits_several_images_per_request(gen: DiffusersGenerator) -> None:
    requests = [request(prompt, seed=seed, job_id=seed, num_images_per_prompt=2) for seed, prompt in enumerate("ab")]
    batched = gen.generate_batch(requests, ignore)
    assert [len(images) for images in batched] == [2, 2]
    for each, images in zip(requests, batched, strict=True):
        alone = pixels(gen(each, ignore))
        assert np.abs(pixels(images) - alone).max() <= 1
    assert not np.array_equal(pixels(batched[0][:1]), pixels(batched[0][1:]))  # two draws, not one copied


def test_a_batch_of_one_is_a_plain_call(gen: DiffusersGenerator, fox: np.ndarray) -> None:
    [images] = gen.generate_batch([request()], ignore)
    np.testing.assert_array_equal(pixels(images), fox)
    assert gen.generate_batch([], ignore) == []


def test_generate_batch_refuses_requests_that_cannot_share_a_call(gen: DiffusersGenerator) -> None:
    with pytest.raises(ValueError, match="batch_key"):
        gen.generate_batch([request(), request(steps=2)], ignore)


@pytest.mark.parametrize(
    ("params", "other", "same"),
    [
        ({}, {}, True),  # prompts and seeds differ (see below), parameters agree
        ({"negative_prompt": "a"}, {"negative_prompt": "b"}, True),  # negative prompts are batched as a list
        ({"guidance_scale": 7}, {"guidance_scale": 7.0}, True),  # normalised before comparing
        ({"negative_prompt": "a"}, {}, False),  # SDXL treats "no negative prompt" unlike any text
        ({"steps": 2}, {}, False),
        ({"width": 128}, {}, False),
        ({"guidance_scale": 1.0}, {}, False),
        ({"num_images_per_prompt": 2}, {}, False),
    ],
)
def test_batch_key(gen: DiffusersGenerator, params: dict[str, Any], other: dict[str, Any], same: bool) -> None:
    first = gen.batch_key(request("one", seed=1, **params))
    second = gen.batch_key(request("two", seed=2, **other))
    assert first is not None
    assert (first == second) is same


def test_no_batch_key_for_invalid_params(gen: DiffusersGenerator) -> None:
    assert gen.batch_key(request(steps=0)) is None


@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({"sampler": "euler"}, "sampler", "guidance_scale"),  # unknown: the message lists what is allowed
        ({"num_inference_steps": 20}, "num_inference_steps", "steps="),  # the pipeline's name for steps
        ({"latents": [0.0]}, "latents", "imgnb sets it"),  # imgnb draws the latents from the seed
        ({"output_type": "np"}, "output_type", "imgnb sets it"),  # the queue stores PIL images
        ({"prompt_embeds": [0.0]}, "prompt_embeds", "imgnb sets it"),  # tensors cannot be JSON parameters
        ({"callback_on_step_end": None}, "callback_on_step_end", "imgnb sets it"),  # drives progress
        ({"steps": 0}, "steps", "from 1 to 1000"),  # at least one step
        ({"steps": 2.5}, "steps", "integer"),  # no fractional steps
        ({"steps": True}, "steps", "integer"),  # a bool is not a count
        ({"steps": 1001}, "steps", "from 1 to 1000"),  # more than the scheduler's training timesteps
        ({"width": 100}, "width", "multiple of 8"),  # diffusers refuses sizes off the 8-pixel grid
        ({"height": 0}, "height", "positive multiple of 8"),
        ({"height": -64}, "height", "positive multiple of 8"),
        ({"width": "512"}, "width", "multiple of 8"),  # numbers, not strings
        ({"guidance_scale": "7.5"}, "guidance_scale", "number"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "finite number"),
        ({"guidance_scale": -1}, "guidance_scale", ">= 0"),
        ({"negative_prompt": 3}, "negative_prompt", "a string"),
        ({"negative_prompt": ["a", "b"]}, "negative_prompt", "a string"),  # one per job; batches make the list
        ({"num_images_per_prompt": 0}, "num_images_per_prompt", "integer >= 1"),
        ({"num_images_per_prompt": 1.0}, "num_images_per_prompt", "integer >= 1"),
        ({"eta": -0.5}, "eta", ">= 0"),
        ({"clip_skip": -1}, "clip_skip", "integer >= 0"),
    ],
)
def test_validate_params_names_field_value_and_what_is_allowed(
    gen: DiffusersGenerator, params: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(InvalidJob) as caught:
        gen.validate_params(params)
    message = str(caught.value)
    assert message.startswith(f"{field}={next(iter(params.values()))!r} is invalid")
    assert allowed in message


def test_validate_params_normalises_under_the_users_names(gen: DiffusersGenerator) -> None:
    given = {"steps": 20, "guidance_scale": 7, "negative_prompt": None, "width": 512, "timesteps": [999, 500]}
    assert gen.validate_params(given) == {"steps": 20, "guidance_scale": 7.0, "width": 512, "timesteps": [999, 500]}
    assert "steps" in gen.parameters
    assert "num_inference_steps" not in gen.parameters


def test_a_call_validates_its_params(gen: DiffusersGenerator) -> None:
    with pytest.raises(InvalidJob, match="width="):
        gen(request(width=60), ignore)


def test_out_of_memory_frees_memory_and_is_raised_again(
    gen: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch, fox: np.ndarray
) -> None:
    emptied: list[bool] = []
    collected: list[bool] = []
    real_collect = gc.collect
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def collect(*args: int) -> int:
        collected.append(True)
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)

    def on_step(step: int, total: int) -> None:
        # Pretend, from here on, that the pipeline computes on a CUDA device that just ran out.
        monkeypatch.setattr(gen, "_execution_device", lambda pipe: torch.device("cuda", 0))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError):
        gen(request(), on_step)
    assert emptied == [True]
    assert collected
    monkeypatch.undo()
    np.testing.assert_array_equal(pixels(gen(request(), ignore)), fox)


def test_device_must_agree_with_the_pipeline(pipe: StableDiffusionPipeline) -> None:
    assert DiffusersGenerator(pipe, device="cpu").device == "cpu"
    with pytest.raises(ValueError, match=r"pipe\.to"):
        DiffusersGenerator(pipe, device="cuda:0")


def test_pipelines_without_step_callbacks_are_refused() -> None:
    class OldPipeline:
        def __call__(self, prompt: str, num_inference_steps: int = 50) -> None: ...

    with pytest.raises(TypeError, match="generator, callback_on_step_end"):
        DiffusersGenerator(OldPipeline())  # type: ignore[arg-type]
