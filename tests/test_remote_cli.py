"""The CLI as a client of a `df serve` elsewhere (DF_API_URL / --api): the same output, JSON shapes
and exit codes as the local CLI, against a real server on a loopback port. The CLI runs
in-process (CliRunner) with an empty local data folder that must stay absent: nothing local is
used. One server (with a token) serves the module; the restart test has its own (without one)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.client import RemoteService
from dreamforge.schemas import parse_request
from tests.conftest import df_command
from tests.polling import wait_until
from tests.servers import free_port, wait_healthy

TOKEN = "remote-s3cret"
SMALL = ("--width", "64", "--height", "64", "--steps", "3")
BASE_ENV = {"DF_FAKE_RUNNER": "1", "DF_HEARTBEAT_INTERVAL_S": "0.5", "DF_WORKER_TIMEOUT_S": "5"}
cli = CliRunner()
# One server for the whole module: its tests run on one xdist worker.
pytestmark = pytest.mark.xdist_group("remote_cli")


class ApiServer:
    """`df serve` (embedded worker, fake runner) in a subprocess that can be stopped and started
    again on the same port and data folder."""

    def __init__(self, folder: Path, **env: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "serve.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
        self.env = {**clean, **BASE_ENV, "DF_DATA_DIR": str(folder / "data"), **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(df_command("serve", "--port", str(self.port)), env=self.env,
                                         cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, self.log_path)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = ApiServer(tmp_path_factory.mktemp("remote-serve"), DF_API_TOKEN=TOKEN,
                    DF_FAKE_STEP_DELAY_S="0.01", DF_WORKER_TIMEOUT_S="2")
    api.start()
    yield api
    api.stop()


@pytest.fixture
def envs(server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, str]]]:
    """The remote CLI's variables (an empty local data folder) and a local CLI's, to compare."""
    for name in list(os.environ):
        if name.startswith("DF_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "remote-data"
    remote = {"DF_API_URL": server.url, "DF_API_TOKEN": TOKEN, "DF_DATA_DIR": str(empty),
              "DF_API_RETRY_S": "5"}
    local = {**BASE_ENV, "DF_DATA_DIR": str(tmp_path / "local-data"), "DF_FAKE_STEP_DELAY_S": "0"}
    yield {"remote": remote, "local": local}
    assert not empty.exists(), "the remote CLI touched its local data folder"


def df(env: dict[str, str], *args: str) -> Any:
    return cli.invoke(app, list(args), env=env)


def shape(value: Any) -> Any:
    """The keys of a JSON value, all the way down (a list by its first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "·"


def one_line_error(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_generate_wait_downloads_the_artifact_as_locally(envs, tmp_path):
    """`generate --wait -o` follows the job's event stream and writes the image fetched through
    the content endpoint: the bytes the job recorded (sha256), printed as locally."""
    outputs = {}
    for where in ("remote", "local"):
        target = tmp_path / f"{where}.png"
        result = df(envs[where], "generate", "a lighthouse at dusk", *SMALL, "--wait", "-o", str(target))
        assert result.exit_code == 0, result.output
        assert result.stdout == f"{target}\n"
        assert result.stderr.strip().splitlines()[-1].endswith(" succeeded")
        outputs[where] = target
    remote_view = json.loads(df(envs["remote"], "jobs", "list", "--limit", "1", "--json").stdout)["jobs"][0]
    [art] = remote_view["artifacts"]
    data = outputs["remote"].read_bytes()
    assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size_bytes"]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_and_text_match_the_local_cli(envs):
    """show, list, generate and status: the same --json shapes and the same text layout."""
    views = {}
    for where, env in envs.items():
        made = df(env, "generate", "a quiet harbour", *SMALL, "--wait", "--json")
        assert made.exit_code == 0, made.output
        views[where] = json.loads(made.stdout)
    assert shape(views["remote"]) == shape(views["local"])
    assert views["remote"]["status"] == "succeeded"

    def both(*args: str) -> dict[str, Any]:
        results = {where: df(env, *args) for where, env in envs.items()}
        for result in results.values():
            assert result.exit_code == 0, result.output
        return results

    shows = {w: df(e, "jobs", "show", views[w]["id"], "--json") for w, e in envs.items()}
    assert json.loads(shows["remote"].stdout) == views["remote"]
    assert shape(json.loads(shows["remote"].stdout)) == shape(json.loads(shows["local"].stdout))
    texts = {w: df(e, "jobs", "show", views[w]["id"]).stdout for w, e in envs.items()}
    labels = {w: [line.split(":")[0] for line in t.splitlines()] for w, t in texts.items()}
    assert labels["remote"] == labels["local"]

    listed = both("jobs", "list", "--limit", "1", "--json")
    remote_page, local_page = (json.loads(listed[w].stdout) for w in ("remote", "local"))
    assert shape(remote_page) == shape(local_page) and remote_page["jobs"][0]["id"] == views["remote"]["id"]
    lines = both("jobs", "list", "--limit", "1")
    assert [len(lines[w].stdout.split("\t")) for w in ("remote", "local")] == [6, 6]

    queued = both("generate", "a second harbour", *SMALL, "--json")
    assert shape(json.loads(queued["remote"].stdout)) == shape(json.loads(queued["local"].stdout))

    status = both("status", "--json")
    remote_status, local_status = (json.loads(status[w].stdout) for w in ("remote", "local"))
    assert remote_status.keys() == local_status.keys() and remote_status["jobs"].keys() == local_status["jobs"].keys()
    assert len(remote_status["workers"]) == 1  # the server's embedded worker
    text = both("status")
    assert [line.split(":")[0] for line in text["remote"].stdout.splitlines()][:3] == ["jobs", "queue depth", "workers"]

    logs = {w: json.loads(df(e, "jobs", "logs", views[w]["id"], "--json").stdout) for w, e in envs.items()}
    remote_logs = logs["remote"]
    assert shape(remote_logs) == shape(logs["local"])
    followed = df(envs["remote"], "jobs", "logs", views["remote"]["id"], "-f", "--json")
    assert [json.loads(x) for x in followed.stdout.splitlines()] == remote_logs["lines"]
    watched = df(envs["remote"], "jobs", "watch", views["remote"]["id"], "--json")
    assert watched.exit_code == 0 and json.loads(watched.stdout) == views["remote"]

    got = df(envs["remote"], "artifacts", "get", views["remote"]["id"], "-o", "got")
    assert got.exit_code == 0, got.output
    [art] = views["remote"]["artifacts"]
    assert hashlib.sha256(Path(got.stdout.strip()).read_bytes()).hexdigest() == art["sha256"]


def test_cancel_retry_and_errors_as_locally(envs, server):
    """cancel (twice the same answer), job_not_cancelable, retry, and unknown ids: the same
    lines and exit codes as the local CLI."""
    remote = envs["remote"]
    job_id = df(remote, "generate", "a long night", "--width", "64", "--height", "64", "--steps", "150").stdout.strip()
    with server.http() as http:
        wait_until(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "running", "the job to run")
    first, again = df(remote, "jobs", "cancel", job_id), df(remote, "jobs", "cancel", job_id)
    assert first.exit_code == again.exit_code == 0, first.output
    assert first.stdout == again.stdout == f"{job_id}\tcanceled\n"
    watched = df(remote, "jobs", "watch", job_id)
    assert watched.exit_code == 1
    assert watched.stderr.splitlines() == [f"job {job_id} canceled", f"error: job {job_id} was canceled"]

    retried = df(remote, "jobs", "retry", job_id, "--json")
    assert retried.exit_code == 0, retried.output
    [new] = json.loads(retried.stdout)["jobs"]
    assert new["retry_of"] == job_id and new["params"]["seed"] is not None
    assert df(remote, "jobs", "cancel", new["id"]).exit_code == 0  # 150 steps: not worth the wait

    done = json.loads(df(remote, "generate", "done soon", *SMALL, "--wait", "--json").stdout)["id"]
    for verb, code in (("cancel", "job_not_cancelable"), ("retry", "job_not_retryable")):
        refused = df(remote, "jobs", verb, done)
        assert refused.exit_code == 1
        assert one_line_error(refused).startswith(f"error: {code}: job {done} has succeeded")

    for unknown in ("8b0f7a52-3c1e-4d7a-9a51-2d0c8e7f1a10", "../../v1/status", "x" * 500):
        for args in (("jobs", "show", unknown), ("jobs", "cancel", unknown)):
            here, there = df(envs["local"], *args), df(remote, *args)
            assert (there.exit_code, there.stderr) == (here.exit_code, here.stderr) == (1, there.stderr)
            assert one_line_error(there).startswith("error: no job with id ")
    bad = df(remote, "generate", "x", "--width", "65")
    assert (bad.exit_code, bad.stderr) == (2, df(envs["local"], "generate", "x", "--width", "65").stderr)


def test_token_missing_or_wrong_is_one_line(envs, server):
    remote = envs["remote"]
    for token in ("", "wrong-token"):
        result = df({**remote, "DF_API_TOKEN": token}, "jobs", "list")
        assert result.exit_code == 2 and result.stdout == ""
        line = one_line_error(result)
        assert line.startswith("error: unauthorized: a valid bearer token is required")
        assert "DF_API_TOKEN" in line and (not token or token not in line)
    assert df(remote, "--api", server.url, "jobs", "list", "--limit", "1").exit_code == 0


def test_local_only_commands_and_a_server_that_is_not_there(envs):
    remote = envs["remote"]
    for args in (("jobs", "prune", "--older-than", "1d"), ("artifacts", "retry"), ("db", "current"),
                 ("db", "upgrade"), ("worker",), ("serve",)):
        result = df(remote, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "needs a local job store" in one_line_error(result)
    gone = f"http://127.0.0.1:{free_port()}"
    result = df({**remote, "DF_API_RETRY_S": "0.3"}, "--api", gone, "status")
    assert result.exit_code == 1 and f"can't reach the DreamForge API at {gone}" in one_line_error(result)
    bad = df(remote, "--api", "ftp://somewhere", "status")
    assert bad.exit_code == 2 and "DF_API_URL must be an http:// or https:// URL" in one_line_error(bad)


class DropFirstReply(httpx.BaseTransport):
    """Sends every request to the server, but loses the reply to the first POST to ``path``, as a
    connection dropped after the server acted would."""

    def __init__(self, path: str):
        self.inner = httpx.HTTPTransport()
        self.path = path
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == self.path:
            self.keys.append(request.headers.get("idempotency-key"))
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection lost before the reply", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_submit_or_retry_sent_again_after_a_lost_reply_makes_one_job(server):
    request = parse_request({"prompt": "once only, a unique prompt 7f3a", "width": 64, "height": 64, "steps": 3})
    lossy = DropFirstReply("/v1/jobs")
    client = RemoteService(server.url, token=TOKEN, transport=lossy)
    submitted = client.submit(request)
    assert not submitted.created  # the server's answer to the second try: the first try's job
    assert len(lossy.keys) == 2 and lossy.keys[0] == lossy.keys[1] is not None
    with server.http() as http:
        jobs = http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
        assert [j["id"] for j in jobs if j["params"]["prompt"] == request.prompt] == [submitted.view.id]
        canceled = client.cancel(client.submit(request.model_copy(update={"steps": 150})).view.id)
        lossy_retry = DropFirstReply(f"/v1/jobs/{canceled.id}/retry")
        retry = RemoteService(server.url, token=TOKEN, transport=lossy_retry).retry(canceled.id)
        assert len(lossy_retry.keys) == 2 and retry.retry_of == canceled.id
        jobs = http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
        assert [j["id"] for j in jobs if j["retry_of"] == canceled.id] == [retry.id]
    client.close()


def test_wait_survives_the_server_restarting(server, tmp_path):
    """`df generate --wait`: the server dies mid-job (SIGKILL: the stream drops at once; a SIGTERM
    would hold it for uvicorn's 5 s grace, long enough for the job to end first) and starts again
    on the same port and data, where its worker takes the silent job back and runs it again.
    The CLI reconnects (Last-Event-ID) and finishes with the image."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
    env |= {"DF_API_URL": server.url, "DF_API_TOKEN": TOKEN, "DF_DATA_DIR": str(tmp_path / "empty"),
            "DF_API_RETRY_S": "60"}
    out, prompt = tmp_path / "after-restart.png", "through a restart"
    proc = subprocess.Popen(df_command("generate", prompt, "--width", "64", "--height", "64", "--steps", "150",
                                       "--wait", "-o", str(out)),
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ours(http: httpx.Client) -> dict[str, Any] | None:
        jobs = http.get("/v1/jobs", params={"limit": 5}).json()["jobs"]
        return next((j for j in jobs if j["params"]["prompt"] == prompt), None)

    try:
        with server.http() as http:
            wait_until(lambda: (ours(http) or {}).get("status") == "running", "the job to run")
        server.stop(signal.SIGKILL)
        server.start()
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stdout == f"{out}\n"
    statuses = [line.split()[-1] for line in stderr.splitlines() if line.startswith("job ")]
    assert statuses[-1] == "succeeded" and statuses.count("running") >= 2, stderr
    with server.http() as http:
        job = ours(http)
    assert job is not None and job["attempts"] == 2
    assert hashlib.sha256(out.read_bytes()).hexdigest() == job["artifacts"][0]["sha256"]
    assert not (tmp_path / "empty").exists()


def test_help_imports_only_typer():
    """`df --help` pays for typer and nothing it doesn't print with: no HTTP client, no rich
    console, no database or queue driver, no pydantic (issue #11's start-up aim)."""
    heavy = ("httpx", "dreamforge.client", "rich.console", "rich.text", "sqlalchemy", "pydantic",
             "huey", "redis", "psycopg", "boto3", "PIL")
    code = ("import sys; from dreamforge.cli.main import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--api URL" in result.stdout


def test_answers_that_are_not_the_apis_are_clear_errors():
    """A proxy's page, a foreign server, or a view whose artifact key would name a dot file or a
    folder: one clear error each, never a crash or a file outside the folder asked for."""
    from dreamforge.errors import DreamForgeError

    job_id = "8b0f7a52-3c1e-4d7a-9a51-2d0c8e7f1a10"
    view = {"id": job_id, "type": "generate", "status": "succeeded", "params": {}, "steps": [],
            "summary": {"count": 1, "completed": 1}, "created_at": "2026-01-01T12:00:00Z",
            "artifacts": [{"item_index": 0, "seed": 1, "width": 64, "height": 64, "format": "png",
                           "s3_key": "dreamforge/default/jobs/x/generate/../.bashrc", "size_bytes": 1,
                           "sha256": "0" * 64}]}
    answers = {f"/v1/jobs/{job_id}": httpx.Response(200, json=view),
               "/v1/jobs": httpx.Response(502, text="<html>Bad Gateway</html>"),
               "/v1/status": httpx.Response(200, json={"jobs": {}, "workers": "none"})}

    def answer(request: httpx.Request) -> httpx.Response:
        return answers[request.url.path]

    client = RemoteService("http://api.test", transport=httpx.MockTransport(answer))
    for call, expected in ((lambda: client.get(job_id), "artifact key that ends in a plain file name"),
                           (lambda: client.page_jobs(), "HTTP 502 from http://api.test/v1/jobs"),
                           (client.status, "did not answer with a StatusView")):
        with pytest.raises(DreamForgeError) as caught:
            call()
        assert expected in caught.value.message
    for url in ("http://[::1", "http://host/?x=1", "file:///tmp/x", "gpu-box:8001"):
        with pytest.raises(DreamForgeError, match="DF_API_URL must be"):
            RemoteService(url)


def test_img2img_from_a_file_and_inpaint_from_a_job_through_the_server(envs, tmp_path):
    """--init-image PATH uploads through POST /v1/uploads; JOB_ID:ITEM names the server's job."""
    from PIL import Image

    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (96, 72), (20, 90, 160)).save(source)
    Image.new("L", (96, 72), 255).save(mask)
    first = df(envs["remote"], "generate", "a barn", "--init-image", str(source), "--steps", "2", "--wait", "--json")
    assert first.exit_code == 0, first.output
    view = json.loads(first.stdout)
    assert view["type"] == "img2img" and view["status"] == "succeeded"
    assert (view["params"]["width"], view["params"]["height"]) == (96, 72)  # the image's size, unset
    assert view["params"]["init_image"] == hashlib.sha256(source.read_bytes()).hexdigest()
    second = df(envs["remote"], "generate", "a horse", "--init-image", f"{view['id']}:0", "--mask-image", str(mask),
                "--steps", "2", "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["params"]["init_image"] == {"job_id": view["id"], "item": 0}
