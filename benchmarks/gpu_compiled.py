"""The compiled path's options on a GPU (issue 18), each alone and all together, against eager
float16: ms/step, end-to-end s/image, warm-up s, peak GPU memory against the runner's prediction,
and how far the images move from eager float16's on the same prompts and seeds.

Full-size SDXL base built with random weights from DreamForge's shipped configs (no download; the
weights don't change the cost). Random weights also mean the pixel differences say how far the
numerics move, not how an image of a trained model would look. Every variant runs through the SDXL
runner's own code (``SDXL.use`` + ``prepare`` + ``generate``), so it measures what DF_COMPILE_MODE,
DF_FP8, DF_VAE_DTYPE and DF_ATTENTION_BACKEND do in a worker; a variant this machine can't run is
printed as skipped with the runner's own reason, and one that would overrun --budget-s as skipped
for the budget. Variants run in the order listed; the compiled ones share Inductor's on-disk cache
(as a restarted worker would), so only the first compiled variant's warm-up is fully cold.

    python benchmarks/gpu_compiled.py --budget-s 450 --out results.json        # on a GPU
    python benchmarks/gpu_compiled.py --cpu-smoke                               # proves the script on a CPU

``--cpu-smoke``: the tiny test model, 64x64, 2 steps, float32, on the CPU, where the GPU-only
variants are skipped with why. Its figures mean nothing; it shows that every code path runs.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["an old-growth forest at dawn", "a lighthouse in fog, oil painting",
           "a red bicycle against a white wall", "macro photo of a honeybee on lavender"]

# name → the settings it changes (on top of eager float16), and whether the VAE decodes in float16
# (random weights stand in for a fixed VAE such as sdxl-vae-fp16-fix: it costs what the fixed one does).
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "compiled": {"compile": True},
    "reduce-overhead": {"compile": True, "compile_mode": "reduce-overhead"},
    "fp8": {"compile": True, "fp8": True},
    "vae-fp16": {"compile": True, "vae_fp16": True},
    "flash": {"compile": True, "attention_backend": "flash"},
    "together": {"compile": True, "compile_mode": "reduce-overhead", "fp8": True, "vae_fp16": True,
                 "attention_backend": "flash"},
    "cudnn": {"compile": True, "attention_backend": "cudnn"},
    "efficient": {"compile": True, "attention_backend": "efficient"},
    "max-autotune-no-cudagraphs": {"compile": True, "compile_mode": "max-autotune-no-cudagraphs"},
}


@dataclass
class Result:
    name: str
    skipped: str | None = None
    ready_s: float | None = None  # use + prepare: compile and its warm-up generation
    first_s: float | None = None  # the first image (a compiled UNet may still specialise)
    s_per_image: float | None = None  # median of the images after the first
    ms_per_step: float | None = None
    peak_bytes: int | None = None
    predicted_bytes: int | None = None
    mean_abs_diff: float | None = None  # 0-255, against eager's images of the same prompt and seed
    max_abs_diff: int | None = None
    record: dict[str, Any] = field(default_factory=dict)


def build_pipeline(args: argparse.Namespace, config_dir: Path) -> Any:
    import torch

    if args.cpu_smoke:
        from tests.tiny_sdxl import build_tiny_sdxl

        pipe = build_tiny_sdxl(config_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device="cpu", dtype=torch.float32)
    from benchmarks.gpu_sdxl import build_random_sdxl

    return build_random_sdxl(config_dir, args.device, getattr(torch, args.dtype))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_variant(name: str, args: argparse.Namespace, config_dir: Path, work: Path,
                reference: list[Any] | None) -> tuple[Result, list[Any]]:
    import numpy as np
    import torch

    from dreamforge.errors import RunnerError
    from dreamforge.runners import Generation
    from dreamforge.runners.sdxl import SDXL
    from dreamforge.runners.sdxl_options import probe_machine, problems
    from dreamforge.settings import Settings

    options = dict(VARIANTS[name])
    vae_fp16 = options.pop("vae_fp16", False)
    settings = Settings(_env_file=None, data_dir=work / name, device=args.device, dtype=args.dtype,
                        compile_warmup_size=args.size, generate_model_path=str(work / "unused"), **options)
    machine = probe_machine(args.device, getattr(torch, args.dtype))
    found = problems(settings, machine)
    if vae_fp16 and args.dtype != "float16":
        found.append(f"a float16 VAE decode needs the model in float16; it is {args.dtype} here")
    if found:
        return Result(name, skipped="; ".join(found)), []

    pipe = build_pipeline(args, config_dir)
    if vae_fp16:
        pipe.vae.register_to_config(force_upcast=False)  # what runners/sdxl.py does for DF_VAE_PATH's VAE
    model = SDXL(settings)
    sync(args.device)
    t0 = time.perf_counter()
    model.use(pipe)
    try:
        model.prepare()
    except RunnerError as exc:
        return Result(name, skipped=f"{exc.code}: {exc.message}"), []
    sync(args.device)
    result = Result(name, ready_s=time.perf_counter() - t0)

    images, totals, steps, peaks, predicted = [], [], [], [], []
    for i in range(args.images):
        stamps: list[float] = []

        def on_step(_current: int, _total: int, stamps: list[float] = stamps) -> None:
            sync(args.device)
            stamps.append(time.perf_counter())

        request = Generation(prompt=PROMPTS[i % len(PROMPTS)], negative_prompt=None, width=args.size,
                             height=args.size, steps=args.steps, guidance=7.0, seed=1000 + i)
        sync(args.device)
        t0 = time.perf_counter()
        batch = model.generate(request, on_step)
        sync(args.device)
        totals.append(time.perf_counter() - t0)
        steps.extend(b - a for a, b in itertools.pairwise(stamps))
        images.append(np.asarray(batch.images[0].image, dtype=np.int16))
        if batch.gpu_memory:
            peaks.append(batch.gpu_memory["peak_allocated_bytes"])
            predicted.append(batch.gpu_memory["predicted_peak_bytes"])
        result.record = {k: batch.record.get(k) for k in ("compiled", "compile_mode", "fp8", "attention_backend",
                                                            "vae_decode_dtype", "dtype", "device")}
    result.first_s = totals[0]
    result.s_per_image = statistics.median(totals[1:] or totals)
    result.ms_per_step = 1000 * statistics.median(steps) if steps else None
    result.peak_bytes = max(peaks) if peaks else None
    result.predicted_bytes = max(p for p in predicted if p is not None) if any(predicted) else None
    if reference is not None:
        diffs = [np.abs(a - b) for a, b in zip(images, reference, strict=True)]
        result.mean_abs_diff = float(np.mean([d.mean() for d in diffs]))
        result.max_abs_diff = int(max(d.max() for d in diffs))
    del model, pipe, batch
    free_memory(args.device)
    return result, images


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()  # the next variant compiles its own UNet
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 ** 3:.2f}"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result], header: str) -> None:
    print()
    print(header)
    print(f"{'variant':<28}{'ms/step':>9}{'s/image':>9}{'first s':>9}{'ready s':>9}{'peak GiB':>10}"
          f"{'pred GiB':>10}{'mean|Δ|':>9}{'max|Δ|':>8}")
    for r in results:
        if r.skipped:
            print(f"{r.name:<28}skipped: {r.skipped}")
            continue
        print(f"{r.name:<28}{fmt(r.ms_per_step, '.1f'):>9}{fmt(r.s_per_image, '.3f'):>9}{fmt(r.first_s, '.2f'):>9}"
              f"{fmt(r.ready_s, '.1f'):>9}{gib(r.peak_bytes):>10}{gib(r.predicted_bytes):>10}"
              f"{fmt(r.mean_abs_diff, '.2f'):>9}{r.max_abs_diff if r.max_abs_diff is not None else '-':>8}")
    print("mean|Δ| and max|Δ|: pixel levels (0-255) from eager's image of the same prompt and seed, "
          "RANDOM WEIGHTS: how far the numerics move, not how a trained model's image would look.", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 64x64, 2 steps, on the CPU")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, in order; eager first")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=3, help="prompts (and seeds) per variant")
    parser.add_argument("--budget-s", type=float, default=540, help="skip variants that would end after this")
    parser.add_argument("--compile-guess-s", type=float, default=180,
                        help="what a compiled variant costs before one has been measured")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.device, args.dtype, args.size, args.steps = "cpu", "float32", 64, 2
        args.images = min(args.images, 2)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or names[0] != "eager":
        raise SystemExit(f"--variants: eager first, then any of {', '.join(VARIANTS)} (unknown: {unknown})")

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="df-gpu-compiled-"))
    # Where Inductor keeps what it built, for every variant (runners/sdxl.prepare_compile_cache).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor"))
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_VERBOSITY="error",
                      TRANSFORMERS_VERBOSITY="error")
    import logging

    import diffusers
    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.cpu_smoke:
        # A tiny model gains nothing from threads; on a shared CPU their spin-waits cost 20x.
        torch.set_num_threads(1)
    from dreamforge.runners.model_config import sdxl_config_dir

    config_dir = sdxl_config_dir(work / "model-config")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    header = (f"{card} · torch {torch.__version__} · diffusers {diffusers.__version__} · {args.dtype} · "
              f"{args.size}x{args.size}, {args.steps} steps, CFG 7.0, {args.images} images a variant · "
              f"{'tiny random model (smoke)' if args.cpu_smoke else 'full-size SDXL base, random weights'}")
    print(header, flush=True)
    results: list[Result] = []
    reference: list[Any] | None = None
    compiled_cost: float | None = None
    eager_cost = 0.0
    for name in names:
        elapsed = time.perf_counter() - started
        compiled = bool(VARIANTS[name].get("compile"))
        guess = (compiled_cost or args.compile_guess_s) if compiled else eager_cost
        if name != "eager" and elapsed + guess > args.budget_s:
            results.append(Result(name, skipped=f"budget: {elapsed:.0f} s used, this one would take about "
                                                 f"{guess:.0f} s more, --budget-s {args.budget_s:.0f}"))
            print(f"{name}: {results[-1].skipped}", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            result, images = run_variant(name, args, config_dir, work, reference)
        except Exception as exc:  # one variant's failure is a finding, not the end of the run
            result, images = Result(name, skipped=f"failed: {type(exc).__name__}: {str(exc)[:300]}"), []
            free_memory(args.device)
        cost = time.perf_counter() - t0
        if name == "eager" and not result.skipped:
            reference, eager_cost = images, cost
        elif compiled and not result.skipped:
            # The largest: Inductor's cache makes a variant with the same graph cheaper, but one
            # with another graph (fp8, another mode or attention kernel) compiles cold again, and
            # a guess too low overruns the device call's limit.
            compiled_cost = max(cost, compiled_cost or 0.0)
        results.append(result)
        print(f"{name}: {json.dumps(result.__dict__, default=str)} ({cost:.0f} s)", flush=True)
        if args.out:  # after every variant: a run stopped by its time limit keeps what it measured
            args.out.write_text(json.dumps({"header": header, "results": [r.__dict__ for r in results]},
                                           indent=1, default=str))
    print_table(results, header + f" · whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
