"""Cancel latency: from POST /v1/jobs/{id}/cancel to the runner stopping (its generate() call
returning or raising in the worker), for a job in the middle of its steps. The target is one step
plus 100 ms.

The fake runner sleeps --step-delay per step; with --sdxl, the real SDXL runner (its warm child
process) runs the tiny random-weight SDXL from tests/tiny_sdxl.py on the CPU, at a size where a
step takes a measurable time. SQLite job store, in-process app and worker thread.

    python benchmarks/cancel_latency.py [--runs 10] [--step-delay 0.1] [--sdxl]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Timed:
    """A runner that notes when each generate() ends (returns or raises) and how long steps take."""

    def __init__(self, runner: Any):
        self.runner = runner
        self.name = runner.name
        self.ended = 0.0
        self.step_times: list[float] = []

    def warm(self) -> None:
        self.runner.warm()

    def generate(self, request: Any, on_progress: Any) -> Any:
        last, seen = time.perf_counter(), 0

        def progress(current: int, total: int) -> None:
            # Runners also call this between steps to ask whether the job is still wanted: only a
            # new step counts as one.
            nonlocal last, seen
            now = time.perf_counter()
            if current != seen:
                self.step_times.append(now - last)
                last, seen = now, current
            on_progress(current, total)

        try:
            return self.runner.generate(request, progress)
        finally:
            self.ended = time.perf_counter()

    def close(self) -> None:
        self.runner.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.1)
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(DF_DATA_DIR=tmp, DF_FAKE_RUNNER="0" if args.sdxl else "1")
        if args.sdxl:
            from dreamforge.runners.model_config import sdxl_config_dir
            from tests.tiny_sdxl import save_tiny_sdxl

            config = sdxl_config_dir(Path(tmp) / "config")
            folder, _ = save_tiny_sdxl(Path(tmp) / "tiny", config)
            os.environ.update(DF_GENERATE_MODEL_PATH=str(folder), DF_MODEL_CONFIG_DIR=str(config),
                              DF_DEVICE="cpu")
        from starlette.testclient import TestClient

        from dreamforge.runners import make_runner
        from dreamforge.runners.fake import FakeRunner
        from dreamforge.server.app import create_app
        from dreamforge.service import JobService
        from dreamforge.settings import Settings
        from dreamforge.worker import InlineWorker

        settings = Settings()
        runner = Timed(make_runner(settings) if args.sdxl else FakeRunner(step_delay_s=args.step_delay))
        runner.warm()
        svc = JobService.from_settings(settings)
        latencies = []
        with TestClient(create_app(settings)) as client:
            for _ in range(args.runs):
                job_id = client.post("/v1/jobs", json={"prompt": "stop me", "width": args.size,
                                                       "height": args.size, "steps": 150}).json()["id"]
                worker = InlineWorker(svc, runner, job_id)
                worker.start()
                while svc.get(job_id).steps[0].progress.current < 3:
                    time.sleep(0.01)
                time.sleep(0.37 * statistics.median(runner.step_times[-3:]))  # mid-step
                t0 = time.perf_counter()
                assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
                worker.join()
                latencies.append((runner.ended - t0) * 1000)
                assert svc.get(job_id).artifacts == []
        runner.close()
        svc.close()
        step_ms = statistics.median(runner.step_times) * 1000
        print(f"{'sdxl tiny' if args.sdxl else 'fake'} runner, step {step_ms:.0f} ms: cancel -> runner stopped "
              f"p50 {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms "
              f"(target: one step + 100 ms = {step_ms + 100:.0f} ms); {args.runs} runs")


if __name__ == "__main__":
    main()
