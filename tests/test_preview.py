"""Previews: the linear latent-to-RGB maps, FLUX.1 unpacking, tiny-VAE previews, and the x0 estimate."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from imgnb.core.records import GenerationRequest
from imgnb.gen import DiffusersGenerator, tiny_pipeline
from imgnb.gen.denoised import DenoisedTap, x0_from_noise, x0_from_velocity
from imgnb.gen.preview import FORMATS, Previewer, detect_format, latents_to_rgb, packed_grid, unpack
from tests.fixtures.pipelines import IGNORE_NUMPY_COPY

pytestmark = pytest.mark.filterwarnings(IGNORE_NUMPY_COPY)  # SDXL's Euler scheduler

Pipes = dict[str, DiffusionPipeline]


def pipeline_like(channels: int = 4, scaling: float = 0.18215, shift: float | None = None, scale: int = 8) -> Any:
    """What ``detect_format`` and ``Previewer`` read from a pipeline, and nothing else."""
    config = SimpleNamespace(latent_channels=channels, scaling_factor=scaling, shift_factor=shift)
    return SimpleNamespace(vae=SimpleNamespace(config=config), vae_scale_factor=scale)


def colour(latent: list[float], fmt_name: str | None) -> tuple[int, ...]:
    """The RGB of one latent pixel."""
    fmt = FORMATS[fmt_name] if fmt_name else None
    pixel = latents_to_rgb(torch.tensor(latent).view(1, -1, 1, 1), fmt)
    return tuple(int(v) for v in pixel[0, 0, 0])


def byte(unit_range_value: float) -> int:
    """[-1, 1] to 0..255, as the published previewers (ComfyUI, InvokeAI) do."""
    return round(min(max((unit_range_value + 1) / 2, 0.0), 1.0) * 255)


# -- the linear maps -----------------------------------------------------------------------------


def test_sd1_channels_map_to_their_published_colours() -> None:
    # SD 1.5's fourth latent channel is the strong blue-yellow axis: (-0.2120, -0.2616, -0.7177) per unit.
    assert colour([0, 0, 0, 1], "sd1") == (byte(-0.2120), byte(-0.2616), byte(-0.7177))
    assert colour([0, 0, 0, -1], "sd1") == (byte(0.2120), byte(0.2616), byte(0.7177))
    assert colour([0, 0, 0, 0], "sd1") == (byte(0), byte(0), byte(0))  # no bias: mid grey
    assert colour([10, 10, 0, 0], "sd1") == (255, 255, 255)  # clipped, not wrapped


def test_sdxl_sd3_and_flux_add_their_bias() -> None:
    assert colour([0] * 4, "sdxl") == (byte(0.1084), byte(-0.0175), byte(-0.0011))
    assert colour([0] * 16, "sd3") == (byte(0.2394), byte(0.2135), byte(0.1925))
    assert colour([0] * 16, "flux") == (byte(-0.0329), byte(-0.0718), byte(-0.0851))
    first = [1.0] + [0.0] * 15
    assert colour(first, "flux") == (byte(-0.0346 - 0.0329), byte(0.0244 - 0.0718), byte(0.0681 - 0.0851))


def test_unknown_latents_are_a_stretched_channel_mean_in_grey() -> None:
    ramp = torch.arange(12.0).view(1, 1, 3, 4).expand(1, 32, 3, 4)  # 32 channels: no published factors
    pixels = latents_to_rgb(ramp, None)[0]
    assert (pixels[0, 0].tolist(), pixels[-1, -1].tolist()) == ([0, 0, 0], [255, 255, 255])
    assert torch.equal(pixels[..., 0], pixels[..., 1]) and torch.equal(pixels[..., 1], pixels[..., 2])
    assert pixels[..., 0].flatten().tolist() == sorted(pixels[..., 0].flatten().tolist())
    flat = latents_to_rgb(torch.ones(1, 4, 2, 2), None)  # no range to stretch: black, not a division by zero
    assert flat.max() == 0


def test_a_format_for_other_channels_falls_back_to_grey() -> None:
    sixteen = torch.randn(1, 16, 4, 4)
    assert torch.equal(latents_to_rgb(sixteen, FORMATS["sd1"]), latents_to_rgb(sixteen, None))


@pytest.mark.parametrize(
    ("family", "expected"),
    [("sd", "sd1"), ("sdxl", "sdxl"), ("sd3", "sd3"), ("flux", "flux"), ("z-image", "flux"), ("pixart-sigma", "sd1")],
)
def test_each_family_is_recognised_by_its_vae(family: str, expected: str, tiny_pipelines: Pipes) -> None:
    fmt = detect_format(tiny_pipelines[family])
    assert fmt is not None and fmt.name == expected


def test_unknown_vaes_have_no_format() -> None:
    assert detect_format(pipeline_like(scaling=1.0)) is None  # e.g. a pipeline given a TAESD as its VAE
    assert detect_format(pipeline_like(channels=32, scaling=0.41407)) is None  # Sana's DC-AE
    assert detect_format(pipeline_like(channels=16, scaling=0.3611, shift=None)) is None  # FLUX.1's scale, no shift
    assert detect_format(SimpleNamespace()) is None


# -- packed latents ------------------------------------------------------------------------------


def test_unpack_shapes_and_refusals() -> None:
    packed = torch.randn(2, 16 * 32, 16 * 4)
    assert unpack(packed, (16, 32)).shape == (2, 16, 32, 64)
    assert packed_grid(16 * 32, 64, 128) == (16, 32)
    assert packed_grid(16 * 32, 128, 64) == (32, 16)
    with pytest.raises(ValueError, match="cannot unpack"):
        unpack(packed, (16, 16))
    with pytest.raises(ValueError, match="do not form a grid"):
        packed_grid(7, 64, 64)


def test_unpacked_flux_latents_decode_to_the_pipelines_own_image(tiny_pipelines: Pipes) -> None:
    """The pipeline's latents, unpacked here and decoded by its VAE, give its image pixel for pixel."""
    pipe = tiny_pipelines["flux"]
    call = {"num_inference_steps": 2, "height": 64, "width": 128}
    packed = pipe("a cat", generator=torch.Generator().manual_seed(3), output_type="latent", **call).images
    image = pipe("a cat", generator=torch.Generator().manual_seed(3), output_type="np", **call).images
    latents = unpack(packed, packed_grid(packed.shape[1], 64, 128))
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    np.testing.assert_allclose(pipe.image_processor.postprocess(decoded, output_type="np"), image, atol=1e-6)


