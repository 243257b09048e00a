"""Real generation through the queue with the tiny offline Stable Diffusion pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from imgnb import EventKind, GenerationRequest, ImageQueue, InvalidJob, JobCancelled, JobEvent, JobFailed, JobStatus
from imgnb.gen import tiny_pipeline
from tests.fixtures.queues import wait_until

MakeQueue = Callable[..., ImageQueue]
PARAMS: dict[str, Any] = {"steps": 3, "width": 64, "height": 64, "guidance_scale": 7.5, "negative_prompt": "blurry"}


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return tiny_pipeline()


def bare(pipe: StableDiffusionPipeline, prompt: str, seed: int, **params: Any) -> np.ndarray:
    """The same generation as a plain diffusers call, no imgnb involved."""
    args = {**PARAMS, **params}
    image = pipe(
        prompt,
        num_inference_steps=args.pop("steps"),
        generator=torch.Generator().manual_seed(seed),
        **args,
    ).images[0]
    return np.asarray(image)


def test_stored_pixels_equal_a_bare_pipeline_call(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe)
    events: list[JobEvent] = []
    q.subscribe(events.append)
    job = q.submit("a lighthouse at dusk", seed=1234, **PARAMS)
    (image,) = job.result(timeout=60)
    expected = bare(pipe, "a lighthouse at dusk", 1234)
    assert np.array_equal(np.asarray(image), expected)
    with Image.open(job.images[0]) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), expected)  # PNG is lossless
        text = dict(png.text)
    assert text["prompt"] == "a lighthouse at dusk" and text["negative_prompt"] == "blurry"
    assert (text["seed"], text["steps"], text["guidance_scale"]) == ("1234", "3", "7.5")
    assert (text["width"], text["height"]) == ("64", "64")
    assert text["scheduler"] == "DDIMScheduler" and text["model"] == "imgnb/tiny-sd"
    steps = [e.step for e in events if e.kind is EventKind.PROGRESS and e.job_id == job.id]
    assert steps == [1, 2, 3]  # one progress event per denoising step


def test_seed_is_drawn_stored_and_reproduces(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe)
    first = q.submit("a red fox", **PARAMS)
    again = q.submit("a red fox", seed=first.seed, **PARAMS)
    assert np.array_equal(np.asarray(first.result(timeout=60)[0]), np.asarray(again.result(timeout=60)[0]))


def test_bad_parameters_fail_before_anything_is_stored(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe, start=False)
    with pytest.raises(InvalidJob, match=r"steps=0"):
        q.submit("x", steps=0)
    with pytest.raises(InvalidJob, match=r"width=60 .*multiple of 8"):
        q.submit("x", width=60)
    with pytest.raises(InvalidJob, match=r"colour='red'"):
        q.submit("x", colour="red")
    with pytest.raises(InvalidJob, match=r"batch item 1: height=-8"):
        q.submit_batch([{"prompt": "ok"}, {"prompt": "bad", "height": -8}])
    assert q.jobs() == []


def test_cancel_and_timeout_stop_the_pipeline_mid_run(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe)
    steps: dict[int, list[int]] = {}
    q.subscribe(lambda e: steps.setdefault(e.job_id, []).append(e.step) if e.step else None)
    long = {**PARAMS, "steps": 400}
    cancelled = q.submit("cancel me", **long)
    timed_out = q.submit("too slow", timeout=0.5, **long)
    after = q.submit("after", **PARAMS)
    wait_until(lambda: len(steps.get(cancelled.id, [])) >= 2, timeout=30)
    cancelled.cancel()
    with pytest.raises(JobCancelled):
        cancelled.result(timeout=30)
    with pytest.raises(JobFailed, match=r"timed out after 0\.5 s"):
        timed_out.result(timeout=30)
    assert after.result(timeout=60)
    assert max(steps[cancelled.id]) < 400 and max(steps[timed_out.id]) < 400
    assert cancelled.images == [] and timed_out.images == []  # never stored as complete


def test_batched_calls_stay_within_one_level_of_unbatched(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe, batch_size=4, start=False)
    jobs = q.submit_batch([{"prompt": f"a house number {i}", "seed": 10 + i, **PARAMS} for i in range(4)])
    q.start()
    results = [np.asarray(j.result(timeout=60)[0]).astype(int) for j in jobs]
    assert len({j.batch for j in jobs}) == 1 and jobs[0].batch is not None  # one pipeline call
    for i, got in enumerate(results):
        alone = bare(pipe, f"a house number {i}", 10 + i).astype(int)
        assert np.abs(got - alone).max() <= 1  # documented tolerance: 1/255
    rerun = make_queue(db_path, pipeline=pipe)  # batching off: a re-run alone is exact
    again = rerun.submit("a house number 2", seed=12, **PARAMS).result(timeout=60)[0]
    assert np.array_equal(np.asarray(again), bare(pipe, "a house number 2", 12))


class FlakyBatches:
    """A batch-capable generator whose batched calls run out of memory; alone it works."""

    device = "flaky"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def batch_key(self, request: GenerationRequest) -> str:
        return "same"

    def generate_batch(self, requests: Sequence[GenerationRequest], on_step: Any) -> list[list[Image.Image]]:
        self.batches.append(len(requests))
        raise torch.OutOfMemoryError("CUDA out of memory (pretend)")

    def __call__(self, request: GenerationRequest, on_step: Any) -> list[Image.Image]:
        on_step(1, 1)
        return [Image.new("RGB", (8, 8))]


def test_out_of_memory_in_a_batch_is_retried_alone(make_queue: MakeQueue, db_path: str) -> None:
    gen = FlakyBatches()
    q = make_queue(db_path, generator=gen, batch_size=3, start=False)
    jobs = q.submit_batch([{"prompt": f"p{i}"} for i in range(3)])
    q.start()
    for job in jobs:
        assert job.result(timeout=30)
        assert job.attempts == 2 and job.batch is None
    assert gen.batches == [3]


def test_one_worker_per_device(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, pipeline={"cpu:0": tiny_pipeline(), "cpu:1": tiny_pipeline()}, start=False)
    assert q.devices == ["cpu:0", "cpu:1"]
    jobs = q.submit_batch([{"prompt": f"p{i}", **PARAMS, "steps": 20} for i in range(4)])
    q.start()
    for job in jobs:
        job.result(timeout=120)
    assert {j.record.device.split("/")[-1] for j in jobs if j.record.device} == {"cpu:0", "cpu:1"}


def test_a_saved_pipeline_loads_from_a_folder(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str, tmp_path: Path
) -> None:
    pipe.save_pretrained(tmp_path / "model")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    q = make_queue(db_path, pipeline=loaded)
    image = q.submit("from disk", seed=3, **PARAMS).result(timeout=60)[0]
    assert np.array_equal(np.asarray(image), bare(pipe, "from disk", 3))


def test_images_survive_a_restart(pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, pipeline=pipe)
    job = q.submit("keep me", seed=5, **PARAMS)
    first = np.asarray(job.result(timeout=60)[0])
    q.close()
    again = make_queue(db_path).get(job.id)
    assert again.status is JobStatus.COMPLETE and Path(again.images[0]).is_file()
    assert np.array_equal(np.asarray(again.result(timeout=1)[0]), first)


def test_previews_of_a_real_pipeline_reach_the_job(
    pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, pipeline=pipe, preview_interval=0.001)
    sizes: list[tuple[int, int]] = []
    job = q.submit("previewed", **{**PARAMS, "steps": 12})
    q.subscribe(lambda e: sizes.append(job.preview.size) if e.job_id == job.id and job.preview else None)
    job.result(timeout=60)
    assert sizes and all(size == (64, 64) for size in sizes)  # decoded from the latents, at the image's size
    assert job.preview is None


def test_previews_can_be_turned_off(pipe: StableDiffusionPipeline, make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, pipeline=pipe, previews=False)
    seen: list[object] = []
    job = q.submit("plain", **PARAMS)
    q.subscribe(lambda e: seen.append(job.preview))
    job.result(timeout=60)
    assert seen and all(p is None for p in seen)
