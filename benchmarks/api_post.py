"""POST /v1/jobs throughput and latency against a real `df serve` on loopback.

Starts `df serve --no-worker` (fake runner) on a free port for each backend pair, drives it with an
asyncio httpx client at a fixed concurrency, then checks that every 202 left exactly one job row and
one queue entry.

    python benchmarks/api_post.py [--requests 2000] [--concurrency 8] [--backends sqlite,postgres_redis]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_overhead import backend_env, percentile

BODY = {"type": "generate", "prompt": "an old-growth forest at dawn", "width": 64, "height": 64,
        "steps": 1, "format": "png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, total: int, concurrency: int) -> tuple[list[float], list[int], list[str], float]:
    latencies: list[float] = []
    statuses: list[int] = []
    ids: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def one_client() -> None:
            for _ in counter:
                t0 = time.perf_counter()
                r = await client.post("/v1/jobs", json=BODY)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses.append(r.status_code)
                if r.status_code == 202:
                    ids.append(r.json()["id"])

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, statuses, ids, elapsed


def run_backend(name: str, total: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env, cleanup = backend_env(name, Path(tmp) / "data")
        port = free_port()
        log = open(Path(tmp) / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", "serve", "--no-worker",
                                   "--port", str(port)], env={**os.environ, **env}, stdout=log,
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            asyncio.run(load(url, 50, concurrency))  # warm-up, counted in the checks below
            latencies, statuses, ids, elapsed = asyncio.run(load(url, total, concurrency))
            os.environ.update(env)
            from dreamforge.service import JobService
            from dreamforge.settings import Settings

            service = JobService.from_settings(Settings())
            rows = sum(service.job_store.counts().values())
            pending = service.queue.pending_job_ids()
            service.close()
            for key in env:
                os.environ.pop(key, None)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
            cleanup()
    accepted = sum(1 for s in statuses if s == 202) + 50
    return {"rps": total / elapsed, "p50": statistics.median(latencies), "p99": percentile(latencies, 99),
            "errors": sum(1 for s in statuses if s != 202), "accepted": accepted, "rows": rows,
            "queue_entries": len(pending), "distinct_queued": len(set(pending)),
            "all_ids_queued": set(ids) <= set(pending)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backends", default="sqlite,postgres_redis")
    args = parser.parse_args()
    results = [(name, run_backend(name, args.requests, args.concurrency)) for name in args.backends.split(",")]
    print(f"POST /v1/jobs, {args.requests} requests at concurrency {args.concurrency}, df serve --no-worker")
    print(f"{'backend':<16}{'POST/s':>9}{'p50':>10}{'p99':>10}{'errors':>8}{'202s':>7}{'rows':>7}"
          f"{'queued':>8}  every 202 queued once")
    for name, r in results:
        once = r["accepted"] == r["rows"] == r["queue_entries"] == r["distinct_queued"] and r["all_ids_queued"]
        print(f"{name:<16}{r['rps']:>9.1f}{r['p50']:>7.1f} ms{r['p99']:>7.1f} ms{r['errors']:>8}"
              f"{r['accepted']:>7}{r['rows']:>7}{r['queue_entries']:>8}  {'yes' if once else 'NO'}")


if __name__ == "__main__":
    main()
