"""Sweep grid benchmark: 100 and 1,000 cells side by side.

For each size, a sweep of one job per cell is submitted to a queue made with ``start=False``, the grid
is built (time and widget models counted), then the queue runs every job while the grid follows it.
Widgets get a recording comm (as in tests/test_grid.py), so the messages the grid would send to the
browser are counted: per second, and at most on one model. Then the size of the static HTML copy
(what nbviewer shows), for three kinds of images: flat colours (the best case for JPEG),
smooth blobs (closer to a photo) and noise (the worst case), 128 px (the thumbnails are 64 px).

Run: ``.venv/bin/python benchmarks/bench_grid.py [--sizes 100 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import comm
import numpy as np
from ipywidgets import Widget
from ipywidgets.widgets.tests.utils import DummyComm, setup_test_comm, teardown_test_comm
from PIL import Image

from imgnb import GenerationRequest, ImageQueue
from imgnb.gen.base import OnStep

KINDS = ("flat", "smooth", "noise")
SIDE = 128


class Pictures:
    """Two steps, then one 128 px image per job, of one kind, different for every seed."""

    device = "bench"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        on_step(1, 2)
        on_step(2, 2)
        rng = np.random.default_rng(request.job_id)  # every job its own picture
        if self.kind == "flat":
            return [Image.new("RGB", (SIDE, SIDE), tuple(int(c) for c in rng.integers(0, 256, 3)))]
        if self.kind == "smooth":
            small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            return [small.resize((SIDE, SIDE), Image.Resampling.BICUBIC)]
        return [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))]


def shape(cells: int) -> tuple[int, int]:
    cols = 25 if cells >= 1000 else 10
    return cells // cols, cols


async def one_run(folder: Path, cells: int, kind: str, recorded: list[DummyComm]) -> dict[str, Any]:
    rows, cols = shape(cells)
    q = ImageQueue(folder / f"{kind}-{cells}.db", generator=Pictures(kind), start=False)
    try:
        q.submit_batch(
            [{"prompt": f"prompt {r}", "seed": c} for r in range(rows) for c in range(cols)],
            group="sweep",
        )  # prompts down, seeds across: one job per cell
        made = len(recorded)
        t = time.perf_counter()
        grid = q.grid("sweep", rows="prompt", cols="seed")
        build = time.perf_counter() - t
        models = len(recorded) - made
        before = [len(c.messages) for c in recorded]
        t = time.perf_counter()
        q.start()
        while q.counts()["complete"] < cells:
            await asyncio.sleep(0.02)
        while grid.live.pending:
            await asyncio.sleep(0.01)
        run = time.perf_counter() - t
        sent = [len(c.messages) - b for c, b in zip(recorded, before, strict=False)]
        page = grid.static_html()
        return {
            "build_s": build,
            "models": models,
            "run_s": run,
            "events": grid.live.events,
            "redraws": grid.live.redraws,
            "messages": sum(sent),
            "per_s": sum(sent) / run,
            "max_model": max(sent),
            "html_kb": len(page.encode()) / 1024,
        }
    finally:
        q.close()


async def main(sizes: list[int]) -> None:
    recorded: list[DummyComm] = []
    setup_test_comm()

    def create_comm(**kwargs: Any) -> DummyComm:
        recorder = DummyComm()
        recorder.comm_id = uuid.uuid4().hex
        recorded.append(recorder)
        return recorder

    comm.create_comm = create_comm
    results: dict[tuple[int, str], dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for cells in sizes:
                for kind in KINDS:
                    results[cells, kind] = await one_run(Path(tmp), cells, kind, recorded)
                    Widget.close_all()
    finally:
        teardown_test_comm()

    def row(label: str, fmt: str, key: str, kind: str = "flat") -> None:
        print(f"{label:<40}" + "".join(f"{format(results[n, kind][key], fmt):>14}" for n in sizes))

    print(f"{'cells':<40}" + "".join(f"{n:>14,}" for n in sizes))
    row("build the grid (s)", ".3f", "build_s")
    row("widget models", ",", "models")
    row("run every job (s)", ".2f", "run_s")
    row("events the grid saw", ",", "events")
    row("redraws", ",", "redraws")
    row("messages sent", ",", "messages")
    row("messages per second", ".0f", "per_s")
    row("most messages on one model", ",", "max_model")
    for kind in KINDS:
        row(f"static HTML, {kind} images (KB)", ",.0f", "html_kb", kind)
    for kind in KINDS:
        per_cell = [results[n, kind]["html_kb"] * 1024 / n for n in sizes]
        print(f"{f'  bytes per cell, {kind}':<40}" + "".join(f"{b:>14,.0f}" for b in per_cell))
    print("(messages and timings are for flat images; the static HTML uses the grid's 64 px JPEG thumbnails)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    asyncio.run(main(parser.parse_args().sizes))
