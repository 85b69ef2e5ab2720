"""The job system's own overhead, with the fake runner at 64x64 and one `df worker` process.

Prints, for each backend pair:
- enqueue→running latency on an idle worker (p50, p99): job.started_at − job.created_at, one job
  at a time, with a random pause between jobs so the worker's polling phase is sampled fairly;
- end-to-end throughput: N jobs submitted at once, jobs/s from the first submit to the last
  job finished.

    python benchmarks/queue_overhead.py [--latency-jobs 100] [--jobs 300] [--steps 1] [--backends sqlite,postgres_redis]
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
import uuid
from pathlib import Path

import sqlalchemy as sa

PG = os.environ.get("DF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def backend_env(name: str, data_dir: Path) -> tuple[dict[str, str], callable]:
    env = {"DF_DATA_DIR": str(data_dir), "DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": "0"}
    if name == "sqlite":
        return env, lambda: None
    schema = f"dfbench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    env.update(DF_DATABASE_URL=f"{PG}?options=-csearch_path%3D{schema}", DF_QUEUE_URL=REDIS,
               DF_QUEUE_NAME=schema)

    def cleanup() -> None:
        import redis

        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(f"*{schema}*"):
            client.delete(key)

    return env, cleanup


def run_backend(name: str, latency_jobs: int, jobs: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env, cleanup = backend_env(name, Path(tmp) / "data")
        os.environ.update(env)
        from dreamforge.schemas import parse_request
        from dreamforge.service import JobService
        from dreamforge.settings import Settings

        service = JobService.from_settings(Settings())
        log = open(Path(tmp) / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", "worker"],
                                  env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not service.live_workers():
                time.sleep(0.05)
            time.sleep(0.5)
            request = parse_request({"prompt": "benchmark", "width": 64, "height": 64,
                                     "steps": steps, "seed": 1})
            latencies = []
            for _ in range(latency_jobs):
                time.sleep(random.uniform(0.02, 0.1))
                job_id = service.submit(request).view.id
                while not (view := service.get(job_id)).status.is_terminal():
                    time.sleep(0.005)
                assert view.status.value == "succeeded", view.error
                latencies.append((view.started_at - view.created_at).total_seconds() * 1000)

            start = time.perf_counter()
            ids = [service.submit(request).view.id for _ in range(jobs)]
            submit_s = time.perf_counter() - start
            while service.job_store.counts()["succeeded"] < latency_jobs + jobs:
                counts = service.job_store.counts()
                assert counts["failed"] == 0, counts
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            assert all(service.get(i).status.value == "succeeded" for i in ids[:5])
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
            service.close()
            cleanup()
            for key in env:
                os.environ.pop(key, None)
        return {"p50": statistics.median(latencies), "p99": percentile(latencies, 99),
                "jobs_per_s": jobs / elapsed, "submit_per_s": jobs / submit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--backends", default="sqlite,postgres_redis")
    args = parser.parse_args()
    rows = []
    for name in args.backends.split(","):
        r = run_backend(name, args.latency_jobs, args.jobs, args.steps)
        rows.append((name, r))
    print(f"fake runner, 64x64, {args.steps} step(s), one worker; {args.latency_jobs} idle-latency jobs, "
          f"{args.jobs} throughput jobs")
    print(f"{'backend':<16}{'enqueue→running p50':>22}{'p99':>10}{'end-to-end jobs/s':>20}{'submits/s':>12}")
    for name, r in rows:
        print(f"{name:<16}{r['p50']:>19.1f} ms{r['p99']:>7.1f} ms{r['jobs_per_s']:>20.1f}"
              f"{r['submit_per_s']:>12.1f}")


if __name__ == "__main__":
    main()
