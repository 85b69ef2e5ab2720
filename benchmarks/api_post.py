"""POST /v1/jobs throughput and latency against a real `df serve` on loopback, side by side with a
bare Starlette app (bare.py: one INSERT transaction and one Huey enqueue per POST) under the same
uvicorn settings, on the same backends, in the same run.

For each backend pair it starts `df serve --no-worker` (fake runner) on a free port, drives it
with an asyncio httpx client at a fixed concurrency, checks that every 202 left exactly one job
row and one queue entry, then does the same load against the bare app. On PostgreSQL both servers
also run behind a loopback proxy that counts round trips (scratch.RoundTripProxy:
bursts of client bytes after the server last spoke), printed per POST, and how many connections
each server opened per POST (connections beyond the pool's size are opened and closed per
checkout), in a pass of their own (--trip-requests) after the timed ones, so the proxy's latency
weighs on no rate. Each server's CPU per POST (user + system, from /proc) is printed beside its
rate: on a shared machine it moves far less with other load than the rate does.

With --watchers N, N SSE streams follow /v1/events on the df server during its timed pass (a
dashboard left open), so the event feed is awake: each POST's queued event is read back and sent.

    python benchmarks/api_post.py [--requests 2000] [--concurrency 8] [--trip-requests 300]
        [--backends sqlite,postgres_redis] [--watchers 0]
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import RoundTripProxy, backend_env, cpu_seconds, percentile

HERE = Path(__file__).resolve().parent

BODY = {"type": "generate", "prompt": "an old-growth forest at dawn", "width": 64, "height": 64,
        "steps": 1, "format": "png"}
WARM_UP = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def watch(client: httpx.AsyncClient, opened: asyncio.Event, frames: list[int]) -> None:
    """One SSE client following every job's events (a dashboard left open), counting the frames."""
    async with client.stream("GET", "/v1/events", headers={"Accept": "text/event-stream"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith(": stream open"):
                opened.set()
            elif line.startswith("id:"):
                frames[0] += 1


async def load(url: str, total: int, concurrency: int,
               watchers: int = 0) -> tuple[list[float], list[int], list[str], float, int]:
    """POSTs from ``concurrency`` clients; with ``watchers``, that many SSE streams on /v1/events
    stay open meanwhile. Returns latencies, statuses, ids, seconds, and the frames the watchers got."""
    latencies: list[float] = []
    statuses: list[int] = []
    ids: list[str] = []
    frames = [0]
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency + watchers, max_keepalive_connections=concurrency + watchers)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=None), limits=limits) as client:
        async def one_client() -> None:
            for _ in counter:
                t0 = time.perf_counter()
                r = await client.post("/v1/jobs", json=BODY)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses.append(r.status_code)
                if r.status_code == 202:
                    ids.append(r.json()["id"])

        openings = [asyncio.Event() for _ in range(watchers)]
        streams = [asyncio.create_task(watch(client, opened, frames)) for opened in openings]
        for opened in openings:
            await asyncio.wait_for(opened.wait(), 30)
        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.5 if watchers else 0)  # the last events reach the watchers
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return latencies, statuses, ids, elapsed, frames[0]


