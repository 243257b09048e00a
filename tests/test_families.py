"""Every pipeline family through DiffusersGenerator and the queue: builds, progress, stopping, pixels,
metadata and previews, on tiny random-weight pipelines built once per run (``tiny_pipelines``)."""

from __future__ import annotations

import hashlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image

from imgnb import (
    EventKind,
    GenerationRequest,
    ImageQueue,
    ImgnbError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    UnsupportedPipeline,
)
from imgnb.gen import TINY_FAMILIES, DiffusersGenerator, tiny_pipeline
from imgnb.gen.quiet import quiet_logs
from tests.fixtures.pipelines import IGNORE_NUMPY_COPY
from tests.fixtures.queues import wait_until

pytestmark = pytest.mark.filterwarnings(IGNORE_NUMPY_COPY)  # SDXL's Euler scheduler

MakeQueue = Callable[..., ImageQueue]
Pipes = dict[str, DiffusionPipeline]
Previews = list[Image.Image] | None

RUNNABLE = tuple(family for family in TINY_FAMILIES if family != "pixart-sigma")
"""The families imgnb runs (PixArt-Sigma has no ``callback_on_step_end``)."""

SIZE = {"width": 64, "height": 64}
QUIRKS: dict[str, dict[str, Any]] = {
    "sd": {"guidance_scale": 7.5, "negative_prompt": "blurry"},
    # SDXL's second prompt goes to its second text encoder; size conditioning arrives as JSON lists.
    "sdxl": {"guidance_scale": 5.0, "negative_prompt": "blurry", "prompt_2": "in oils", "original_size": [64, 64]},
    # SD3's third prompt goes to its T5.
    "sd3": {"guidance_scale": 4.0, "negative_prompt": "blurry", "prompt_3": "a woodcut", "max_sequence_length": 32},
    # FLUX.1 uses a negative prompt only with true CFG (two passes a step); guidance_scale is a model input.
    "flux": {"guidance_scale": 3.5, "true_cfg_scale": 2.0, "negative_prompt": "blurry", "max_sequence_length": 32},
    "z-image": {"guidance_scale": 4.0, "negative_prompt": "blurry", "max_sequence_length": 32},
}
"""Parameters that exercise each family's own ``__call__`` arguments."""


def params(family: str, steps: int = 3) -> dict[str, Any]:
    return {"steps": steps, **SIZE, **QUIRKS[family]}


def request(family: str, *, seed: int = 0, job_id: int = 1, **overrides: Any) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, prompt="a red fox", params={**params(family), **overrides}, seed=seed)


def bare(pipe: DiffusionPipeline, family: str, prompt: str, seed: int) -> np.ndarray:
    """The same generation as a plain diffusers call, no imgnb involved."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params(family).items() if k != "steps"}
    image = pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), **kwargs).images[0]
    return np.asarray(image)


def ignore(step: int, total: int, previews: Previews = None) -> None:
    pass


class Recorder:
    """An ``on_step`` that keeps what it is given."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.previews: list[Previews] = []

    def __call__(self, step: int, total: int, previews: Previews = None) -> None:
        self.steps.append((step, total))
        self.previews.append(previews)


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    found = getattr(pipe, "unet", None) or pipe.transformer
    assert isinstance(found, torch.nn.Module)
    return found


