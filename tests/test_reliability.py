"""No job lost, none stuck: faults caused for real (signals, servers stopped), on both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import need_service, run_df
from tests.polling import runs_of, wait_status, wait_terminal
from tests.servers import PostgresServer, RedisServer
from tests.test_api import Server

FAST_RECLAIM = {"DF_HEARTBEAT_INTERVAL_S": "0.3", "DF_WORKER_TIMEOUT_S": "2",
                "DF_ORPHAN_SWEEP_INTERVAL_S": "1"}


def request(prompt: str = "r", steps: int = 2) -> object:
    return parse_request({"prompt": prompt, "width": 64, "height": 64, "steps": steps, "seed": 1})


def service() -> JobService:
    return JobService.from_settings(Settings())


def test_sigkilled_worker_job_is_reclaimed_and_finished(df_env, start_worker, fault_report):
    env = {**FAST_RECLAIM, "DF_FAKE_STEP_DELAY_S": "0.1"}
    victim = start_worker(env=env)
    svc = service()
    job = svc.submit(request("killed", steps=20)).view.id
    wait_status(svc, job, "running")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    start_worker(env=env)
    counts = wait_terminal(svc, [job])
    fault_report("worker SIGKILLed mid-job, a second worker reclaims", counts)
    view = svc.get(job)
    assert view.status.value == "succeeded" and view.attempts == 2
    reasons = [e["payload"].get("reason") for e in svc.events(job) if e["payload"].get("status") == "queued"]
    assert reasons == [None, "worker_lost"]
    assert len(set(runs_of(svc, job))) == 2


def test_worker_lost_on_every_attempt_fails_with_worker_lost(df_env, start_worker, fault_report):
    env = {**FAST_RECLAIM, "DF_FAKE_STEP_DELAY_S": "0.2", "DF_MAX_ATTEMPTS": "1"}
    victim = start_worker(env=env)
    svc = service()
    job = svc.submit(request("doomed", steps=20)).view.id
    wait_status(svc, job, "running")
    victim.proc.kill()
    victim.proc.wait()
    start_worker(env=env)
    counts = wait_terminal(svc, [job])
    fault_report("worker SIGKILLed on the last attempt", counts)
    view = svc.get(job)
    assert view.status.value == "failed" and view.error.code == "worker_lost"


def test_sigterm_finishes_the_current_job_and_takes_no_new_one(df_env, start_worker, fault_report):
    worker = start_worker(env={"DF_FAKE_STEP_DELAY_S": "0.1", "DF_SHUTDOWN_GRACE_S": "30"})
    svc = service()
    current = svc.submit(request("current", steps=15)).view.id
    wait_status(svc, current, "running")
    waiting = svc.submit(request("waiting")).view.id
    assert worker.stop(signal.SIGTERM) == 0
    assert svc.get(current).status.value == "succeeded"
    assert svc.get(waiting).status.value == "queued"  # drained, not started
    fault_report("SIGTERM mid-job: current finishes, the next stays queued",
                 Counter(svc.get(i).status.value for i in (current, waiting)))
    assert svc.queue.depth() == 1


def test_sigterm_past_the_grace_period_hands_the_job_back(df_env, start_worker, fault_report):
    worker = start_worker(env={"DF_FAKE_STEP_DELAY_S": "0.2", "DF_SHUTDOWN_GRACE_S": "0.5"})
    svc = service()
    job = svc.submit(request("long", steps=50)).view.id
    wait_status(svc, job, "running")
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert svc.get(job).status.value == "queued"
    reasons = [e["payload"].get("reason") for e in svc.events(job) if e["payload"].get("status") == "queued"]
    assert reasons[-1] == "worker stopped"
    start_worker(env={"DF_FAKE_STEP_DELAY_S": "0"})
    counts = wait_terminal(svc, [job])
    fault_report("SIGTERM mid-job past the grace period, handed back", counts)
    assert counts == {"succeeded": 1}


def test_duplicate_deliveries_run_a_job_once(df_env, start_worker, fault_report):
    svc = service()
    job = svc.submit(request("dup")).view.id
    svc.queue.enqueue(job)
    svc.queue.enqueue(job)
    start_worker()
    counts = wait_terminal(svc, [job])
    deadline = time.monotonic() + 10
    while svc.queue.depth() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.queue.depth() == 0 and len(runs_of(svc, job)) == 1
    finished = svc.get(job).finished_at
    svc.queue.enqueue(job)  # a late duplicate of a job that already succeeded
    time.sleep(0.5)
    assert svc.get(job).finished_at == finished and len(runs_of(svc, job)) == 1
    fault_report("the same job delivered 4 times", counts)


def test_orphaned_queued_job_is_enqueued_again(df_env, start_worker, fault_report):
    """A queued job whose message is gone (taken by a worker that died before claiming it)."""
    svc = service()
    job = svc.submit(request("orphan")).view.id
    svc.queue.flush()
    start_worker(env=FAST_RECLAIM)
    counts = wait_terminal(svc, [job], timeout=30)
    fault_report("queue message lost before any worker claimed it", counts)
    assert counts == {"succeeded": 1}


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_many_workers_many_jobs_each_once(df_env, start_worker, tmp_path, fault_report):
    """PostgreSQL + Redis, three workers, 120 jobs POSTed at once: all succeed, once each."""
    workers = [start_worker(env={"DF_FAKE_STEP_DELAY_S": "0.005"}) for _ in range(3)]
    server = Server(df_env, tmp_path / "serve.log", "--no-worker")
    try:
        def post(i: int) -> str:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                r = c.post("/v1/jobs", json={"prompt": f"job {i}", "width": 64, "height": 64, "steps": 3})
                assert r.status_code == 202, r.text
                return r.json()["id"]

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(post, range(120)))
    finally:
        server.stop()
    svc = service()
    counts = wait_terminal(svc, ids, timeout=180)
    fault_report("120 concurrent POSTs, 3 workers", counts)
    assert counts == {"succeeded": 120}
    runs = [runs_of(svc, i) for i in ids]
    assert all(len(r) == 1 for r in runs)
    per_worker = Counter(r[0] for r in runs)
    assert len(per_worker) == 3, per_worker
    assert all(w.stop() == 0 for w in workers)


@pytest.fixture
def own_redis(tmp_path):
    if not RedisServer.available():
        need_service("redis-server", "the binary is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres():
    if not PostgresServer.available():
        need_service("a private PostgreSQL", "needs root, runuser and the PostgreSQL server binaries")
    server = PostgresServer()
    server.init()
    server.start()
    yield server
    server.destroy()


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_redis_goes_away_and_comes_back(df_env, own_redis, start_worker, tmp_path, monkeypatch, fault_report):
    env = {**df_env, "DF_QUEUE_URL": own_redis.url}
    monkeypatch.setenv("DF_QUEUE_URL", own_redis.url)
    start_worker(env=env)
    server = Server(env, tmp_path / "serve.log", "--no-worker")
    svc = service()
    try:
        before = server.client.post("/v1/jobs", json={"prompt": "before", "width": 64, "height": 64}).json()["id"]
        assert wait_terminal(svc, [before]) == {"succeeded": 1}
        own_redis.stop()
        rows = sum(svc.job_store.counts().values())
        refused = server.client.post("/v1/jobs", json={"prompt": "during", "width": 64, "height": 64})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        assert server.client.get("/readyz").status_code == 503
        cli = run_df(env, "generate", "during", "--width", "64", "--height", "64")
        assert cli.returncode == 1 and "queue unreachable" in cli.stderr and "Traceback" not in cli.stderr
        assert sum(svc.job_store.counts().values()) == rows  # no half-written job
        time.sleep(1)
        own_redis.start()
        after = server.client.post("/v1/jobs", json={"prompt": "after", "width": 64, "height": 64})
        assert after.status_code == 202
        counts = wait_terminal(svc, [before, after.json()["id"]], timeout=60)
        fault_report("Redis stopped and restarted (1 POST + 1 CLI refused)", counts)
        assert counts == {"succeeded": 2}
    finally:
        server.stop()


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_postgres_goes_away_and_comes_back(df_env, own_postgres, start_worker, tmp_path, monkeypatch,
                                           fault_report):
    env = {**df_env, "DF_DATABASE_URL": own_postgres.url, "DF_FAKE_STEP_DELAY_S": "0.1"}
    monkeypatch.setenv("DF_DATABASE_URL", own_postgres.url)
    worker = start_worker(env=env)
    server = Server(env, tmp_path / "serve.log", "--no-worker")
    svc = service()
    try:
        in_flight = svc.submit(request("in flight", steps=30)).view.id
        wait_status(svc, in_flight, "running")
        own_postgres.stop()
        refused = server.client.post("/v1/jobs", json={"prompt": "during", "width": 64, "height": 64})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["details"]["job_store"] != "ok"
        cli = run_df(env, "status")
        assert cli.returncode == 1 and "job store unreachable" in cli.stderr and "Traceback" not in cli.stderr
        time.sleep(2)
        own_postgres.start()
        after = server.client.post("/v1/jobs", json={"prompt": "after", "width": 64, "height": 64})
        assert after.status_code == 202, after.text
        counts = wait_terminal(svc, [in_flight, after.json()["id"]], timeout=90)
        fault_report("PostgreSQL stopped mid-job and restarted (1 POST refused)", counts)
        assert counts == {"succeeded": 2}
        assert svc.queue.depth() == 0 and worker.proc.poll() is None
    finally:
        server.stop()


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_restarting_everything_loses_nothing(df_env, own_postgres, own_redis, start_worker, tmp_path,
                                             monkeypatch, fault_report):
    env = {**df_env, "DF_DATABASE_URL": own_postgres.url, "DF_QUEUE_URL": own_redis.url}
    monkeypatch.setenv("DF_DATABASE_URL", own_postgres.url)
    monkeypatch.setenv("DF_QUEUE_URL", own_redis.url)
    worker = start_worker(env=env)
    server = Server(env, tmp_path / "serve.log", "--no-worker")
    post = lambda i: server.client.post("/v1/jobs", json={"prompt": f"p{i}", "width": 64, "height": 64}).json()["id"]  # noqa: E731
    done = [post(i) for i in range(5)]
    svc = service()
    assert wait_terminal(svc, done) == {"succeeded": 5}
    finished = {i: svc.get(i).finished_at for i in done}
    assert worker.stop() == 0
    queued = [post(i) for i in range(5, 20)]
    server.stop()
    svc.close()
    own_redis.stop()
    own_postgres.stop()

    own_postgres.start()
    own_redis.start()
    svc = service()
    assert svc.queue.depth() == 15
    server = Server(env, tmp_path / "serve2.log", "--no-worker")
    start_worker(env=env)
    counts = wait_terminal(svc, done + queued)
    server.stop()
    fault_report("API, worker, Redis (AOF) and PostgreSQL all restarted", counts)
    assert counts == {"succeeded": 20}
    assert {i: svc.get(i).finished_at for i in done} == finished


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_embedded_default_under_many_processes_and_a_killed_worker(df_env, start_worker, tmp_path,
                                                                   fault_report):
    """One SQLite store: df serve (with its own worker), two df workers, four CLI processes
    submitting at once, one worker SIGKILLed: nothing lost, nothing stuck, never "locked"."""
    env = {**FAST_RECLAIM, "DF_FAKE_STEP_DELAY_S": "0.02"}
    victim = start_worker(env=env)
    survivor = start_worker(env=env)
    server = Server({**df_env, **env}, tmp_path / "serve.log")
    clis = [subprocess.Popen([sys.executable, "-c", (
        "import json, subprocess, sys\n"
        "ids = []\n"
        "for n in range(3):\n"
        "    r = subprocess.run([sys.executable, '-m', 'dreamforge.cli.main', 'generate', 'cli %d-%d' % ("
        f"{i}, n), '--width', '64', '--height', '64', '--steps', '5'], capture_output=True, text=True)\n"
        "    assert r.returncode == 0, r.stderr\n"
        "    ids.append(r.stdout.strip())\n"
        "print(json.dumps(ids))\n")], env={**os.environ, **df_env, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(4)]
    api_ids = [server.client.post("/v1/jobs", json={"prompt": f"api {i}", "width": 64, "height": 64,
                                                     "steps": 5}).json()["id"] for i in range(10)]
    time.sleep(0.5)
    victim.proc.kill()
    ids = list(api_ids)
    outputs = []
    for proc in clis:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(err)
        ids += json.loads(out)
    svc = service()
    counts = wait_terminal(svc, ids, timeout=120)
    server.stop()
    fault_report("SQLite: serve + 2 workers + 4 CLIs, one worker SIGKILLed", counts)
    assert counts == {"succeeded": 22}
    assert all(len(runs_of(svc, i)) >= 1 for i in ids)
    logs = "".join(outputs) + server.log() + survivor.log() + victim.log()
    assert "database is locked" not in logs
