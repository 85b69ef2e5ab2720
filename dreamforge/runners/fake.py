"""A Pillow runner for CI and machines without a GPU: deterministic from prompt and seed."""

from __future__ import annotations

import hashlib
import random
import time

from PIL import Image, ImageDraw, ImageFilter

from dreamforge.runners import GeneratedImage, Generation, ProgressCallback


class FakeRunner:
    name = "fake"

    def __init__(self, step_delay_s: float = 0.0):
        self.step_delay_s = step_delay_s

    def warm(self) -> None:
        pass

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedImage:
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