def drive(command: list[str], env: dict[str, str], log_path: Path, total: int, concurrency: int,
          proxy: RoundTripProxy | None, watchers: int = 0) -> dict[str, Any]:
    """Start a server, warm it up, load it; the figures, with the ids it accepted."""
    port = free_port()
    log = open(log_path, "w")
    server = subprocess.Popen([*command, "--port", str(port)], env={**os.environ, **env}, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if server.poll() is not None:
                raise RuntimeError(f"{command} exited: see {log_path}")
        asyncio.run(load(url, WARM_UP, concurrency))
        trips, conns = (proxy.round_trips, proxy.connections) if proxy else (0, 0)
        cpu = cpu_seconds(server.pid)
        latencies, statuses, ids, elapsed, frames = asyncio.run(load(url, total, concurrency, watchers))
        result = {"rps": total / elapsed, "cpu_ms": (cpu_seconds(server.pid) - cpu) / total * 1000,
                  "p50": statistics.median(latencies), "p99": percentile(latencies, 99),
                  "errors": sum(1 for s in statuses if s != 202), "ids": ids, "frames": frames}
        if proxy:
            result.update(trips=(proxy.round_trips - trips) / total, connects=proxy.connections - conns)
        return result
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def run_backend(name: str, total: int, concurrency: int, trip_requests: int, watchers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        env = stack.enter_context(backend_env(name, tmp / "data"))
        df_command = [sys.executable, "-m", "dreamforge.cli.main", "serve", "--no-worker"]
        bare_command = [sys.executable, str(HERE / "bare.py"), "post-app"]
        df = drive(df_command, env, tmp / "serve.log", total, concurrency, None, watchers)
        os.environ.update(env)
        from dreamforge.service import JobService
        from dreamforge.settings import Settings

        service = JobService.from_settings(Settings())
        rows = sum(service.job_store.counts().values())
        pending = service.queue.pending_job_ids()
        service.queue.flush()
        for key in env:
            os.environ.pop(key, None)
        df.update(accepted=sum(1 for _ in df["ids"]) + WARM_UP, rows=rows, queue_entries=len(pending),
                  distinct_queued=len(set(pending)), all_ids_queued=set(df.pop("ids")) <= set(pending))
        bare = drive(bare_command, env, tmp / "bare.log", total, concurrency, None)
        bare.pop("ids")
        if "DF_DATABASE_URL" in env:
            # Round trips in a pass of their own, through the counting proxy (its latency would
            # weigh on the rates above).
            proxy = stack.enter_context(RoundTripProxy())
            proxied = {**env, "DF_DATABASE_URL": proxy.url(env["DF_DATABASE_URL"])}
            for figures, command in ((df, df_command), (bare, bare_command)):
                counted = drive(command, proxied, tmp / "counted.log", trip_requests, concurrency, proxy)
                figures.update(trips=counted["trips"], connects=counted["connects"] / trip_requests)
            service.queue.flush()
        service.close()
        return {"df": df, "bare": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--trip-requests", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgres_redis")
    parser.add_argument("--watchers", type=int, default=0,
                        help="SSE streams on /v1/events kept open during df's timed pass (a dashboard)")
    args = parser.parse_args()
    results = [(name, run_backend(name, args.requests, args.concurrency, args.trip_requests, args.watchers))
               for name in args.backends.split(",")]
    print(f"POST /v1/jobs, {args.requests} requests at concurrency {args.concurrency}; df = df serve --no-worker, "
          "bare = bare.py post-app (one INSERT + one Huey enqueue); PG round trips counted by a proxy"
          + (f"; {args.watchers} SSE stream(s) on /v1/events open during df's timed pass" if args.watchers else ""))
    print(f"{'backend':<16}{'server':<7}{'POST/s':>9}{'p50':>10}{'p99':>10}{'errors':>8}{'PG trips':>10}"
          f"{'connects':>10}{'CPU/POST':>10}{'df/bare':>9}{'CPU bare/df':>12}  every 202 queued once   "
          "(trips, connects, server CPU: per POST)")
    for name, r in results:
        df, bare = r["df"], r["bare"]
        once = df["accepted"] == df["rows"] == df["queue_entries"] == df["distinct_queued"] and df["all_ids_queued"]
        for label, x in (("df", df), ("bare", bare)):
            trips = f"{x['trips']:>10.2f}{x['connects']:>10.3f}" if "trips" in x else f"{'-':>10}{'-':>10}"
            tail = (f"{df['rps'] / bare['rps']:>9.3f}{bare['cpu_ms'] / df['cpu_ms']:>12.3f}  {'yes' if once else 'NO'}"
                    + (f"  (SSE frames received: {df['frames']})" if args.watchers else "") if label == "df" else "")
            print(f"{name:<16}{label:<7}{x['rps']:>9.1f}{x['p50']:>7.1f} ms{x['p99']:>7.1f} ms{x['errors']:>8}"
                  f"{trips}{x['cpu_ms']:>7.2f} ms{tail}")


if __name__ == "__main__":
    main()
