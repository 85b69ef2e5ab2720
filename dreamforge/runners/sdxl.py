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
from dreamforge.gpu_memory import BatchPlan, MemoryState, ModelShape
from dreamforge.runners import GeneratedBatch, GeneratedImage, Generation, LoraChoice, ModelChoice
from dreamforge.runners.model_config import sdxl_config_dir, use_open_clip_padding
from dreamforge.runners.sdxl_memory import cuda_memory_state, model_shape, plan_memory
from dreamforge.runners.sdxl_options import (
    attention_context,
    check_options,
    probe_machine,
    quantize_fp8,
    vae_decode_dtype,
)
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
        # img2img and inpaint pipelines, built from the loaded one's components (one model in memory).
        self._derived: dict[str, Any] = {}
        # The LoRAs loaded into the model now: adapter name → the file's sha256.
        self._loras: dict[str, str | None] = {}
        # Before each job on CUDA: this GPU's memory now (a test sets its own figures here).
        self.memory_probe: Callable[[], MemoryState] | None = None
        if self.device.startswith("cuda") and settings.gpu_memory_check:
            self.memory_probe = lambda: cuda_memory_state(self.device)
        self._shape: ModelShape | None = None

    def describe(self) -> str:
        return f"{self.path} on {self.device} ({str(self.dtype).replace('torch.', '')})"

    def config_dir(self) -> Path:
        """Configs and tokenizers for single files: DF_MODEL_CONFIG_DIR, or SDXL base's, shipped."""
        return self.settings.model_config_dir or sdxl_config_dir(self.settings.data_dir / "model-config")

    def load(self) -> None:
        from diffusers import StableDiffusionXLPipeline

        # Before minutes of loading: an option this machine can't do fails every job the same way.
        check_options(self.settings, probe_machine(self.device, self.dtype))
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
        self.prepare()

    def prepare(self) -> None:
        """Apply the options that change the loaded model (DF_VAE_DTYPE=float32, DF_FP8,
        DF_COMPILE): after ``load``, or after ``use`` for a pipeline built in code
        (benchmarks/gpu_compiled.py measures them through here)."""
        if self.settings.vae_dtype == "float32":
            self.pipe.vae.register_to_config(force_upcast=True)  # Diffusers then decodes in float32
        if self.settings.fp8 and not self.settings.compile:
            self._quantize()
        if self.settings.compile:
            try:
                self._compile()
            except RunnerError:
                raise
            except Exception as exc:
                raise RunnerError(f"DF_COMPILE=1: compiling the UNet failed: {type(exc).__name__}: "
                                  f"{str(exc)[:500]}; unset DF_COMPILE to run eagerly",
                                  code="compile_failed") from None

    def _quantize(self) -> None:
        try:
            quantize_fp8(self.pipe.unet)
        except Exception as exc:
            raise RunnerError(f"DF_FP8=1: torchao could not quantise the UNet: {type(exc).__name__}: "
                              f"{str(exc)[:500]}; unset DF_FP8", code="option_unsupported") from None

    def use(self, pipe: Any) -> None:
        """Generate with this pipeline (loaded here, or built in code by a benchmark)."""
        self.pipe = pipe
        # Each job builds its scheduler afresh from the checkpoint's own config (schedulers.build),
        # so switching schedulers never reloads the model and no job's choice leaks into the next.
        self.base_scheduler = {**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__}
        self._fits.clear()
        self._derived.clear()
        self._loras.clear()
        self._shape = None

    def pipeline(self, mode: str) -> Any:
        """The pipeline for a job type: the loaded text-to-image one, or the image-to-image or
        inpainting one Diffusers' ``from_pipe`` builds from its very components (no copy of
        the weights), kept for the next job."""
        if mode == "generate":
            return self.pipe
        if mode not in self._derived:
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

            kind = {"img2img": StableDiffusionXLImg2ImgPipeline, "inpaint": StableDiffusionXLInpaintPipeline}[mode]
            derived = kind.from_pipe(self.pipe)
            derived.set_progress_bar_config(disable=True)
            self._derived[mode] = derived
        return self._derived[mode]

    def apply_loras(self, loras: tuple[LoraChoice, ...]) -> None:
        """Make the model carry exactly these LoRAs at their weights. A LoRA stays loaded while
        the jobs that follow use it (only its weight is set again); when a job uses none, every
        LoRA layer is taken out, so the model is the checkpoint's again, bit for bit."""
        wanted = {adapter_name(lora): lora for lora in loras}
        if not wanted and not self._loras:
            return
        if loras and self.settings.compile:
            raise RunnerError("LoRAs need the eager UNet: DF_COMPILE=1 fuses the attention projections "
                              "they adapt; unset DF_COMPILE to use LoRAs", code="lora_unsupported")
        if loras and self.settings.fp8:
            raise RunnerError("LoRAs need the UNet's linear layers unquantised: DF_FP8=1 made them float8; "
                              "unset DF_FP8 to use LoRAs", code="lora_unsupported")
        pipe = self.pipe
        if not wanted:
            pipe.unload_lora_weights()
            self._loras.clear()
            return
        stale = [name for name, sha in self._loras.items() if name not in wanted or wanted[name].sha256 != sha]
        if stale:
            pipe.delete_adapters(stale)
            for name in stale:
                del self._loras[name]
        for name, lora in wanted.items():
            if name in self._loras:
                continue
            try:
                pipe.load_lora_weights(lora.path, adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                # Whatever it left half loaded goes with the rest: the next job starts clean.
                pipe.unload_lora_weights()
                self._loras.clear()
                raise RunnerError(f"could not load the LoRA {lora.name}: {type(exc).__name__}: {str(exc)[:300]}",
                                  code="lora_invalid", details={"lora": lora.name}) from None
            self._loras[name] = lora.sha256
        pipe.set_adapters(list(wanted), adapter_weights=[lora.weight for lora in wanted.values()])

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
        artifacts.parent.mkdir(parents=True, exist_ok=True)  # prepare_compile_cache made it in a worker
        if artifacts.exists():
            torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        # The layout and fusions the Diffusers guide to a compiled SDXL recommends: NHWC
        # convolutions, one matmul for q/k/v, 1x1 convolutions as matmuls.
        self.pipe.unet.to(memory_format=torch.channels_last)
        self.pipe.vae.to(memory_format=torch.channels_last)
        self.pipe.fuse_qkv_projections()
        if self.settings.fp8:
            self._quantize()  # after fusing, so the fused q/k/v matmul is float8 too
        torch._inductor.config.conv_1x1_as_mm = True
        mode = self.settings.compile_mode
        self.pipe.unet = torch.compile(self.pipe.unet, mode=None if mode == "default" else mode)
        size = self.settings.compile_warmup_size
        with torch.inference_mode(), attention_context(self.settings.attention_backend):
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

        settings = self.settings
        return {"runner": "sdxl", "model": {"name": self.model_name, "sha256": self.model_sha256,
                                            "kind": "single_file" if self.path.is_file() else "diffusers_folder"},
                "dtype": str(self.dtype).replace("torch.", ""), "device": device_name(self.device),
                "torch": torch.__version__, "diffusers": diffusers.__version__,
                "compiled": bool(settings.compile),
                **({"compile_mode": settings.compile_mode} if settings.compile else {}),
                "fp8": settings.fp8, "attention_backend": settings.attention_backend,
                "vae_decode_dtype": vae_decode_dtype(self.pipe) if self.pipe is not None else None}

    def generate(self, request: Generation, on_step: Callable[[int, int], None]) -> GeneratedBatch:
        """Every item, in as few pipeline calls as memory allows: up to DF_MAX_BATCH items a call,
        each with its own generator. When the GPU runs out of memory, the call's items are made
        again in halves (down to one at a time), and the split is recorded."""
        import torch

        seeds = request.seeds()
        # img2img and inpaint run the last int(steps * strength) steps of the schedule.
        steps, count = request.denoising_steps(), request.count
        total = steps * count
        self.apply_loras(request.loras)
        pipe = self.pipeline(request.mode)
        init, mask = request.input_images()
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)  # the peak of this job, not the process's
        size_key = (request.width, request.height)
        cap = min(self.settings.max_batch, self._fits.get(size_key, count), count)
        plan = self._plan_memory(request, cap)
        if plan is not None and plan.shrunk:
            log.warning("%d images at %dx%d a call would not fit the GPU's free memory (predicted); %d at a "
                        "time", cap, request.width, request.height, plan.batch)
            cap = plan.batch
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
                pixels = self._call(pipe, request, chunk, scheduler, progress, init, mask)
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
            for offset, image in enumerate(pipe.numpy_to_pil(pixels)):
                if mask is not None and init is not None:
                    # Outside the mask, the input's own pixels, exactly: what Diffusers does with
                    # padding_mask_crop, for the whole image (the VAE's round trip changes them).
                    image = pipe.image_processor.apply_overlay(mask, init, image)
                images.append(GeneratedImage(image, chunk[offset]))
            batches.append(size)
        gpu = None
        if cuda:
            index = torch.device(self.device).index
            peak = torch.cuda.max_memory_allocated(self.device)
            gpu = {"device": f"cuda:{torch.cuda.current_device() if index is None else index}",
                   "allocated": torch.cuda.memory_allocated(self.device), "peak": peak,
                   "peak_allocated_bytes": peak,
                   "predicted_peak_bytes": plan.predicted_peak if plan is not None else None}
        record = {**self.facts(), "scheduler": schedulers.describe(scheduler, request.scheduler),
                  "batches": batches, **({"splits": splits} if splits else {}),
                  **({"memory_plan": plan.record()} if plan is not None else {})}
        return GeneratedBatch(images, model_s=time.perf_counter() - started, gpu_memory=gpu, record=record)

    def _plan_memory(self, request: Generation, wanted: int) -> BatchPlan | None:
        """On CUDA (where ``memory_probe`` is set): how many items a call fits the GPU's free
        memory; raises gpu_out_of_memory_predicted when not even one does."""
        if self.memory_probe is None:
            return None
        if self._shape is None:
            self._shape = model_shape(self.pipe)
        return plan_memory(self._shape, self.memory_probe(), request, wanted, self.settings.attention_backend,
                           device_name(self.device))

    def _call(self, pipe: Any, request: Generation, seeds: list[int], scheduler: Any,
              on_step: Callable[[int], None], init: Any = None, mask: Any = None) -> Any:
        """One pipeline call for these items; their pixels (n, h, w, 3) in [0, 1]."""
        import torch

        def step_end(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1)
            return kwargs

        # One CPU generator per item: the same starting noise on every device, and item i's
        # noise the same whether it is made alone or in a batch.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        pipe.scheduler = scheduler
        size: dict[str, Any] = {"width": request.width, "height": request.height}
        if request.mode == "img2img":
            size = {"image": init, "strength": request.strength}  # the image's size (resized to the job's)
        elif request.mode == "inpaint":
            size |= {"image": init, "mask_image": mask, "strength": request.strength}
        with torch.inference_mode(), attention_context(self.settings.attention_backend):
            result = pipe(
                prompt=request.prompt, negative_prompt=request.negative_prompt,
                num_images_per_prompt=len(seeds), num_inference_steps=request.steps,
                guidance_scale=request.guidance, generator=generators, output_type="np",
                callback_on_step_end=step_end, **size)
        return result.images


def adapter_name(lora: LoraChoice) -> str:
    """The adapter a LoRA is loaded as: PEFT names modules after it, so no dots; from its
    registered name, so two names never share one."""
    return "lora_" + hashlib.sha256(lora.name.encode()).hexdigest()[:16]


def np_isfinite(pixels: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(pixels).all())
