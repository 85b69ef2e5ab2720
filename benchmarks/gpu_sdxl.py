"""SDXL on a GPU: a bare Diffusers pipeline call against the same request through DreamForge's
worker path (job row, queue, Huey worker loop, warm child runner, PNG encode, artifact store).

Builds the full-size SDXL base architecture (DreamForge's shipped configs) with random weights on
the GPU: no download, and weights don't change the cost. The weights are drawn small (std 0.02) so
that float16 activations stay finite, since DreamForge refuses to store a NaN image. The random
model is saved once as a single-file checkpoint in the original layout (DreamForge's own writer),
which the worker's child then loads offline exactly as it would a civitai file.

    python benchmarks/gpu_sdxl.py [--repeats 3] [--compile]
    python benchmarks/gpu_sdxl.py --config /path/to/tiny-diffusers-folder --device cpu --sizes 64x64/2  # a dry run

Prints a short table last.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_random_sdxl(config_dir: Path, device: str, dtype):
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from dreamforge.runners.model_config import use_open_clip_padding

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder_2"))
        with torch.no_grad():
            for module in (unet, vae, te1, te2):
                for p in module.parameters():
                    if p.ndim > 1:
                        p.normal_(0.0, 0.02)
    tok1 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer_2", local_files_only=True)
    use_open_clip_padding(tok2)
    scheduler = EulerDiscreteScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                     tokenizer_2=tok2, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_bare(pipe, device: str, width: int, height: int, steps: int, repeats: int) -> dict[str, float]:
    import numpy as np
    import torch

    def once() -> tuple[float, list[float]]:
        stamps: list[float] = []

        def on_step(_p, _i, _t, kwargs):
            sync(device)
            stamps.append(time.perf_counter())
            return kwargs

        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = pipe(prompt="an old-growth forest at dawn", width=width, height=height,
                       num_inference_steps=steps, guidance_scale=7.0, output_type="np",
                       generator=torch.Generator("cpu").manual_seed(42), callback_on_step_end=on_step)
        image = pipe.numpy_to_pil(out.images)[0]
        sync(device)
        elapsed = time.perf_counter() - t0
        assert np.isfinite(out.images).all(), "non-finite output from the random model"
        assert image.size == (width, height)
        return elapsed, [b - a for a, b in itertools.pairwise(stamps)]

    once()  # warm-up
    runs = [once() for _ in range(repeats)]
    return {"s_per_image": statistics.median(r[0] for r in runs),
            "ms_per_step": 1000 * statistics.median(d for r in runs for d in r[1])}


def time_dreamforge(service, sizes: list[tuple[int, int, int]], repeats: int) -> dict[tuple, float]:
    from dreamforge.schemas import parse_request

    results = {}
    for width, height, steps in sizes:
        request = parse_request({"prompt": "an old-growth forest at dawn", "width": width, "height": height,
                                 "steps": steps, "guidance": 7.0, "seed": 42})
        times, phases = [], []
        for i in range(repeats + 1):  # the first is a warm-up for this size
            t0 = time.perf_counter()
            job_id = service.submit(request).view.id
            while not (view := service.get(job_id)).status.is_terminal():
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            if view.status.value != "succeeded":
                raise SystemExit(f"DreamForge job failed: {view.error}")
            if i:
                times.append(elapsed)
                phases.append(_phases(service, job_id))
        results[(width, height, steps)] = statistics.median(times)
        breakdown = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
        print(f"DreamForge {width}x{height}/{steps} phases (median s): {breakdown}", flush=True)
    return results


def _phases(service, job_id: str) -> dict[str, float]:
    """Where a job's time went, from its own records: queue wait, steps, the tail after the last
    step, and the worker's timings (model call, PNG encode, store)."""
    job = service.job_store.job(job_id)
    events = service.job_store.events(job_id)
    progress = [e["at"] for e in events if e["kind"] == "progress"]
    done = next(e for e in events if e["payload"].get("status") == "succeeded")
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(progress)]
    return {"queue_s": (job["started_at"] - job["created_at"]).total_seconds(),
            "to_first_step_s": (progress[0] - job["started_at"]).total_seconds(),
            "step_s": statistics.median(steps) if steps else 0.0,
            "after_last_step_s": (job["finished_at"] - progress[-1]).total_seconds(),
            **done["payload"].get("timings", {})}