# -- the previewer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latent", "scale", "size"),
    [
        ((64, 64), 8, (256, 256)),  # SD 1.5 at 512: the 64-pixel map scaled up to the preview size
        ((64, 128), 8, (256, 128)),  # a wide image keeps its shape
        ((128, 128), 8, (256, 256)),  # SDXL at 1024
        ((32, 32), 2, (64, 64)),  # a tiny pipeline's 64-pixel image: no bigger than the image
    ],
)
def test_previews_keep_the_images_shape_within_the_preview_size(
    latent: tuple[int, int], scale: int, size: tuple[int, int]
) -> None:
    [preview] = Previewer(pipeline_like(scale=scale))(torch.randn(1, 4, *latent))
    assert (preview.mode, preview.size) == ("RGB", size)


def test_packed_latents_are_previewed_on_their_grid() -> None:
    previewer = Previewer(pipeline_like(channels=16, scaling=0.3611, shift=0.1159))
    [preview] = previewer(torch.randn(1, 16 * 32, 64), size=(256, 512))
    assert preview.size == (256, 128)


def tiny_autoencoder(channels: int) -> AutoencoderTiny:
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=channels,
    ).eval()


def test_a_tiny_vae_makes_the_previews(tiny_pipelines: Pipes) -> None:
    vae = tiny_autoencoder(4)
    gen = DiffusersGenerator(tiny_pipelines["sd"], preview_vae=vae, preview_interval=0)
    previews: list[Any] = []
    request = GenerationRequest(job_id=1, prompt="a cat", params={"steps": 2, "width": 64, "height": 64}, seed=0)
    gen(request, lambda step, total, given=None: previews.append(given))
    assert [len(p) for p in previews] == [1, 1]
    assert previews[0][0].size == (64, 64)
    linear = Previewer(tiny_pipelines["sd"])(torch.zeros(1, 4, 32, 32))[0]
    decoded = Previewer(tiny_pipelines["sd"], vae=vae)(torch.zeros(1, 4, 32, 32))[0]
    assert not np.array_equal(np.asarray(linear), np.asarray(decoded))  # the VAE, not the linear map, made it


def test_a_tiny_vae_for_other_latents_is_refused(tiny_pipelines: Pipes) -> None:
    with pytest.raises(ValueError, match="preview_vae decodes 16-channel latents, StableDiffusionPipeline makes 4"):
        DiffusersGenerator(tiny_pipelines["sd"], preview_vae=tiny_autoencoder(16))
    with pytest.raises(TypeError, match="give an AutoencoderTiny"):
        DiffusersGenerator(tiny_pipelines["sd"], preview_vae="madebyollin/taesd")
    with pytest.raises(ValueError, match="preview_interval=-1"):
        DiffusersGenerator(tiny_pipelines["sd"], preview_interval=-1)