@contextmanager
def counting(pipe: DiffusionPipeline) -> Iterator[dict[str, int]]:
    """Counts denoiser passes and VAE decodes while the block runs."""
    counts = {"denoiser": 0, "decodes": 0}

    def count(name: str) -> Callable[..., None]:
        def hook(*args: object) -> None:
            counts[name] += 1

        return hook

    hooks = [
        denoiser(pipe).register_forward_hook(count("denoiser")),
        pipe.vae.decoder.register_forward_hook(count("decodes")),
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def weights_hash(pipe: DiffusionPipeline) -> str:
    digest = hashlib.sha256()
    for name, part in sorted(pipe.components.items()):
        if isinstance(part, torch.nn.Module):
            for key, tensor in sorted(part.state_dict().items()):
                digest.update(f"{name}.{key}".encode())
                digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# -- building -----------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_each_family_builds_offline_identically_and_leaves_the_rng_alone(
    family: str, tiny_pipelines: Pipes, offline: None
) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    start = time.perf_counter()
    pipe = tiny_pipeline(family)
    elapsed = time.perf_counter() - start
    assert torch.equal(torch.rand(4), expected)
    assert elapsed < 3.0  # a few hundredths of a second here; generous for a loaded CI runner
    assert pipe.name_or_path == f"imgnb/tiny-{family}"
    assert type(pipe) is type(tiny_pipelines[family])
    assert weights_hash(pipe) == weights_hash(tiny_pipelines[family])  # Z-Image's empty-allocated tokens too


@pytest.mark.parametrize("family", [f for f in RUNNABLE if f != "z-image"])  # Z-Image's pipeline defaults to 1024
def test_default_images_are_64_pixels_square(family: str, tiny_pipelines: Pipes) -> None:
    [image] = DiffusersGenerator(tiny_pipelines[family])(
        GenerationRequest(job_id=1, prompt="a cat", params={"steps": 1}, seed=0), ignore
    )
    assert image.size == (64, 64)


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family='sd4' is not one of sd, sdxl"):
        tiny_pipeline("sd4")


def test_building_prints_nothing() -> None:
    """In a fresh process: transformers' once-per-process notices would show there (notebook cell 1)."""
    script = "import imgnb\nfor family in imgnb.gen.TINY_FAMILIES:\n    imgnb.tiny_pipeline(family)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert (result.stdout, result.stderr) == ("", "")


def test_quiet_logs_restores_the_users_logging_configuration() -> None:
    library = logging.getLogger("transformers")
    child = logging.getLogger("transformers.some.module")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    before = (library.level, logging.getLogger("diffusers").level, logging.getLogger().level)
    library.addHandler(handler)
    try:
        library.setLevel(logging.INFO)  # what a user who wants transformers' info messages does
        with quiet_logs():
            child.warning("inside")
            tiny_pipeline("sdxl")
        child.info("after")
        assert library.level == logging.INFO
        assert library.handlers[-1] is handler
        assert records == ["after"]
    finally:
        library.removeHandler(handler)
        library.setLevel(before[0])
    assert (library.level, logging.getLogger("diffusers").level, logging.getLogger().level) == before


# -- refused pipelines and parameters ------------------------------------------------------------


def test_a_pipeline_without_step_callbacks_is_refused_saying_why(
    tiny_pipelines: Pipes, make_queue: MakeQueue, db_path: str
) -> None:
    pixart = tiny_pipelines["pixart-sigma"]
    with pytest.raises(UnsupportedPipeline, match=r"PixArtSigmaPipeline\.__call__ lacks callback_on_step_end") as e:
        DiffusersGenerator(pixart)
    assert isinstance(e.value, ImgnbError) and isinstance(e.value, TypeError)
    assert "stops a cancelled or timed-out job" in str(e.value)
    with pytest.raises(UnsupportedPipeline):
        make_queue(db_path, pipeline=pixart)
    assert not Path(db_path).exists()  # refused before anything was created


def test_flux_refuses_a_negative_prompt_it_would_ignore(tiny_pipelines: Pipes) -> None:
    gen = DiffusersGenerator(tiny_pipelines["flux"])
    with pytest.raises(InvalidJob, match=r"negative_prompt='blurry' is invalid; allowed: only with true_cfg_scale > 1"):
        gen.validate_params({"negative_prompt": "blurry"})
    with pytest.raises(InvalidJob, match="true_cfg_scale > 1"):
        gen.validate_params({"negative_prompt": "blurry", "true_cfg_scale": 1.0})
    assert gen.validate_params({"negative_prompt": "blurry", "true_cfg_scale": 2})["true_cfg_scale"] == 2.0


