"""Runners turn a request into an image. Two implementations: Pillow (fake) and SDXL (Diffusers).

Heavy imports stay behind this seam: nothing here imports torch; ``runners.sdxl`` does, and only
inside the runner's child process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from dreamforge.settings import Settings

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelChoice:
    """A registered model a job names: where this process finds it, and what it is (a sha256
    the registry knows saves the runner hashing the file)."""

    name: str
    path: str
    sha256: str | None = None


@dataclass(frozen=True)
class LoraChoice:
    """A registered LoRA a job applies, at ``weight``."""

    name: str
    path: str
    sha256: str | None
    weight: float


@dataclass(frozen=True)
class Generation:
    """What a runner makes: ``count`` images, item i seeded ``item_seed(seed, i)``."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    count: int = 1
    # A name from dreamforge.schedulers, or None for the checkpoint's own scheduler.
    scheduler: str | None = None
    # None: the model the settings name (DF_GENERATE_MODEL_PATH, ...).
    model: ModelChoice | None = None
    # generate, img2img or inpaint. The input images are their encoded bytes (they pickle to the
    # runner's child as they are), decoded by the runner.
    mode: str = "generate"
    init_image: bytes | None = field(default=None, repr=False)
    mask_image: bytes | None = field(default=None, repr=False)
    strength: float | None = None
    loras: tuple[LoraChoice, ...] = ()

    def denoising_steps(self) -> int:
        """The steps each item runs: int(steps * strength) for img2img and inpaint."""
        from dreamforge.schemas import denoising_steps

        return denoising_steps(self.steps, None if self.mode == "generate" else self.strength)

    def input_images(self) -> tuple[Image.Image | None, Image.Image | None]:
        """The init image (RGB) and mask (L, white: repaint), at the job's size."""
        import io

        from PIL import Image

        size = (self.width, self.height)
        init = mask = None
        if self.init_image is not None:
            with Image.open(io.BytesIO(self.init_image)) as img:
                init = img.convert("RGB")
            if init.size != size:
                init = init.resize(size, Image.Resampling.LANCZOS)
        if self.mask_image is not None:
            with Image.open(io.BytesIO(self.mask_image)) as img:
                mask = img.convert("L")
            if mask.size != size:
                mask = mask.resize(size, Image.Resampling.NEAREST)
        return init, mask

    def seeds(self) -> list[int]:
        from dreamforge.schemas import item_seed

        return [item_seed(self.seed, i) for i in range(self.count)]


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int


@dataclass
class GeneratedBatch:
    """The items in order, and how they were made."""

    images: list[GeneratedImage]
    # Seconds the model itself took (the pipeline calls), as the runner measured it.
    model_s: float | None = None
    # CUDA only: {"device": "cuda:0", "allocated": bytes after the job, "peak": bytes during it}.
    gpu_memory: dict[str, Any] | None = None
    # What the runner knows of the run, for the job's record: model, scheduler and settings,
    # dtype, device, library versions, the batches it made the items in (see execution.py).
    record: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    """All of a Generation's items per call. ``on_progress(current, total)`` counts item-steps
    (``count * denoising_steps()`` in all) and is called after every step; failures raise RunnerError with the
    job's error code."""

    name: str

    def warm(self) -> None:
        """Load what the first job would otherwise wait for."""
        ...

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedBatch: ...

    def close(self) -> None: ...


def make_runner(settings: Settings) -> Runner:
    if settings.fake_runner:
        from dreamforge.runners.fake import FakeRunner

        return FakeRunner(step_delay_s=settings.fake_step_delay_s, failure=settings.fake_failure,
                          hang_timeout_s=settings.step_timeout_s)
    from dreamforge.runners.child import ChildRunner

    return ChildRunner(settings)