# -- the x0 estimate -----------------------------------------------------------------------------


def test_x0_formulas_invert_the_forward_process() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    a = 0.3
    noisy = a**0.5 * x0 + (1 - a) ** 0.5 * noise
    torch.testing.assert_close(x0_from_noise(noisy, noise, a, "epsilon"), x0)
    velocity = a**0.5 * noise - (1 - a) ** 0.5 * x0
    torch.testing.assert_close(x0_from_noise(noisy, velocity, a, "v_prediction"), x0)
    assert x0_from_noise(noisy, x0, a, "sample") is x0
    with pytest.raises(ValueError, match="flow_prediction"):
        x0_from_noise(noisy, noise, a, "flow_prediction")
    sigma = 0.7
    torch.testing.assert_close(x0_from_velocity((1 - sigma) * x0 + sigma * noise, noise - x0, sigma), x0)


def estimates_and_result(pipe: DiffusionPipeline, steps: int = 4) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    estimates: list[torch.Tensor | None] = []
    with DenoisedTap(pipe.scheduler) as tap:

        def record(p: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            estimates.append(tap.estimate())
            return kwargs

        result = pipe(
            "a cat",
            num_inference_steps=steps,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            callback_on_step_end=record,
        ).images
    return estimates, result


def with_scheduler(scheduler: Any) -> DiffusionPipeline:
    pipe = tiny_pipeline("sd")
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.mark.parametrize(
    "source",
    [
        "sd3",  # flow matching: x_t - sigma v
        "flux",  # the same, on packed latents
        "z-image",  # the same, with the pipeline's negated velocity
        DPMSolverMultistepScheduler,  # variance-preserving: from the noise prediction and alphas_cumprod
        UniPCMultistepScheduler,
        EulerDiscreteScheduler,  # the scheduler's own pred_original_sample
        LCMScheduler,  # the scheduler's own "denoised"
    ],
)
def test_the_last_steps_estimate_is_the_result(source: Any, tiny_pipelines: Pipes) -> None:
    """Each of these schedulers ends on its own x0: the estimate after the last step is the output."""
    pipe = tiny_pipelines[source] if isinstance(source, str) else with_scheduler(source)
    estimates, result = estimates_and_result(pipe)
    assert all(estimate is not None for estimate in estimates)
    torch.testing.assert_close(estimates[-1], result)
    first = estimates[0]
    assert first is not None and first.shape == result.shape
    assert "step" not in vars(pipe.scheduler)


def test_the_tap_changes_nothing_the_pipeline_computes(tiny_pipelines: Pipes) -> None:
    pipe = tiny_pipelines["sd"]  # DDIM, whose step returns a two-element tuple when asked for one
    kwargs: dict[str, Any] = {"num_inference_steps": 3, "height": 64, "width": 64, "output_type": "latent"}
    plain = pipe("a cat", generator=torch.Generator().manual_seed(5), **kwargs).images
    with DenoisedTap(pipe.scheduler):
        tapped = pipe("a cat", generator=torch.Generator().manual_seed(5), **kwargs).images
    assert torch.equal(plain, tapped)
    step_output = pipe.scheduler.step(torch.ones(1, 4, 2, 2), 1, torch.ones(1, 4, 2, 2), return_dict=False)
    assert isinstance(step_output, tuple) and len(step_output) == 2  # the class's own method again


def test_the_tap_leaves_even_when_the_call_fails() -> None:
    scheduler = DDIMScheduler()
    with pytest.raises(RuntimeError), DenoisedTap(scheduler) as tap:
        assert "step" in vars(scheduler)
        raise RuntimeError("the pipeline failed")
    assert "step" not in vars(scheduler) and tap.estimate() is None


def test_a_scheduler_that_tells_nothing_gives_no_estimate() -> None:
    """The generator then previews the noisy latents the step callback received."""

    class Plain:  # a scheduler whose step says nothing about x0, on no known schedule
        def step(self, model_output: Any, timestep: Any, sample: Any) -> Any:
            return sample + model_output

    tap = DenoisedTap(Plain())
    with tap:
        assert torch.equal(tap.scheduler.step(torch.ones(1), 3, torch.zeros(1)), torch.ones(1))  # passed through
        assert tap.estimate() is None