def start_worker(settings, service):
    from dreamforge.runners.child import ChildRunner
    from dreamforge.worker import EmbeddedWorker

    runner = ChildRunner(settings)
    t0 = time.perf_counter()
    runner.warm()  # spawn the child, load the checkpoint (and compile, with DF_COMPILE=1)
    if not runner._alive():
        raise SystemExit("the runner child did not start; see the log above")
    ready_s = time.perf_counter() - t0
    worker = EmbeddedWorker(service, runner)
    worker.start()
    return worker, ready_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1024x1024/30,256x256/10")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="float16 on CUDA, float32 on the CPU by default")
    parser.add_argument("--config", type=Path, default=None, help="a Diffusers folder whose configs to build")
    parser.add_argument("--compile", action="store_true", help="also time DF_COMPILE=1, cold and warm cache")
    args = parser.parse_args()

    import logging

    import diffusers
    import torch
    from safetensors.torch import save_file

    logging.basicConfig(level=logging.WARNING)
    from dreamforge.runners.model_config import sdxl_config_dir
    from dreamforge.runners.sgm_layout import pipeline_to_sgm

    sizes = []
    for spec in args.sizes.split(","):
        dims, steps = spec.split("/")
        w, h = dims.split("x")
        sizes.append((int(w), int(h), int(steps)))
    dtype_name = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    work = Path(tempfile.mkdtemp(prefix="df-gpu-bench-"))
    config_dir = args.config or sdxl_config_dir(work / "model-config")
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    pipe = build_random_sdxl(config_dir, args.device, dtype)
    build_s = time.perf_counter() - t0
    print(f"built random SDXL ({sum(p.numel() for p in pipe.unet.parameters()) / 1e9:.2f} B UNet params) "
          f"on {card} in {build_s:.1f} s", flush=True)
    bare = {}
    for w, h, steps in sizes:
        bare[(w, h, steps)] = time_bare(pipe, args.device, w, h, steps, args.repeats)
        print(f"bare {w}x{h}/{steps}: {bare[(w, h, steps)]}", flush=True)

    t0 = time.perf_counter()
    checkpoint = work / "random-sdxl.safetensors"
    save_file({k: v.detach().to("cpu").contiguous() for k, v in pipeline_to_sgm(pipe).items()}, str(checkpoint))
    save_s = time.perf_counter() - t0
    print(f"saved {checkpoint.stat().st_size / 1e9:.2f} GB single-file checkpoint in {save_s:.1f} s", flush=True)
    del pipe
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    env = {"DF_DATA_DIR": str(work / "data"), "DF_FAKE_RUNNER": "0", "DF_GENERATE_MODEL_PATH": str(checkpoint),
           "DF_DEVICE": args.device, "DF_DTYPE": dtype_name, "DF_COMPILE": "0"}
    if args.config:
        env["DF_MODEL_CONFIG_DIR"] = str(args.config)
    os.environ.update(env)
    from dreamforge.service import JobService
    from dreamforge.settings import Settings

    settings = Settings()
    service = JobService.from_settings(settings)
    worker, ready_s = start_worker(settings, service)
    print(f"worker child ready (load from the single file) in {ready_s:.1f} s", flush=True)
    ours = time_dreamforge(service, sizes, args.repeats)
    worker.stop()

    print_table(card, torch.__version__, diffusers.__version__, dtype_name, args.repeats,
                time.perf_counter() - t_start, sizes, bare, ours, None)

    if args.compile:
        compile_size = sizes[0]
        os.environ.update(DF_COMPILE="1", DF_COMPILE_WARMUP_SIZE=str(compile_size[0]))
        settings = Settings()
        runs = []
        for label in ("cold cache", "warm cache (restarted worker)"):
            worker, ready_s = start_worker(settings, service)
            per_image = time_dreamforge(service, [compile_size], args.repeats)[compile_size]
            worker.stop()
            runs.append((label, ready_s, per_image))
            print(f"compiled, {label}: ready in {ready_s:.1f} s, {per_image:.3f} s/img", flush=True)
        print_table(card, torch.__version__, diffusers.__version__, dtype_name, args.repeats,
                    time.perf_counter() - t_start, sizes, bare, ours, (compile_size, runs))
    service.close()


def print_table(card, torch_version, diffusers_version, dtype_name, repeats, total_s, sizes, bare, ours,
                compiled) -> None:
    print()
    print(f"{card} · torch {torch_version} · diffusers {diffusers_version} · {dtype_name} · "
          f"median of {repeats} after a warm-up · whole run so far {total_s:.0f} s")
    print(f"{'size/steps':<16}{'bare s/img':>11}{'ms/step':>9}{'DreamForge s/img':>18}{'ratio':>8}")
    for key in sizes:
        w, h, steps = key
        b = bare[key]
        print(f"{f'{w}x{h}/{steps}':<16}{b['s_per_image']:>11.3f}{b['ms_per_step']:>9.1f}"
              f"{ours[key]:>18.3f}{ours[key] / b['s_per_image']:>8.3f}")
    if compiled:
        (w, h, steps), runs = compiled
        for label, ready_s, per_image in runs:
            print(f"DF_COMPILE=1 {w}x{h}/{steps}, {label}: worker ready in {ready_s:.1f} s, "
                  f"{per_image:.3f} s/img ({1000 * per_image / steps:.1f} ms/step all-in)")
    print(flush=True)


if __name__ == "__main__":
    main()
