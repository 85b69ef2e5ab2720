"""The SDXL pipeline itself: loading a checkpoint offline and generating a batch of images. Runs
inside the runner's child process (see child.py); this is the only module that imports torch and
diffusers."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamforge import schedulers
from dreamforge.errors import RunnerError
from dreamforge.runners import GeneratedBatch, GeneratedImage, Generation, ModelChoice
from dreamforge.runners.model_config import sdxl_config_dir, use_open_clip_padding
from dreamforge.settings import Settings

log = logging.getLogger("dreamforge.runner")


def resolve_device(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(setting: str, device: str) -> Any:
    import torch

    if setting == "auto":
        # float16 on the GPU; float32 on the CPU, where float16 runs ~10x slower.
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


def compile_cache_dir(settings: Settings) -> Path:
    return settings.compile_cache_dir or settings.data_dir / "torch-compile-cache"


def prepare_compile_cache(settings: Settings) -> Path:
    """Point Inductor's on-disk caches at a folder that outlives the worker; must run before
    torch is imported."""
    folder = compile_cache_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


def file_sha256(path: Path, cache: Path) -> str:
    """A checkpoint's sha256, kept in ``cache`` by path, size and modification time: hashing a
    6.9 GB file takes tens of seconds, so it happens once per file, not per worker start."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(str(path))
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    known[str(path)] = {**stamp, "sha256": digest.hexdigest()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("model hash not cached at %s: %s", cache, exc)
    return digest.hexdigest()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"{device} ({platform.machine() or 'unknown'})"


class SDXL:
    """A loaded pipeline. ``load`` raises RunnerError(model_invalid) for a file it can't read."""

    def __init__(self, settings: Settings, choice: ModelChoice | None = None):
        self.settings = settings
        # The model: a registered one the job named (with the sha256 the registry knows, so
        # nothing is hashed here), else the one the settings name.
        if choice is not None:
            self.path, self.chosen_by = Path(choice.path), f"the model registry ({choice.name})"
            self.model_name, self.model_sha256 = choice.name, choice.sha256
        else:
            self.path, self.chosen_by = settings.model_path()
            self.model_name = self.path.stem if self.path.suffix else self.path.name
            self.model_sha256 = None
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.pipe: Any = None
        self.base_scheduler: dict[str, Any] = {}
        # The most items one call made at each size without running out of memory.
        self._fits: dict[tuple[int, int], int] = {}

    def describe(self) -> str:
        return f"{self.path} on {self.device} ({str(self.dtype).replace('torch.', '')})"

    def config_dir(self) -> Path:
        """Configs and tokenizers for single files: DF_MODEL_CONFIG_DIR, or SDXL base's, shipped."""
        return self.settings.model_config_dir or sdxl_config_dir(self.settings.data_dir / "model-config")

    def load(self) -> None:
        from diffusers import StableDiffusionXLPipeline

        try:
            if self.path.is_dir():
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    self.path, dtype=self.dtype, local_files_only=True)
            else:
                pipe = StableDiffusionXLPipeline.from_single_file(
                    str(self.path), config=str(self.config_dir()), local_files_only=True, dtype=self.dtype)
                if self.settings.model_config_dir is None:  # our shipped tokenizers
                    use_open_clip_padding(pipe.tokenizer_2)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise RunnerError(
                f"could not load the SDXL checkpoint at {self.path} (chosen by {self.chosen_by}): "
                f"{type(exc).__name__}: {str(exc)[:500]}", code="model_invalid",
                details={"path": str(self.path), "chosen_by": self.chosen_by}) from None
        if self.settings.vae_path:
            self._load_fixed_vae(pipe)
        pipe.set_progress_bar_config(disable=True)
        self.use(pipe.to(self.device))
        if self.path.is_file() and self.model_sha256 is None:
            self.model_sha256 = file_sha256(self.path, self.settings.data_dir / "model-hashes.json")
        if self.settings.compile:
            try:
                self._compile()
            except Exception as exc:
                raise RunnerError(f"DF_COMPILE=1: compiling the UNet failed: {type(exc).__name__}: "
                                  f"{str(exc)[:500]}; unset DF_COMPILE to run eagerly",
                                  code="compile_failed") from None

    def use(self, pipe: Any) -> None:
        """Generate with this pipeline (loaded here, or built in code by a benchmark)."""
        self.pipe = pipe
        # Each job builds its scheduler afresh from the checkpoint's own config (schedulers.build),
        # so switching schedulers never reloads the model and no job's choice leaks into the next.
        self.base_scheduler = {**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__}
        self._fits.clear()

    def _load_fixed_vae(self, pipe: Any) -> None:
        from diffusers import AutoencoderKL

        assert self.settings.vae_path is not None  # only called when DF_VAE_PATH is set
        path = Path(self.settings.vae_path).expanduser()
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        else:
            vae = AutoencoderKL.from_single_file(str(path), config=str(self.config_dir()), subfolder="vae",
                                                 dtype=self.dtype, local_files_only=True)
        # A VAE fixed for fp16 (e.g. sdxl-vae-fp16-fix) decodes in half precision without the upcast.
        vae.register_to_config(force_upcast=False)
        pipe.vae = vae

    def _compile(self) -> None:
        """Compile the UNet once, here, at worker start: a warm-up generation at the default size
        triggers it, so no job pays for it. What Inductor builds is kept on disk (its FX-graph
        cache, plus the portable "mega-cache" file), so a restarted worker skips the codegen."""
        import torch

        artifacts = compile_cache_dir(self.settings) / "mega-cache.bin"
        if artifacts.exists():
            torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        # The layout and fusions the Diffusers guide to a compiled SDXL recommends: NHWC
        # convolutions, one matmul for q/k/v, 1x1 convolutions as matmuls.
        self.pipe.unet.to(memory_format=torch.channels_last)
        self.pipe.vae.to(memory_format=torch.channels_last)
        self.pipe.fuse_qkv_projections()
        torch._inductor.config.conv_1x1_as_mm = True
        self.pipe.unet = torch.compile(self.pipe.unet)
        size = self.settings.compile_warmup_size
        with torch.inference_mode():
            self.pipe(prompt="warm-up", width=size, height=size, num_inference_steps=2,
                      output_type="latent", generator=torch.Generator("cpu").manual_seed(0))
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            tmp = artifacts.with_suffix(".tmp")
            tmp.write_bytes(saved[0])
            os.replace(tmp, artifacts)

    def facts(self) -> dict[str, Any]:
        """What every job's record says of this loaded model and machine."""
        import diffusers
        import torch

        return {"runner": "sdxl", "model": {"name": self.model_name, "sha256": self.model_sha256,
                                            "kind": "single_file" if self.path.is_file() else "diffusers_folder"},
                "dtype": str(self.dtype).replace("torch.", ""), "device": device_name(self.device),
                "torch": torch.__version__, "diffusers": diffusers.__version__,
                "compiled": bool(self.settings.compile)}

    def generate(self, request: Generation, on_step: Callable[[int, int], None]) -> GeneratedBatch:
        """Every item, in as few pipeline calls as memory allows: up to DF_MAX_BATCH items a call,
        each with its own generator. When the GPU runs out of memory, the call's items are made
        again in halves (down to one at a time), and the split is recorded."""
        import torch

        seeds = request.seeds()
        steps, count = request.steps, request.count
        total = steps * count
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)  # the peak of this job, not the process's
        size_key = (request.width, request.height)
        cap = min(self.settings.max_batch, self._fits.get(size_key, count), count)
        images: list[GeneratedImage] = []
        batches: list[int] = []
        splits: list[dict[str, int]] = []
        scheduler = None
        started = time.perf_counter()
        while len(images) < count:
            first = len(images)
            size = min(cap, count - first)
            chunk = seeds[first:first + size]
            scheduler = schedulers.build(request.scheduler, self.base_scheduler, chunk)
            def progress(step: int, n: int = size, done: int = first * steps) -> None:
                on_step(done + step * n, total)

            try:
                pixels = self._call(request, chunk, scheduler, progress)
            except torch.OutOfMemoryError:
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                if size == 1:
                    raise RunnerError(f"the GPU ran out of memory at {request.width}x{request.height} even "
                                      "for one image; memory was freed, try a smaller size",
                                      code="gpu_out_of_memory") from None
                cap = size // 2
                self._fits[size_key] = cap
                splits.append({"at_item": first, "items": size, "then": cap})
                log.warning("out of memory making %d images at %dx%d; %d at a time now", size,
                            request.width, request.height, cap)
                continue
            if not np_isfinite(pixels):
                raise RunnerError("the model produced NaN or infinite values (in float16 this is usually "
                                  "the SDXL VAE overflowing); no image was stored", code="non_finite_output")
            for offset, image in enumerate(self.pipe.numpy_to_pil(pixels)):
                images.append(GeneratedImage(image, chunk[offset]))
            batches.append(size)
        gpu = None
        if cuda:
            index = torch.device(self.device).index
            gpu = {"device": f"cuda:{torch.cuda.current_device() if index is None else index}",
                   "allocated": torch.cuda.memory_allocated(self.device),
                   "peak": torch.cuda.max_memory_allocated(self.device)}
        record = {**self.facts(), "scheduler": schedulers.describe(scheduler, request.scheduler),
                  "batches": batches, **({"splits": splits} if splits else {})}
        return GeneratedBatch(images, model_s=time.perf_counter() - started, gpu_memory=gpu, record=record)

    def _call(self, request: Generation, seeds: list[int], scheduler: Any,
              on_step: Callable[[int], None]) -> Any:
        """One pipeline call for these items; their pixels (n, h, w, 3) in [0, 1]."""
        import torch

        def step_end(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1)
            return kwargs

        # One CPU generator per item: the same starting noise on every device, and item i's
        # noise the same whether it is made alone or in a batch.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        self.pipe.scheduler = scheduler
        with torch.inference_mode():
            result = self.pipe(
                prompt=request.prompt, negative_prompt=request.negative_prompt,
                num_images_per_prompt=len(seeds), width=request.width, height=request.height,
                num_inference_steps=request.steps, guidance_scale=request.guidance,
                generator=generators, output_type="np", callback_on_step_end=step_end)
        return result.images


def np_isfinite(pixels: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(pixels).all())
