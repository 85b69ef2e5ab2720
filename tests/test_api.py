"""The v1 HTTP API. Contract tests run in-process (Starlette's TestClient, lifespan included); a
handful run end to end against a real `df serve` (uvicorn) on a loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dreamforge.server.app import create_app
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import ROOT, df_command
from tests.servers import free_port, wait_healthy

SMOKE_BODY = ('{"type":"generate","prompt":"an old-growth forest at dawn","width":1024,"height":1024,'
              '"steps":24,"guidance":7.0,"format":"png"}')
TOKEN = "s3cret-token"


class Server:
    """A real `df serve` subprocess (tests/test_reliability.py uses it too)."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(df_command("serve", "--port", str(self.port), *args),
                                     env={**os.environ, **env}, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, log_path)
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
def token_api(df_env, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("DF_API_TOKEN", TOKEN)
    with TestClient(create_app(Settings())) as client:
        yield client


def store_counts() -> tuple[int, int]:
    """Jobs in the store and entries in the queue, through the service's verbs."""
    svc = JobService.from_settings(Settings())
    try:
        status = svc.status()
        return sum(status["jobs"].values()), status["queue_depth"]
    finally:
        svc.close()


def wait_for(client: httpx.Client | TestClient, job_id: str, timeout: float = 60) -> tuple[dict, set[str]]:
    seen = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/jobs/{job_id}").json()
        seen.add(view["status"])
        if view["status"] in ("succeeded", "failed"):
            return view, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end: {view}")


# -- end to end: a real `df serve` -------------------------------------------------------------

def test_plan_smoke_test_verbatim(serve, df_env):
    """Section 7 of the plan: the curl POST, then polling until succeeded, with no other process."""
    # The embedded default (SQLite queue) runs its worker in-process by itself; Redis asks for one.
    embedded = "DF_QUEUE_URL" not in df_env
    server = serve(*(() if embedded else ("--worker",)), env={"DF_FAKE_STEP_DELAY_S": "0.03"})
    curl = subprocess.run(["curl", "-sS", "-i", f"{server.url}/v1/jobs", "-H",
                           "Content-Type: application/json", "-d", SMOKE_BODY],
                          capture_output=True, text=True, timeout=30)
    head, _, body = curl.stdout.replace("\r\n", "\n").partition("\n\n")
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
    # The server's file layout is not the client's business: no path, no file:// URL.
    assert art["path"] is None and art["url"] is None
    svc = JobService.from_settings(Settings())
    try:
        assert svc.artifact_bytes(art["s3_key"])[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        svc.close()


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_request_id_is_echoed_stored_and_logged(serve):
    server = serve("--worker")
    rid = "req-abc-%s-%(x)s-100%"  # a request id is data, never a format string
    r = server.client.post("/v1/jobs", json={"prompt": "trace me", "width": 64, "height": 64, "steps": 2},
                           headers={"X-Request-ID": rid})
    assert r.status_code == 202 and r.headers["x-request-id"] == rid
    view, _ = wait_for(server.client, r.json()["id"])
    assert view["status"] == "succeeded" and view["correlation_id"] == rid
    log = server.log()
    assert f"[job={view['id']} request_id={rid}]" in log
    assert "Logging error" not in log and "Traceback" not in log
    made = server.client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32


def test_queue_down_gives_503_and_leaves_no_job(serve, df_env):
    """With the queue unreachable, readyz and POST say 503, and no job row is left behind; the
    open readyz names the backend but not its address."""
    port = free_port()
    server = serve("--no-worker", env={"DF_QUEUE_URL": f"redis://127.0.0.1:{port}/0"})
    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    error = ready.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"] == {"job_store": "ok", "queue": "unreachable", "artifact_store": "ok"}
    assert str(port) not in ready.text
    r = server.client.post("/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    svc = JobService.from_settings(Settings())
    try:
        assert sum(svc.status()["jobs"].values()) == 0
    finally:
        svc.close()


# -- contract, in-process ------------------------------------------------------------------------

@pytest.mark.parametrize("body, content_type, status, code", [
    ("{not json", "application/json", 400, "invalid_json"),
    ("", "application/json", 400, "invalid_json"),
    ('{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
    ('{"prompt": "x"}', "", 415, "unsupported_media_type"),
    ('{"prompt": "x", "typo_field": 1}', "application/json", 422, "validation_error"),
    ('{"prompt": ""}', "application/json", 422, "validation_error"),
    ('{"prompt": "   "}', "application/json", 422, "validation_error"),
    ('{"prompt": "\\u3000\\n\\t"}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "width": 100}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "height": 4096}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "steps": 151}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "guidance": -1}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "seed": 4294967296}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "seed": -1}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "format": "gif"}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "count": 9}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "scheduler": "k_lms"}', "application/json", 422, "validation_error"),
    ('{"prompt": "x", "type": "upscale"}', "application/json", 422, "validation_error"),
    ('["a list"]', "application/json", 422, "validation_error"),
    ('"a string"', "application/json", 422, "validation_error"),
    ("null", "application/json", 422, "validation_error"),
])
def test_bad_requests_get_the_envelope_and_write_nothing(api, body, content_type, status, code):
    r = api.post("/v1/jobs", content=body.encode(), headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in r.text
    assert error["correlation_id"] == r.headers["x-request-id"]
    assert store_counts() == (0, 0)


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_width_message_and_details(api):
    r = api.post("/v1/jobs", json={"prompt": "x", "width": 1001})
    error = r.json()["error"]
    assert error["message"] == "width must be a multiple of 8"
    assert error["details"][0]["field"] == "width"


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_oversized_body_is_413(api):
    big = json.dumps({"prompt": "x" * 70_000})
    r = api.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(80):
            yield b" " * 1024

    r = api.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert store_counts() == (0, 0)


def test_framework_404_405_and_unknown_job(api):
    for method, path, status, code in (("GET", "/nope", 404, "not_found"),
                                       ("DELETE", "/v1/jobs", 405, "method_not_allowed"),
                                       ("PUT", "/v1/jobs/x", 405, "method_not_allowed"),
                                       ("GET", "/v1/jobs/does-not-exist", 404, "not_found"),
                                       ("GET", "/v1/jobs?limit=0", 422, "validation_error"),
                                       ("GET", "/v1/jobs?limit=abc", 422, "validation_error"),
                                       ("GET", "/v1/jobs?status=done", 422, "validation_error"),
                                       ("GET", "/v1/jobs?typo=1", 422, "validation_error")):
        r = api.request(method, path)
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["correlation_id"] == r.headers["x-request-id"]
    assert "GET" in api.delete("/v1/jobs").headers["allow"]


def test_submit_get_and_list(api):
    r = api.post("/v1/jobs", json={"prompt": "a fox", "width": 64, "height": 64, "seed": 7})
    assert r.status_code == 202
    created = r.json()
    assert r.headers["location"] == f"/v1/jobs/{created['id']}"
    assert created["status"] == "queued" and created["params"]["seed"] == 7
    assert api.get(f"/v1/jobs/{created['id']}").json()["id"] == created["id"]
    listed = api.get("/v1/jobs", params={"status": "queued", "limit": 5}).json()
    assert [v["id"] for v in listed["jobs"]] == [created["id"]]
    assert api.get("/v1/jobs", params={"status": "failed"}).json() == {"jobs": [], "next_cursor": None}


def test_idempotency_key(api):
    body = {"prompt": "once", "width": 64, "height": 64}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = api.post("/v1/jobs", json={**body, "prompt": "twice"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    for bad in ("has space", "x" * 256, ""):
        r = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": bad})
        assert r.status_code == 422, bad
    assert store_counts() == (1, 1)


def test_idempotent_retries_under_concurrency(serve):
    """Twenty clients retrying the same key at once, over real HTTP: one job row, one queue entry."""
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


def test_bearer_token(token_api, caplog):
    body = {"prompt": "x", "width": 64, "height": 64}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
        r = token_api.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert "s3cret" not in r.text
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert token_api.get("/v1/jobs/x").status_code == 401
    assert token_api.get("/v1/jobs").status_code == 401
    # Metrics want the token (Prometheus sends it); health probes stay open for orchestrators.
    assert token_api.get("/metrics").status_code == 401
    assert token_api.get("/metrics", headers=auth).status_code == 200
    for open_path in ("/healthz", "/readyz"):
        assert token_api.get(open_path).status_code == 200
    ok = token_api.post("/v1/jobs", json=body, headers=auth)
    assert ok.status_code == 202
    assert "s3cret" not in caplog.text
    assert store_counts() == (1, 1)


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_metrics(api):
    api.post("/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
    r = api.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert 'dreamforge_jobs{status="queued"} 1.0' in r.text
    assert "dreamforge_queue_depth 1.0" in r.text


def test_server_binds_loopback_by_default(df_env):
    assert Settings().api_host == "127.0.0.1"


def test_openapi_document_is_current():
    result = subprocess.run(df_command("openapi", "--check"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
