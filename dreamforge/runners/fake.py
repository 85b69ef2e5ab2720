"""A Pillow runner for CI and machines without a GPU: deterministic from prompt, seed and
scheduler, item by item (item i of a batch is the count-1 picture of its seed).

It can also fail on demand, the way the SDXL runner's child process fails (DF_FAKE_FAILURE):
``crash-once`` (the first job of this runner crashes, later ones succeed), ``crash`` (every job),
``hang`` (silent until DF_STEP_TIMEOUT_S, then ``runner_timeout``, as the child's watchdog says).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from dreamforge import __version__
from dreamforge.errors import RunnerError
from dreamforge.runners import GeneratedBatch, GeneratedImage, Generation, ProgressCallback

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

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedBatch:
        total = request.count * request.steps
        if self.failure:
            self._fail_on_demand(on_progress, total)
        images = []
        for item, seed in enumerate(request.seeds()):
            done = item * request.steps

            def on_step(step: int, done: int = done) -> None:
                on_progress(done + step, total)

            images.append(GeneratedImage(self._draw(request, seed, on_step), seed))
        model = ({"name": request.model.name, "sha256": request.model.sha256} if request.model
                 else {"name": "fake", "sha256": None})
        record: dict[str, Any] = {"runner": self.name, "model": model,
                  "scheduler": {"name": request.scheduler, "class": None, "config": {}},
                  "dtype": None, "device": "cpu", "dreamforge": __version__,
                  "batches": [1] * request.count}
        return GeneratedBatch(images, record=record)

    def _draw(self, request: Generation, seed: int, on_step: Callable[[int], None]) -> Image.Image:
        # The scheduler joins the digest only when one is named, so pictures made before there
        # were schedulers are made again the same.
        # The scheduler and a registered model join the digest only when named, so pictures made
        # before there were either are made again the same.
        scheduler = f"\0{request.scheduler}" if request.scheduler else ""
        model = f"\0model={request.model.sha256 or request.model.name}" if request.model else ""
        digest = hashlib.sha256(
            f"{request.prompt}\0{request.negative_prompt or ''}\0{seed}{scheduler}{model}".encode()).digest()
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
            on_step(step)
        return image.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 64)))

    def close(self) -> None:
        pass
