"""The job system's own overhead on one worker, against bare Huey in the same run.

For each backend pair (fake runner, 64x64, one `df worker` process, no step delay):
- enqueue→running latency on an idle worker (p50, p99): job.started_at − job.created_at, one job
  at a time, with a random pause between jobs so the worker's polling phase is sampled fairly;
- jobs/s at 1 step and at 10 steps: N jobs submitted at once from this process, from the first
  submit to the last job's success; and the 10-step rate as a ratio of the 1-step one;
- PostgreSQL round trips per job, worker side: a second worker reaches PostgreSQL through a loopback
  proxy (scratch.RoundTripProxy) that counts each burst of bytes the client sends after the
  server last spoke, so a pre-ping, a BEGIN, a statement and a COMMIT each count as one unless
  they travel together. Everything that worker sends while it runs --trip-jobs jobs counts (its
  heartbeat and reaper chores included), divided by those jobs; Redis traffic is not counted;
- the worker process's CPU per job (user + system, from /proc) at 1 and 10 steps: on a shared
  machine it moves far less with other load than the rates do;
- bare Huey: the same queue backend and consumer settings running a no-op task (bare.py), tasks/s
  from the first enqueue to the last task run; each jobs/s figure is also printed as a ratio of it.

Ratios are inside one run on one machine; absolute figures move with the machine's load.

    python benchmarks/queue_overhead.py [--latency-jobs 50] [--jobs 300] [--trip-jobs 100]
        [--backends sqlite,postgres_redis]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import PG, REDIS, RoundTripProxy, backend_env, cpu_seconds, percentile  # noqa: F401 (re-exported)

HERE = Path(__file__).resolve().parent


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)


def bare_huey_rate(env: dict[str, str], tmp: Path, tasks: int) -> float:
    """No-op tasks/s through Huey's own consumer on the same queue."""
    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    from bare import bare_huey

    _, noop = bare_huey()
    log = open(tmp / "bare-consumer.log", "w")
    consumer = subprocess.Popen([sys.executable, str(HERE / "bare.py"), "huey-consumer"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        warm = tmp / "bare-warm"
        noop(str(warm))
        _wait_for(warm)
        done = tmp / "bare-done"
        start = time.perf_counter()
        for _ in range(tasks - 1):
            noop()
        noop(str(done))
        _wait_for(done)
        return tasks / (time.perf_counter() - start)
    finally:
        consumer.terminate()
        consumer.wait(30)
        log.close()


def jobs_rate(service: Any, request: Any, jobs: int, worker_pid: int | None = None) -> float | tuple[float, float]:
    """Jobs/s; with ``worker_pid``, also that worker's CPU per job in ms."""
    cpu = cpu_seconds(worker_pid) if worker_pid else 0.0
    start = time.perf_counter()
    before = service.job_store.counts()["succeeded"]
    for _ in range(jobs):
        service.submit(request)
    while (counts := service.job_store.counts())["succeeded"] < before + jobs:
        assert counts["failed"] == 0, counts
        time.sleep(0.01)
    rate = jobs / (time.perf_counter() - start)
    return (rate, (cpu_seconds(worker_pid) - cpu) / jobs * 1000) if worker_pid else rate


class Worker:
    """A `df worker` process, alive (heartbeating) once entered."""

    def __init__(self, service: Any, env: dict[str, str], log_path: Path):
        self.service, self.env, self.log_path = service, env, log_path

    def __enter__(self) -> Worker:
        self.log = open(self.log_path, "a")
        known = {w["id"] for w in self.service.live_workers()}
        self.process = subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", "worker"],
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        while not {w["id"] for w in self.service.live_workers()} - known:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited: see {self.log_path}")
            time.sleep(0.05)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def run_backend(name: str, latency_jobs: int, jobs: int, trip_jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        env = stack.enter_context(backend_env(name, tmp / "data"))
        os.environ.update(env)
        from dreamforge.schemas import parse_request
        from dreamforge.service import JobService
        from dreamforge.settings import Settings

        service = JobService.from_settings(Settings())
        one = parse_request({"prompt": "benchmark", "width": 64, "height": 64, "steps": 1, "seed": 1})
        ten = parse_request({"prompt": "benchmark", "width": 64, "height": 64, "steps": 10, "seed": 1})
        result: dict[str, Any] = {}
        with Worker(service, {**os.environ, **env}, tmp / "worker.log") as worker:
            # A first job warms the worker (its first claim imports the runner's code): p99 is
            # then the polling, not the cold start.
            jobs_rate(service, one, 1)
            latencies = []
            for _ in range(latency_jobs):
                time.sleep(random.uniform(0.02, 0.1))
                job_id = service.submit(one).view.id
                while not (view := service.get(job_id)).status.is_terminal():
                    time.sleep(0.005)
                assert view.status.value == "succeeded", view.error
                latencies.append((view.started_at - view.created_at).total_seconds() * 1000)
            result.update(p50=statistics.median(latencies), p99=percentile(latencies, 99))
            for steps, request in ((1, one), (10, ten)):
                result[f"rate{steps}"], result[f"cpu{steps}"] = jobs_rate(service, request, jobs, worker.process.pid)
            events = service.events(service.list_jobs(limit=1)[0].id)
            result["progress_writes10"] = sum(1 for e in events if e["kind"] == "progress")
        if "DF_DATABASE_URL" in env:
            # A second worker through the counting proxy (the proxy's own latency would slow the
            # rates above, so it is only in the way while counting).
            proxy = stack.enter_context(RoundTripProxy())
            proxied = {**os.environ, **env, "DF_DATABASE_URL": proxy.url(env["DF_DATABASE_URL"])}
            with Worker(service, proxied, tmp / "worker.log"):
                for steps, request in ((1, one), (10, ten)):
                    trips = proxy.round_trips
                    jobs_rate(service, request, trip_jobs)
                    result[f"trips{steps}"] = (proxy.round_trips - trips) / trip_jobs
        result["bare"] = bare_huey_rate(env, tmp, max(jobs, 1000))
        service.close()
        for key in env:
            os.environ.pop(key, None)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--trip-jobs", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,postgres_redis")
    args = parser.parse_args()
    rows = [(name, run_backend(name, args.latency_jobs, args.jobs, args.trip_jobs))
            for name in args.backends.split(",")]
    print(f"fake runner, 64x64, one worker; {args.latency_jobs} idle-latency jobs, {args.jobs} jobs per "
          "rate; round trips: worker→PostgreSQL bursts per job (proxy)")
    print(f"{'backend':<16}{'latency p50':>12}{'p99':>9}{'jobs/s 1 step':>15}{'10 steps':>10}{'10/1':>7}"
          f"{'bare Huey/s':>13}{'1 step/bare':>13}{'trips 1':>9}{'trips 10':>10}{'progress rows 10':>18}"
          f"{'CPU/job 1':>11}{'CPU/job 10':>12}")
    for name, r in rows:
        trips = f"{r['trips1']:>9.1f}{r['trips10']:>10.1f}" if "trips1" in r else f"{'-':>9}{'-':>10}"
        print(f"{name:<16}{r['p50']:>9.1f} ms{r['p99']:>6.1f} ms{r['rate1']:>15.1f}{r['rate10']:>10.1f}"
              f"{r['rate10'] / r['rate1']:>7.2f}{r['bare']:>13.1f}{r['rate1'] / r['bare']:>13.3f}{trips}"
              f"{r['progress_writes10']:>18}{r['cpu1']:>8.2f} ms{r['cpu10']:>9.2f} ms")


if __name__ == "__main__":
    main()
