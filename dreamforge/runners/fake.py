"""A Pillow runner for CI and machines without a GPU: deterministic from prompt and seed.

It can also fail on demand, the way the SDXL runner's child process fails (DF_FAKE_FAILURE):
``crash-once`` (the first job of this runner crashes, later ones succeed), ``crash`` (every job),
``hang`` (silent until DF_STEP_TIMEOUT_S, then ``runner_timeout``, as the child's watchdog says).
"""

from __future__ import annotations

import hashlib
import random
import time

from PIL import Image, ImageDraw, ImageFilter

from dreamforge.errors import RunnerError
from dreamforge.runners import GeneratedImage, Generation, ProgressCallback

FAILURES = ("crash-once", "crash", "hang")


class FakeRunner:
    name = "fake"

    def __init__(self, step_delay_s: float = 0.0, failure: str | None = None,
                 hang_timeout_s: float = 600.0):
        if failure and failure not in FAILURES:
            raise ValueError(f"unknown fake failure {failure!r} (one of {', '.join(FAILURES)})")
        self.step_delay_s = step_delay_s
        self.failure = failure or None
        self.hang_timeout_s = hang_timeout_s
        self._jobs = 0

    def _fail_on_demand(self, on_progress: ProgressCallback, total: int) -> None:
        self._jobs += 1
        if self.failure == "crash" or (self.failure == "crash-once" and self._jobs == 1):
            on_progress(1, total)
            raise RunnerError("the runner process died while generating (exit code -9); the "
                              "next job starts a fresh one", code="runner_crashed",
                              details={"exit_code": -9})
        if self.failure == "hang":
            time.sleep(self.hang_timeout_s)
            raise RunnerError(f"the runner process said nothing for {self.hang_timeout_s:.0f} s "
                              "while generating; it was stopped", code="runner_timeout")

    def warm(self) -> None:
        pass

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedImage:
        if self.failure:
            self._fail_on_demand(on_progress, request.steps)
        digest = hashlib.sha256(
            f"{request.prompt}\0{request.negative_prompt or ''}\0{request.seed}".encode()).digest()
        rng = random.Random(digest)  # noqa: S311 (pictures, not secrets)
        w, h = request.width, request.height
        top = tuple(rng.randrange(256) for _ in range(3))
        bottom = tuple(rng.randrange(256) for _ in range(3))
        mask = Image.linear_gradient("L").resize((w, h))
        image = Image.composite(Image.new("RGB", (w, h), bottom), Image.new("RGB", (w, h), top), mask)
        draw = ImageDraw.Draw(image)
        shapes = max(1, request.steps)
        for step in range(1, request.steps + 1):
            # One shape per denoising step, so the work (and the picture) follows the step count.
            for _ in range(max(1, 24 // shapes)):
                x, y = rng.randrange(w), rng.randrange(h)
                r = rng.randrange(max(2, min(w, h) // 12), max(3, min(w, h) // 3))
                fill = tuple(rng.randrange(256) for _ in range(3))
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            on_progress(step, request.steps)
        image = image.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 64)))
        return GeneratedImage(image=image, seed=request.seed)

    def close(self) -> None:
        pass
