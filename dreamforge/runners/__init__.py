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
    (``count * steps`` in all) and is called after every step; failures raise RunnerError with the
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
