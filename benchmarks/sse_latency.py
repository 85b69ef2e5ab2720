"""SSE latency from a worker's event commit to an httpx-sse client, and what 200 idle streams
cost the job store.

For each backend pair it starts `df serve --no-worker` and `df worker` (fake runner), opens one
SSE stream on /v1/events, submits jobs, and for every event received takes (receive time - the
event's `at`). `at` is the store's clock when the row was written, inside the committing
transaction, so the figure includes the commit (an upper bound on commit → client). Same host,
same clock.

Idle cost: 200 SSE streams on queued jobs (no worker), then 10 s of quiet. The store's own
per-table counters (pg_stat_user_tables: seq_scan + idx_scan on events and jobs, in a schema of
the benchmark's own) count every statement that read those tables; the same 10 s with no stream
open is the baseline (the feed's one read per wake-up or per second). PostgreSQL only: SQLite
keeps no such counters (there the feed polls every DF_EVENT_POLL_S whatever the number of
streams, by construction).

    python benchmarks/sse_latency.py [--jobs 20] [--steps 20] [--backends sqlite,postgres_redis] [--idle 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
from httpx_sse import connect_sse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_post import free_port
from queue_overhead import backend_env, percentile

BODY = {"prompt": "latency", "width": 64, "height": 64, "format": "png"}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamforge.cli.main", *args], env={**os.environ, **env},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def latency(url: str, jobs: int, steps: int) -> list[float]:
    received: list[float] = []
    expected_ends = jobs
    ready = threading.Event()

    def listen() -> None:
        nonlocal expected_ends
        with httpx.Client(base_url=url, timeout=60) as c, connect_sse(c, "GET", "/v1/events") as source:
            ready.set()
            for sse in source.iter_sse():
                now = time.time()
                event = sse.json()
                received.append((now - datetime.fromisoformat(event["at"]).timestamp()) * 1000)
                if sse.event == "status" and event["payload"]["status"] in ("succeeded", "failed"):
                    expected_ends -= 1
                    if expected_ends == 0:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    time.sleep(0.3)
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(jobs):
            c.post("/v1/jobs", json={**BODY, "steps": steps})
            time.sleep(0.05)
    listener.join(120)
    return received


def table_reads(db_url: str) -> int:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        n = conn.execute(sa.text(
            "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables "
            "WHERE schemaname = current_schema() AND relname IN ('events', 'jobs', 'steps')")).scalar_one()
    engine.dispose()
    return int(n)


async def hold_streams(url: str, job_ids: list[str], seconds: float) -> int:
    opened = 0
    limits = httpx.Limits(max_connections=len(job_ids) + 10)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=120), limits=limits) as client:
        async def one(job_id: str) -> None:
            nonlocal opened
            async with client.stream("GET", f"/v1/jobs/{job_id}/events",
                                     headers={"Accept": "text/event-stream"}) as r:
                opened += r.status_code == 200
                async for _ in r.aiter_raw():
                    pass

        tasks = [asyncio.create_task(one(j)) for j in job_ids]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return opened


def idle_cost(url: str, db_url: str, streams: int, seconds: float = 10.0) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=30) as c:
        ids = [c.post("/v1/jobs", json={**BODY, "steps": 1}).json()["id"] for _ in range(streams)]
    time.sleep(2)
    before = table_reads(db_url)
    time.sleep(seconds)
    time.sleep(1)  # the statistics collector's flush
    baseline = table_reads(db_url) - before
    settle = 12.0  # opening the streams reads each job's backlog once: let that pass first
    result: dict[str, float] = {}

    def measure() -> None:
        time.sleep(settle)
        start_reads = table_reads(db_url)
        time.sleep(seconds)
        time.sleep(1)
        result["reads"] = table_reads(db_url) - start_reads

    meter = threading.Thread(target=measure)
    meter.start()
    opened = asyncio.run(hold_streams(url, ids, settle + seconds + 1.5))
    meter.join()
    # The meter's own queries (2 per measurement) are in both figures.
    return {"streams_open": opened, "reads_idle_no_streams": baseline, "reads_idle_with_streams": result["reads"],
            "seconds": seconds}


def run(name: str, jobs: int, steps: int, idle: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, backend_env(name, Path(tmp) / "data") as env:
        env = {**env, "DF_FAKE_STEP_DELAY_S": "0.05"}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start(["serve", "--no-worker", "--port", str(port)], env, Path(tmp) / "serve.log")
        worker = None
        try:
            wait_up(url)
            worker = start(["worker"], env, Path(tmp) / "worker.log")
            time.sleep(3)
            values = latency(url, jobs, steps)
            print(f"{name}: {len(values)} events, commit->client p50 {percentile(values, 50):.1f} ms, "
                  f"p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms")
            worker.terminate()
            worker.wait(30)
            worker = None
            if idle and name != "sqlite":
                cost = idle_cost(url, env["DF_DATABASE_URL"], idle)
                print(f"{name}: {cost['streams_open']} idle SSE streams; table reads in {cost['seconds']:.0f} s: "
                      f"{cost['reads_idle_no_streams']} with no stream open, "
                      f"{cost['reads_idle_with_streams']} with the streams open")
        finally:
            if worker is not None:
                worker.kill()
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgres_redis")
    args = parser.parse_args()
    for name in args.backends.split(","):
        run(name, args.jobs, args.steps, args.idle)


if __name__ == "__main__":
    main()
