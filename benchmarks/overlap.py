"""Does the GPU wait? A worker's jobs against back-to-back bare model calls, with the finishing
stage (DF_FINISHING_JOBS=1: encode and upload run while the next job generates) and without it (0).

The GPU is stood in for by the fake runner with a fixed per-step delay (a sleep: the "GPU" is busy
while the CPU is free, as with a real one), at 1024x1024, so the PNG encode (zlib level
DF_PNG_COMPRESS_LEVEL, default 4) and the upload to the artifact folder cost what they cost for a
real image of that size. Each figure is measured in this one run; compare the ratios.

- bare: ``FakeRunner.generate`` called back to back in this process, the model call alone;
- steady state: N jobs submitted at once to one `df worker` process (SQLite job store and queue,
  the embedded default), jobs/s between the first and the last job's end;
- single job: one job on an idle worker, from submit to succeeded, against a bare call made just
  before it; the median of those ratios.

    python benchmarks/overlap.py [--jobs 12] [--steps 30] [--step-delay-s 0.033] [--size 1024]
                                  [--singles 5] [--png-level 4] [--png-encoder isal|pillow]

With ``--sdxl``, DreamForge's SDXL runner instead of the stand-in: the bare call is the runner's
``generate`` in this process, the worker runs it in its child process as in production.
``--sdxl full`` (a GPU): the full-size SDXL base architecture with random weights, float16, saved
to a scratch folder first (about 7 GB of disk); ``--sdxl tiny`` (CPU): the tests' tiny model, a
smoke run of this script, not a measurement.

    python benchmarks/overlap.py --sdxl full --jobs 8 --singles 3         # on a GPU
    python benchmarks/overlap.py --sdxl tiny --size 64 --steps 4 --jobs 4   # CPU smoke run

Aims (issue 18): steady-state jobs/s >= 0.98x bare, single-job latency <= 1.05x the bare call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def save_sdxl(kind: str, root: Path) -> tuple[Path, dict[str, str]]:
    """A random-weight SDXL saved as a Diffusers folder, and the settings that run it."""
    from dreamforge.runners.model_config import sdxl_config_dir

    config_dir = sdxl_config_dir(root / "config")
    if kind == "tiny":
        from tests.tiny_sdxl import save_tiny_sdxl

        return save_tiny_sdxl(root, config_dir)[0], {"DF_DEVICE": "cpu"}
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_sdxl import build_random_sdxl

    folder = root / "sdxl-random"
    build_random_sdxl(config_dir, "cuda", torch.float16).save_pretrained(folder)
    return folder, {"DF_DEVICE": "cuda", "DF_DTYPE": "float16"}


def bare_runner(sdxl_env: dict[str, str] | None, delay: float, size: int, steps: int) -> Any:
    """The model call alone, in this process: the fake runner, or the SDXL runner loaded and warm."""
    from dreamforge.runners import Generation
    from dreamforge.runners.fake import FakeRunner

    if sdxl_env is None:
        return FakeRunner(step_delay_s=delay)
    from dreamforge.runners.sdxl import SDXL
    from dreamforge.settings import Settings

    runner = SDXL(Settings(**{k[3:].lower(): v for k, v in sdxl_env.items()}))
    runner.load()
    warm = Generation(prompt="warm-up", negative_prompt=None, guidance=7.0, width=size, height=size,
                      steps=steps, seed=0)
    runner.generate(warm, lambda current, total: None)
    return runner


def bare_call(runner: Any, i: int, steps: int, size: int, sdxl_env: dict[str, str] | None) -> float:
    """Seconds for one bare model call."""
    from dreamforge.runners import Generation

    request = Generation(prompt=f"bare {i}", negative_prompt=None, guidance=7.0, width=size,
                         height=size, steps=steps, seed=i)
    t0 = time.perf_counter()
    runner.generate(request, lambda current, total: None)
    if sdxl_env is not None and sdxl_env["DF_DEVICE"] == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bare_calls(runner: Any, jobs: int, steps: int, size: int, sdxl_env: dict[str, str] | None) -> float:
    """Seconds per call, back to back (steady state)."""
    started = time.perf_counter()
    for i in range(jobs):
        bare_call(runner, i, steps, size, sdxl_env)
    return (time.perf_counter() - started) / jobs


def with_worker(finishing: int, jobs: int, steps: int, delay: float, size: int, singles: int,
                sdxl_env: dict[str, str] | None, png_level: int, runner: Any, png_encoder: str,
                job_timeout_s: float) -> tuple[float, float, float, dict[str, float]]:
    """Seconds per job in steady state, the median single-job latency and the median of each
    single job's latency over a bare call made just before it (pairs, so that the machine's load
    weighs on both alike), and the mean timings."""
    from dreamforge.schemas import parse_request
    from dreamforge.service import JobService
    from dreamforge.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="df-overlap-"))
    env = {"DF_DATA_DIR": str(data), "DF_FINISHING_JOBS": str(finishing), "DF_PNG_COMPRESS_LEVEL": str(png_level),
           "DF_PNG_ENCODER": png_encoder,
           **({"DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": str(delay)} if sdxl_env is None
              else {"DF_FAKE_RUNNER": "0", **sdxl_env})}
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("DF_")}
    os.environ.update(env)
    log = open(data / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", "worker"],
                              env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        svc = JobService.from_settings(Settings())
        while "Huey consumer started" not in (data / "worker.log").read_text():
            if worker.poll() is not None:
                raise SystemExit((data / "worker.log").read_text())
            time.sleep(0.05)

        def submit(i: int) -> str:
            return svc.submit(parse_request({"prompt": f"job {i}", "width": size, "height": size,
                                             "steps": steps, "seed": i})).view.id

        def wait(ids: list[str]) -> list:
            deadline = time.monotonic() + job_timeout_s
            while True:
                views = [svc.get(i) for i in ids]
                if time.monotonic() > deadline:  # a stuck job ends the run, not the machine's time
                    raise SystemExit(f"jobs still not done after {job_timeout_s:.0f} s: "
                                     f"{[v.status.value for v in views]}; see {data / 'worker.log'}")
                if all(v.status.value in ("succeeded", "failed", "canceled") for v in views):
                    bad = [v for v in views if v.status.value != "succeeded"]
                    if bad:
                        raise SystemExit(f"a job did not succeed: {bad[0].error}")
                    return views
                time.sleep(0.01)

        wait([submit(10_000)])  # the worker's first job pays for imports; not measured
        views = wait([submit(i) for i in range(jobs)])
        ends = sorted(v.finished_at.timestamp() for v in views)
        per_job = (ends[-1] - ends[0]) / (len(ends) - 1)
        latencies, ratios = [], []
        for i in range(singles):
            bare = bare_call(runner, 2000 + i, steps, size, sdxl_env)
            time.sleep(0.3)
            (view,) = wait([submit(1000 + i)])
            latencies.append(view.finished_at.timestamp() - view.created_at.timestamp())
            ratios.append(latencies[-1] / bare)
        timings: dict[str, float] = {}
        for name in ("generate_s", "encode_s", "store_s"):
            values = [e["payload"]["timings"][name] for v in views for e in svc.events(v.id)
                      if e["payload"].get("status") == "succeeded"]
            timings[name] = statistics.mean(values)
        svc.close()
        return per_job, statistics.median(latencies), statistics.median(ratios), timings
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-delay-s", type=float, default=0.033, help="the stand-in GPU's time a step")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument("--png-level", type=int, default=4, help="DF_PNG_COMPRESS_LEVEL")
    parser.add_argument("--png-encoder", default="isal", choices=("isal", "pillow"), help="DF_PNG_ENCODER")
    parser.add_argument("--sdxl", choices=("tiny", "full"), help="the SDXL runner on random weights")
    parser.add_argument("--job-timeout-s", type=float, default=600, help="give up on jobs not done by then")
    args = parser.parse_args()

    sdxl_env = None
    model_dir = Path(tempfile.mkdtemp(prefix="df-overlap-model-")) if args.sdxl else None
    try:
        if args.sdxl and model_dir:
            folder, sdxl_env = save_sdxl(args.sdxl, model_dir)
            sdxl_env["DF_GENERATE_MODEL_PATH"] = str(folder)
            print(f"SDXL runner, {args.sdxl} random-weight model on {sdxl_env['DF_DEVICE']} (random weights: "
                  "images are noise, which PNG can't compress: the encode is at its slowest)")
        else:
            print(f"fake runner, {args.step_delay_s * 1000:.0f} ms stand-in GPU time a step")
        runner = bare_runner(sdxl_env, args.step_delay_s, args.size, args.steps)
        bare_per_call = bare_calls(runner, args.jobs, args.steps, args.size, sdxl_env)
        print(f"{args.size}x{args.size}, {args.steps} steps, PNG {args.png_encoder} level {args.png_level}, "
              f"{args.jobs} jobs")
        print(f"bare model calls back to back: {bare_per_call:.3f} s/call ({1 / bare_per_call:.3f} calls/s); "
              "each single job is paired with a bare call made just before it")
        print()
        # A row as each round ends, so a run cut short still leaves what it measured.
        print(f"{'DF_FINISHING_JOBS':>17}  {'s/job':>7}  {'jobs/s':>7}  {'x bare rate':>11}  "
              f"{'single s':>8}  {'x bare call':>11}  {'generate_s':>10}  {'encode_s':>8}  {'store_s':>7}",
              flush=True)
        for finishing in (0, 1):
            per_job, single, single_ratio, timings = with_worker(
                finishing, args.jobs, args.steps, args.step_delay_s, args.size, args.singles, sdxl_env,
                args.png_level, runner, args.png_encoder, args.job_timeout_s)
            print(f"{finishing:>17}  {per_job:7.3f}  {1 / per_job:7.3f}  {bare_per_call / per_job:11.3f}  "
                  f"{single:8.3f}  {single_ratio:11.3f}  {timings['generate_s']:10.3f}  "
                  f"{timings['encode_s']:8.3f}  {timings['store_s']:7.3f}", flush=True)
    finally:
        if model_dir:  # the full model is about 7 GB of scratch
            shutil.rmtree(model_dir, ignore_errors=True)

if __name__ == "__main__":
    main()
