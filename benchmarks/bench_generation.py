"""Generation benchmark: the queue against a bare diffusers loop, batching, loop responsiveness.

All numbers are measured side by side in one run and printed as ratios:

- overhead: N jobs through ``ImageQueue`` vs the same N bare pipeline calls (same seeds, steps);
- batching: the same N jobs with ``batch_size=N`` vs ``batch_size=1``;
- responsiveness: how late a 10 ms asyncio tick fires while jobs run (the queue inside a running
  loop, as in a Jupyter kernel).

``--full-size`` builds a Stable Diffusion 1.5-sized pipeline (UNet, VAE and text encoder from their
published configs, random weights, nothing downloaded) on CUDA for the batching ratio on a GPU.
Run: ``.venv/bin/python benchmarks/bench_generation.py [--jobs 8] [--full-size]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from imgnb import ImageQueue
from imgnb.gen import tiny_pipeline


def sd15_random(device: str, dtype: torch.dtype = torch.float16) -> Any:
    """SD 1.5's architecture with random weights (860M-parameter UNet), built from configs offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = tiny_pipeline()  # reuse its tokenizer: token ids only need to exist, not mean anything
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=len(tiny.tokenizer),
            max_position_embeddings=77,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tiny.tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(tiny.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def bare_loop(pipe: Any, prompts: list[str], params: dict[str, Any]) -> float:
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        args = dict(params)
        pipe(
            prompt,
            num_inference_steps=args.pop("steps"),
            generator=torch.Generator(pipe.device.type if pipe.device.type == "cuda" else "cpu").manual_seed(i),
            **args,
        )
    return time.perf_counter() - start


def queued(pipe: Any, prompts: list[str], params: dict[str, Any], batch_size: int, db: Path) -> float:
    with ImageQueue(db, pipeline=pipe, start=False, batch_size=batch_size) as q:
        jobs = q.submit_batch([{"prompt": p, "seed": i, **params} for i, p in enumerate(prompts)])
        start = time.perf_counter()
        q.start()
        for job in jobs:
            job.result(timeout=3600)
        return time.perf_counter() - start


async def tick_lateness(pipe: Any, prompts: list[str], params: dict[str, Any], db: Path) -> list[float]:
    q = ImageQueue(db, pipeline=pipe, start=False)  # inside a running loop: the kernel situation
    jobs = q.submit_batch([{"prompt": p, "seed": i, **params} for i, p in enumerate(prompts)])
    late: list[float] = []
    q.start()
    while not all(j.done() for j in jobs):
        t = time.perf_counter()
        await asyncio.sleep(0.010)
        late.append((time.perf_counter() - t - 0.010) * 1000)
    q.close()
    return late


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--full-size", action="store_true", help="SD 1.5-sized random pipeline on CUDA")
    args = parser.parse_args()
    if args.full_size:
        if not torch.cuda.is_available():
            raise SystemExit("--full-size needs a CUDA device")
        pipe, label = sd15_random("cuda"), "SD 1.5-sized, random weights, fp16, CUDA"
    else:
        pipe, label = tiny_pipeline(), f"tiny pipeline, CPU, torch threads={torch.get_num_threads()}"
    params = {"steps": args.steps, "width": args.size, "height": args.size, "guidance_scale": args.guidance}
    prompts = [f"a lighthouse, study {i}" for i in range(args.jobs)]
    tmp = Path(tempfile.mkdtemp())
    bare_loop(pipe, prompts[:2], params)  # warm up
    # Rounds interleave the three ways, so that a machine that speeds up or slows down during the
    # run (a shared VM does) weighs on all of them alike; the medians are reported.
    bares, singles, batcheds = [], [], []
    for r in range(args.rounds):
        bares.append(bare_loop(pipe, prompts, params))
        singles.append(queued(pipe, prompts, params, 1, tmp / f"single{r}.db"))
        batcheds.append(queued(pipe, prompts, params, args.jobs, tmp / f"batched{r}.db"))
    overhead = statistics.median(b / s for b, s in zip(bares, singles, strict=True))
    batching = statistics.median(s / b for s, b in zip(singles, batcheds, strict=True))
    bare, single, batched = (statistics.median(x) for x in (bares, singles, batcheds))
    late = asyncio.run(tick_lateness(pipe, prompts, params, tmp / "ticks.db"))
    q = statistics.quantiles(late, n=100)
    print(
        f"imgnb generation benchmark: {label}; {args.jobs} jobs, {args.steps} steps, "
        f"{args.size}x{args.size}, guidance {args.guidance}; medians of {args.rounds} interleaved rounds\n"
    )
    print(f"{'bare pipeline loop':32} {args.jobs / bare:8.2f} jobs/s")
    print(f"{'ImageQueue, batching off':32} {args.jobs / single:8.2f} jobs/s   ratio vs bare {overhead:5.3f}")
    name = f"ImageQueue, batch_size={args.jobs}"
    print(f"{name:32} {args.jobs / batched:8.2f} jobs/s   ratio vs off  {batching:5.3f}")
    print(f"{'10 ms tick lateness (ms)':32} p50 {q[49]:.2f}  p99 {q[98]:.2f}  max {max(late):.2f}  ({len(late)} ticks)")


if __name__ == "__main__":
    main()