class StandIn:
    """A pipeline as far as DiffusersGenerator looks: its call's arguments and its latent grid."""

    def __init__(self, vae_scale_factor: int, patch_size: int = 1, packed: int = 1) -> None:
        self.vae_scale_factor = vae_scale_factor
        self.patch_size = patch_size
        self.image_processor = SimpleNamespace(config=SimpleNamespace(vae_scale_factor=packed))

    def __call__(
        self, prompt: str, num_inference_steps: int, generator: Any, callback_on_step_end: Any, width: int
    ) -> Any: ...


@pytest.mark.parametrize(
    ("pipe", "multiple"),
    [
        (StandIn(8), 8),  # SD 1.x, SDXL
        (StandIn(8, patch_size=2), 16),  # SD3: 2x2 patches of latents
        (StandIn(8, packed=16), 16),  # FLUX.1, Z-Image: 2x2 latents packed into a token
        (StandIn(2, packed=4), 8),  # their tiny pipelines: never below diffusers' 8
    ],
)
def test_sizes_must_fit_the_pipelines_latent_grid(pipe: StandIn, multiple: int) -> None:
    gen = DiffusersGenerator(pipe, previews=False)  # type: ignore[arg-type]
    assert gen.size_multiple == multiple
    with pytest.raises(InvalidJob, match=f"a positive multiple of {multiple}"):
        gen.validate_params({"width": multiple + 8 if multiple > 8 else 12})


# -- through the queue --------------------------------------------------------------------------


@pytest.mark.parametrize("family", RUNNABLE)
def test_a_job_reports_progress_and_stores_the_bare_pipelines_pixels_and_metadata(
    family: str, tiny_pipelines: Pipes, make_queue: MakeQueue, db_path: str
) -> None:
    pipe = tiny_pipelines[family]
    q = make_queue(db_path, pipeline=pipe)
    steps: list[int] = []
    q.subscribe(lambda e: steps.append(e.step) if e.kind is EventKind.PROGRESS and e.step else None)
    job = q.submit("a lighthouse at dusk", seed=1234, **params(family))
    (image,) = job.result(timeout=60)
    expected = bare(pipe, family, "a lighthouse at dusk", 1234)
    np.testing.assert_array_equal(np.asarray(image), expected)
    with Image.open(job.images[0]) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), expected)
        text = dict(png.text)
    assert (text["model"], text["scheduler"]) == (f"imgnb/tiny-{family}", type(pipe.scheduler).__name__)
    assert (text["prompt"], text["seed"], text["steps"]) == ("a lighthouse at dusk", "1234", "3")
    assert text["negative_prompt"] == "blurry"
    wait_until(lambda: len(steps) >= 3)
    assert steps == [1, 2, 3]  # one progress event per denoising step


@pytest.mark.parametrize("family", RUNNABLE)
def test_cancel_and_timeout_stop_the_job_and_store_no_image(
    family: str, tiny_pipelines: Pipes, make_queue: MakeQueue, db_path: str, tmp_path: Path
) -> None:
    q = make_queue(db_path, pipeline=tiny_pipelines[family])
    progress: dict[int, list[int]] = {}
    q.subscribe(lambda e: progress.setdefault(e.job_id, []).append(e.step) if e.kind is EventKind.PROGRESS else None)
    cancelled = q.submit("cancel me", **params(family, steps=500))
    timed_out = q.submit("too slow", timeout=0.3, **params(family, steps=500))
    after = q.submit("after", **params(family, steps=1))
    wait_until(lambda: len(progress.get(cancelled.id, [])) >= 2)
    cancelled.cancel()
    with pytest.raises(JobCancelled):
        cancelled.result(timeout=30)
    with pytest.raises(JobFailed, match=r"timed out after 0\.3 s"):
        timed_out.result(timeout=30)
    assert after.result(timeout=60)  # the device ran it: the stopped runs had returned
    assert max(progress[cancelled.id]) < 500 and max(progress[timed_out.id]) < 500
    assert cancelled.images == [] and timed_out.images == []
    assert sorted(str(p) for p in (tmp_path / "images").iterdir()) == after.images


