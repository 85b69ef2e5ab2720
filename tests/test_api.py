"""The v1 HTTP API, against a real `df serve` (uvicorn) on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import ROOT, df_command

SMOKE_BODY = ('{"type":"generate","prompt":"an old-growth forest at dawn","width":1024,"height":1024,'
              '"steps":24,"guidance":7.0,"format":"png"}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(df_command("serve", "--port", str(self.port), *args),
                                     env={**os.environ, **env}, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()


@pytest.fixture
def serve(df_env, tmp_path) -> Iterator:
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server({**df_env, **(env or {})}, tmp_path / f"serve{len(servers)}.log", *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def store_counts() -> tuple[int, int]:
    svc = JobService.from_settings(Settings())
    try:
        return sum(svc.store.counts().values()), svc.queue.depth()
    finally:
        svc.close()


def wait_for(client: httpx.Client, job_id: str, timeout: float = 60) -> tuple[dict, set[str]]:
    seen = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/jobs/{job_id}").json()
        seen.add(view["status"])
        if view["status"] in ("succeeded", "failed"):
            return view, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end: {view}")


def test_plan_smoke_test_verbatim(serve, df_env):
    """Section 7 of the plan: the curl POST, then polling until succeeded, with no other process."""
    # The embedded default (SQLite queue) runs its worker in-process by itself; Redis asks for one.
    embedded = "DF_QUEUE_URL" not in df_env
    server = serve(*(() if embedded else ("--worker",)), env={"DF_FAKE_STEP_DELAY_S": "0.03"})
    curl = subprocess.run(["curl", "-sS", "-i", f"{server.url}/v1/jobs", "-H", "Content-Type: application/json",
                           "-d", SMOKE_BODY], capture_output=True, text=True, timeout=30)
    head, _, body = curl.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 202"), curl.stdout
    created = json.loads(body)
    assert f"location: /v1/jobs/{created['id']}" in head.lower()
    assert created["status"] == "queued" and created["summary"] == {"count": 1, "completed": 0}
    view, seen = wait_for(server.client, created["id"])
    assert view["status"] == "succeeded" and "running" in seen
    assert view["summary"] == {"count": 1, "completed": 1}
    assert view["steps"][0]["progress"] == {"current": 24, "total": 24}
    [art] = view["artifacts"]
    assert (art["width"], art["height"], art["format"]) == (1024, 1024, "png")
    assert art["s3_key"].startswith(f"dreamforge/default/jobs/{created['id']}/generate/")
    assert Path(art["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_request_id_is_echoed_stored_and_logged(serve):
    server = serve("--worker")
    r = server.client.post("/v1/jobs", json={"prompt": "trace me", "width": 64, "height": 64, "steps": 2},
                           headers={"X-Request-ID": "req-abc-123"})
    assert r.status_code == 202 and r.headers["x-request-id"] == "req-abc-123"
    view, _ = wait_for(server.client, r.json()["id"])
    assert view["correlation_id"] == "req-abc-123"
    assert f"[job={view['id']} request_id=req-abc-123]" in server.log()
    made = server.client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32


@pytest.mark.parametrize("body, content_type, status, code", [
    ("{not json", "application/json", 400, "invalid_json"),
    ('{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
    ('{"prompt": "x", "typo_field": 1}', "application/json", 422, "validation_error"),
    ('{"prompt": ""}', "application/json", 422, "validation_error"),
    ('{"prompt": "   "}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "width": 100}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "height": 4096}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "steps": 151}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "guidance": -1}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "seed": 4294967296}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "format": "gif"}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "count": 2}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "type": "upscale"}', "application/json", 422, "validation_error"),
    ('["a list"]', "application/json", 422, "validation_error"),
])
def test_bad_requests_get_the_envelope_and_write_nothing(serve, body, content_type, status, code):
    server = serve("--no-worker")
    r = server.client.post("/v1/jobs", content=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in r.text
    assert error["correlation_id"] == r.headers["x-request-id"]
    assert store_counts() == (0, 0)


def test_width_message_and_details(serve):
    server = serve("--no-worker")
    r = server.client.post("/v1/jobs", json={"prompt": "x", "width": 1001})
    error = r.json()["error"]
    assert error["message"] == "width must be a multiple of 8"
    assert error["details"][0]["field"] == "width"


def test_oversized_body_is_413(serve):
    server = serve("--no-worker")
    big = json.dumps({"prompt": "x" * 70_000})
    r = server.client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(80):
            yield b" " * 1024

    r = server.client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert store_counts() == (0, 0)


def test_framework_404_405_and_unknown_job(serve):
    server = serve("--no-worker")
    for method, path, status, code in (("GET", "/nope", 404, "not_found"),
                                       ("DELETE", "/v1/jobs", 405, "method_not_allowed"),
                                       ("GET", "/v1/jobs/does-not-exist", 404, "not_found"),
                                       ("GET", "/v1/jobs?limit=0", 422, "validation_error"),
                                       ("GET", "/v1/jobs?status=done", 422, "validation_error")):
        r = server.client.request(method, path)
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["code"] == code


def test_idempotency_key(serve):
    server = serve("--no-worker")
    body = {"prompt": "once", "width": 64, "height": 64}
    first = server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = server.client.post("/v1/jobs", json={**body, "prompt": "twice"},
                               headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    bad = server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "has space"})
    assert bad.status_code == 422
    assert store_counts() == (1, 1)


def test_idempotent_retries_under_concurrency(serve):
    """Twenty clients retrying the same key at once: one job row, one queue entry, one id."""
    server = serve("--no-worker")
    body = {"prompt": "race", "width": 64, "height": 64, "seed": 5}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "race-key"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(40)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert store_counts() == (1, 1)


def test_bearer_token(serve):
    server = serve("--no-worker", env={"DF_API_TOKEN": "s3cret-token"})
    body = {"prompt": "x", "width": 64, "height": 64}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        r = server.client.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert "s3cret" not in r.text
    assert server.client.get("/v1/jobs/x").status_code == 401
    ok = server.client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 202
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert server.client.get(open_path).status_code == 200
    assert "s3cret" not in server.log()


def test_queue_down_gives_503_and_leaves_no_job(serve, df_env):
    """With the queue unreachable, readyz and POST say 503, and no job row is left behind."""
    server = serve("--no-worker", env={"DF_QUEUE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "service_unavailable"
    assert ready.json()["error"]["details"]["job_store"] == "ok"
    r = server.client.post("/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    svc = JobService.from_settings(Settings())
    assert sum(svc.store.counts().values()) == 0


def test_metrics(serve):
    server = serve("--no-worker")
    server.client.post("/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
    text = server.client.get("/metrics").text
    assert 'dreamforge_jobs{status="queued"} 1.0' in text
    assert "dreamforge_queue_depth 1.0" in text


def test_server_binds_loopback_by_default():
    assert Settings().api_host == "127.0.0.1"


def test_openapi_document_is_current():
    result = subprocess.run(df_command("openapi", "--check"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)  # the contract is the same on both
def test_schemathesis_against_the_committed_spec(serve, df_env, tmp_path):
    """No 5xx, every response conforms to its schema, across generated requests."""
    server = serve("--no-worker")
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", str(ROOT / "docs/openapi/openapi.v1.json"), "--url", server.url,
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--workers", "2",
         "--suppress-health-check", "all", "--max-time", "60"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(result.stdout[-1500:])
    assert "Traceback" not in server.log()
