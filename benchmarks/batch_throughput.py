"""Images per second: one image a job (count 1) against four (count 4) in one batched pipeline call,
and four made one at a time (DF_MAX_BATCH=1), through DreamForge's SDXL runner code (the code the
worker's child runs: per-item generators, schedulers, the record), in this process.

CPU (default): the tiny random-weight SDXL the tests build, at 64x64. GPU (--gpu): the full-size
SDXL base architecture with random weights (built as benchmarks/gpu_sdxl.py does; weights don't
change the cost), float16, at 1024x1024.

    python benchmarks/batch_throughput.py [--repeats 3] [--steps 4] [--threads 1]
    python benchmarks/batch_throughput.py --gpu [--size 1024] [--steps 30]

Prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_pipe(gpu: bool, config_dir: Path):
    import torch

    if gpu:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_sdxl import build_random_sdxl

        return build_random_sdxl(config_dir, "cuda", torch.float16)
    from tests.tiny_sdxl import build_tiny_sdxl

    pipe = build_tiny_sdxl(config_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(model, count: int, size: int, steps: int, repeats: int) -> tuple[float, list[int]]:
    """Median seconds of one job of ``count`` images, and the batches the last one was made in."""
    import torch

    from dreamforge.runners import Generation

    request = Generation(prompt="an old-growth forest at dawn", negative_prompt=None, width=size,
                         height=size, steps=steps, guidance=7.0, seed=1, count=count)
    times, batches = [], []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = model.generate(request, lambda current, total: None)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        batches = result.record["batches"]
    return statistics.median(times), batches


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="full-size random SDXL on CUDA, float16")
    parser.add_argument("--size", type=int, default=None, help="pixels a side (64 on the CPU, 1024 on a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (4 on the CPU, 30 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    args = parser.parse_args(argv)
    import torch

    from dreamforge.runners.model_config import sdxl_config_dir
    from dreamforge.runners.sdxl import SDXL
    from dreamforge.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (1024 if args.gpu else 64)
    steps = args.steps or (30 if args.gpu else 4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipe(args.gpu, sdxl_config_dir(Path(tmp) / "config"))
        for label, count, max_batch in (("count 1", 1, 8), ("count 4, one batched call", 4, 8),
                                        ("count 4, one at a time", 4, 1)):
            settings = Settings(data_dir=Path(tmp), device="cuda" if args.gpu else "cpu",
                                generate_model_path=str(Path(tmp) / "random-sdxl"), max_batch=max_batch)
            model = SDXL(settings)
            model.use(pipe)
            measure(model, count, size, steps, 1)  # warm-up (and CUDA's kernel choices)
            seconds, batches = measure(model, count, size, steps, args.repeats)
            rows.append({"case": label, "count": count, "batches": batches, "seconds": seconds,
                         "images_per_s": count / seconds})
            print(f"{label}: {seconds:.3f} s a job, {count / seconds:.3f} images/s (batches {batches})",
                  flush=True)
    device = torch.cuda.get_device_name(0) if args.gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{'tiny' if not args.gpu else 'full-size random'} SDXL, {size}x{size}, {steps} steps, "
          f"{device}, torch {torch.__version__}, median of {args.repeats}")
    print(f"{'case':<28}{'s/job':>10}{'images/s':>10}")
    for row in rows:
        print(f"{row['case']:<28}{row['seconds']:>10.3f}{row['images_per_s']:>10.3f}")
    gain = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"batched count 4 against count 1: x{gain:.2f} images/s")
    return rows


if __name__ == "__main__":
    main()