# -- the generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", RUNNABLE)
def test_on_step_raising_stops_before_the_next_step_and_the_decode(family: str, tiny_pipelines: Pipes) -> None:
    pipe = tiny_pipelines[family]
    gen = DiffusersGenerator(pipe)
    with counting(pipe) as two_steps:
        gen(request(family, steps=2), ignore)
    assert two_steps["decodes"] == 1

    def stop_at_two(step: int, total: int, previews: Previews = None) -> None:
        if step == 2:
            raise JobInterrupted("cancelled")

    with counting(pipe) as stopped, pytest.raises(JobInterrupted):
        gen(request(family, steps=4), stop_at_two)
    assert stopped == {"denoiser": two_steps["denoiser"], "decodes": 0}
    assert "step" not in vars(pipe.scheduler)  # the x0 tap is gone after a stopped run too


@pytest.mark.parametrize("family", RUNNABLE)
def test_previews_come_with_each_step_when_asked(family: str, tiny_pipelines: Pipes) -> None:
    gen = DiffusersGenerator(tiny_pipelines[family], preview_interval=0)
    record = Recorder()
    [image] = gen(request(family, width=128, height=64), record)
    assert record.steps == [(1, 3), (2, 3), (3, 3)]
    frames = []
    for previews in record.previews:
        assert previews is not None and len(previews) == 1
        assert isinstance(previews[0], Image.Image)
        assert (previews[0].mode, previews[0].size) == ("RGB", image.size)  # packed FLUX latents unpacked 2:1
        frames.append(np.asarray(previews[0]))
    assert not np.array_equal(frames[0], frames[-1])  # it changes as the image denoises


def test_previews_are_rate_limited_and_off_when_asked(tiny_pipelines: Pipes) -> None:
    pipe = tiny_pipelines["sd"]
    rare = Recorder()
    DiffusersGenerator(pipe, preview_interval=3600)(request("sd", steps=4), rare)
    assert [p is not None for p in rare.previews] == [True, False, False, False]  # the first step, then none
    off = Recorder()
    gen = DiffusersGenerator(pipe, previews=False)
    gen(request("sd", steps=4), off)
    assert gen.previewer is None
    assert off.previews == [None] * 4 and len(off.steps) == 4
    two_arguments: list[int] = []
    DiffusersGenerator(pipe)(request("sd", steps=2), lambda step, total: two_arguments.append(step))
    assert two_arguments == [1, 2]  # an older on_step is not handed previews


def test_a_batch_gets_one_preview_per_request(tiny_pipelines: Pipes) -> None:
    gen = DiffusersGenerator(tiny_pipelines["sd"], preview_interval=0)
    requests = [request("sd", seed=seed, job_id=seed, num_images_per_prompt=2) for seed in (1, 2)]
    record = Recorder()
    gen.generate_batch(requests, record)
    for previews in record.previews:
        assert previews is not None and len(previews) == 2
        assert not np.array_equal(np.asarray(previews[0]), np.asarray(previews[1]))


def test_a_failing_preview_never_fails_the_job(
    tiny_pipelines: Pipes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gen = DiffusersGenerator(tiny_pipelines["sd"], preview_interval=0)
    bare_image = np.asarray(DiffusersGenerator(tiny_pipelines["sd"], previews=False)(request("sd"), ignore)[0])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("preview bug")

    monkeypatch.setattr(gen, "previewer", broken)
    record = Recorder()
    with caplog.at_level(logging.WARNING, logger="imgnb.gen.diffusers_gen"):
        [image] = gen(request("sd"), record)
    np.testing.assert_array_equal(np.asarray(image), bare_image)
    assert record.previews == [None, None, None]
    assert [r.getMessage() for r in caplog.records].count(f"imgnb: no previews from {gen}") == 1  # logged once
