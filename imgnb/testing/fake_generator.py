"""A fake generator for tests, notebooks and benchmarks: no torch, predictable, fails on demand.

``FakeGenerator`` makes one small solid-colour image per job (the colour comes from the seed, so
results are reproducible), sleeps ``step_time`` per step, and fails when a prompt or parameter says
so, which lets a notebook show retries and errors without a broken model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from ..core.records import GenerationRequest
from ..core.validation import invalid
from ..gen.base import OnStep

__all__ = ["FakeGenerator", "TransientError"]


class TransientError(RuntimeError):
    """A failure that goes away when tried again (like a flaky device)."""


@dataclass(kw_only=True)
class FakeGenerator:
    """``generator(request, on_step)`` with knobs.

    - ``steps``: default step count (a job's ``steps`` parameter overrides it);
    - ``step_time``: seconds slept per step;
    - a job whose prompt contains ``"fail"`` always raises ``TransientError``;
    - a job with parameter ``fail_times=N`` fails its first N runs, then succeeds;
    - ``ignore_steps=True`` never calls ``on_step`` (a generator that cannot be interrupted);
    - ``previews=True`` hands a preview with each step, grey getting lighter as the steps go.
    """

    steps: int = 4
    step_time: float = 0.0
    size: int = 16
    ignore_steps: bool = False
    previews: bool = False
    device: str = "fake"
    calls: list[int] = field(default_factory=list)  # job ids, in the order they ran
    _runs: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def validate_params(self, params: dict[str, object]) -> dict[str, object]:
        allowed = {"steps", "fail_times", "width", "height", "guidance_scale"}
        for name in params:
            if name not in allowed:
                raise invalid(name, params[name], f"a known parameter: {', '.join(sorted(allowed))}")
        steps = params.get("steps", self.steps)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise invalid("steps", steps, "an integer >= 1")
        return params

    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        with self._lock:
            self.calls.append(request.job_id)
            run = self._runs[request.job_id] = self._runs.get(request.job_id, 0) + 1
        total = int(request.params.get("steps", self.steps))
        for step in range(1, total + 1):
            if self.step_time:
                time.sleep(self.step_time)
            if self.previews:
                on_step(step, total, [Image.new("RGB", (8, 8), (255 * step // total,) * 3)])
            elif not self.ignore_steps:
                on_step(step, total)
        if "fail" in request.prompt:
            raise TransientError(f"asked to fail by the prompt {request.prompt!r}")
        if run <= int(request.params.get("fail_times", 0)):
            raise TransientError(f"failing run {run} on purpose")
        colour = (request.seed % 251, (request.seed // 251) % 251, len(request.prompt) % 251)
        return [Image.new("RGB", (self.size, self.size), colour)]
