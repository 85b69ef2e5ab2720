"""The SDXL pipeline itself: loading a checkpoint offline and generating one image. Runs inside the
runner's child process (see child.py); this is the only module that imports torch and diffusers."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamforge.errors import RunnerError
from dreamforge.runners import GeneratedImage, Generation
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


class SDXL:
    """A loaded pipeline. ``load`` raises RunnerError(model_invalid) for a file it can't read."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path, self.chosen_by = settings.model_path()
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.pipe: Any = None

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
        self.pipe = pipe.to(self.device)
        if self.settings.compile:
            try:
                self._compile()
            except Exception as exc:
                raise RunnerError(f"DF_COMPILE=1: compiling the UNet failed: {type(exc).__name__}: "
                                  f"{str(exc)[:500]}; unset DF_COMPILE to run eagerly",
                                  code="compile_failed") from None

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

    def generate(self, request: Generation, on_step: Callable[[int, int], None]) -> GeneratedImage:
        import numpy as np
        import torch

        total = request.steps

        def step_end(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, total)
            return kwargs

        # A CPU generator gives the same starting noise on every device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)  # the peak of this job, not the process's
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                result = self.pipe(
                    prompt=request.prompt, negative_prompt=request.negative_prompt,
                    width=request.width, height=request.height, num_inference_steps=request.steps,
                    guidance_scale=request.guidance, generator=generator, output_type="np",
                    callback_on_step_end=step_end)
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            raise RunnerError(f"the GPU ran out of memory at {request.width}x{request.height}; "
                              "memory was freed, try a smaller size", code="gpu_out_of_memory") from None
        pixels = result.images[0]
        if not np.isfinite(pixels).all():
            raise RunnerError("the model produced NaN or infinite values (in float16 this is usually "
                              "the SDXL VAE overflowing); no image was stored", code="non_finite_output")
        image = self.pipe.numpy_to_pil(pixels[None])[0]
        gpu = None
        if cuda:
            index = torch.device(self.device).index
            gpu = {"device": f"cuda:{torch.cuda.current_device() if index is None else index}",
                   "allocated": torch.cuda.memory_allocated(self.device),
                   "peak": torch.cuda.max_memory_allocated(self.device)}
        return GeneratedImage(image=image, seed=request.seed, model_s=time.perf_counter() - started,
                              gpu_memory=gpu)
