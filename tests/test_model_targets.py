"""POST /v1/models may not point a worker at a private address: refused at submit (nothing queued),
and checked again at every hop of the download, where the worker connects to the address it checked.
``df models add URL`` (an operator on the host) is not restricted; DF_MODELS_ALLOW_PRIVATE=1 lifts it.

No test reaches a real resolver or the internet: made-up names answer from a fake resolver, and
127.0.0.1 stands in for a public mirror where a test says so (the address classifier is told to
count it as public), so real HTTP servers on loopback can play both sides of a rule."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dreamforge import addresses
from dreamforge.errors import DownloadFailed
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.test_models import FileServer, env, hand_made_sdxl, run_queued  # noqa: F401 (env: a fixture)

MIRROR = "mirror.example"


class FakeResolver:
    """socket.getaddrinfo for the names a test makes up: each lookup takes the next answer (the last
    one repeats). Addresses in any numeric form and localhost are the system's (no DNS asked);
    any other name does not resolve."""

    def __init__(self, real: Any):
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.answers:
            self.asked.append(name)
            queue = self.answers[name]
            found = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in found]
        if name == "localhost":
            return self.real(host, port, family, type, proto, flags)
        try:
            return self.real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    fake = FakeResolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)  # httpx's connections look up through it too
    return fake


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 plays a public mirror; every other loopback address stays private."""
    real = addresses.is_public
    monkeypatch.setattr(addresses, "is_public", lambda address: str(address) == "127.0.0.1" or real(address))


@pytest.fixture
def strict(env, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobService]:  # noqa: F811 (the fixture)
    monkeypatch.setenv("DF_MODELS_ALLOW_PRIVATE", "0")
    svc = JobService.from_settings(Settings())
    yield svc
    svc.close()


@pytest.fixture
def api(strict: JobService) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from dreamforge.server.app import create_app

    with TestClient(create_app(strict.settings, service=strict)) as client:
        yield client


@pytest.fixture
def checkpoint(tmp_path: Path) -> Iterator[FileServer]:
    server = FileServer(hand_made_sdxl(tmp_path / "served.safetensors").read_bytes())
    yield server
    server.stop()


class Redirector:
    """Answers every GET with a 302 to ``location``."""

    def __init__(self, location: str):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def download_jobs(api: Any) -> list[dict[str, Any]]:
    return api.get("/v1/jobs?type=download").json()["jobs"]


def failed_with(api: Any, strict: JobService, source: str) -> dict[str, Any]:
    """Queue a download of ``source``, run it as a worker would, and return its error."""
    queued = api.post("/v1/models", json={"source": source, "name": "m"})
    assert queued.status_code == 202, queued.text
    assert run_queued(strict, queued.json()["id"]) == "failed"
    return api.get(f"/v1/jobs/{queued.json()['id']}").json()["error"]


# -- at submit -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "[::ffff:127.0.0.1]:{port}", "127.1:{port}",
    "2130706433:{port}", "0.0.0.0:{port}", "10.1.2.3", "192.168.0.10", "172.16.0.1", "169.254.169.254",
    "100.64.0.1", "[fe80::1]", "[fc00::1]", "[::ffff:10.0.0.1]", "[64:ff9b::a9fe:a9fe]", "224.0.0.1"])
def test_a_private_source_is_refused_at_post_and_nothing_is_queued(api, checkpoint, dns, host):
    source = f"http://{host.format(port=checkpoint.httpd.server_address[1])}/model.safetensors"
    refused = api.post("/v1/models", json={"source": source})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["field"] == "source"
    assert "public hosts only" in error["message"] and "DF_MODELS_ALLOW_PRIVATE=1" in error["message"]
    assert download_jobs(api) == [] and checkpoint.requests == []


def test_a_name_is_refused_for_any_private_address_and_without_saying_which(api, dns):
    dns.answers["split.example"] = [["93.184.215.14", "10.0.0.7"]]
    refused = api.post("/v1/models", json={"source": "https://split.example/m.safetensors"})
    assert refused.status_code == 422
    assert "'split.example' resolves to an address that is not public" in refused.json()["error"]["message"]
    assert "10.0.0.7" not in refused.text  # what a private name points at is not told
    assert download_jobs(api) == []


def test_a_name_that_does_not_resolve_is_refused_at_post(api, dns):
    refused = api.post("/v1/models", json={"source": "https://nowhere.invalid/m.safetensors"})
    assert refused.status_code == 422
    assert "'nowhere.invalid' does not resolve" in refused.json()["error"]["message"]
    assert refused.json()["error"]["details"][0]["field"] == "source" and download_jobs(api) == []


@pytest.mark.parametrize("source, says", [("ftp://127.0.0.1/m.safetensors", "https://"),
                                          ("https://[::1/m.safetensors", "can be read")])
def test_the_url_rules_come_before_the_address_rule(api, dns, source, says):
    refused = api.post("/v1/models", json={"source": source})
    assert refused.status_code == 422 and says in refused.json()["error"]["message"], refused.text
    assert dns.asked == [] and download_jobs(api) == []


def test_allow_private_lets_a_loopback_download_through(api, checkpoint, strict, monkeypatch):
    monkeypatch.setenv("DF_MODELS_ALLOW_PRIVATE", "1")
    allowing = JobService.from_settings(Settings())
    try:
        from starlette.testclient import TestClient

        from dreamforge.server.app import create_app

        with TestClient(create_app(allowing.settings, service=allowing)) as client:
            queued = client.post("/v1/models", json={"source": checkpoint.url, "name": "lan"})
            assert queued.status_code == 202, queued.text
            assert run_queued(allowing, queued.json()["id"]) == "succeeded"
            assert client.get("/v1/models/lan").json()["sha256"] == hashlib.sha256(checkpoint.payload).hexdigest()
    finally:
        allowing.close()


# -- at download time ------------------------------------------------------------------------------

def test_a_redirect_to_loopback_fails_the_job_naming_only_the_host(api, strict, checkpoint, dns, loopback_is_public):
    port = checkpoint.httpd.server_address[1]
    hop = Redirector(f"http://127.0.0.2:{port}/model.safetensors?token=hunter2")
    dns.answers[MIRROR] = [["127.0.0.1"]]
    try:
        error = failed_with(api, strict, f"http://{MIRROR}:{hop.port}/m.safetensors")
    finally:
        hop.stop()
    assert error["code"] == "download_failed", error
    assert "'127.0.0.2' is not a public address" in error["message"] and "DF_MODELS_ALLOW_PRIVATE" in error["message"]
    assert "hunter2" not in json.dumps(error) and "model.safetensors" not in error["message"]
    assert checkpoint.requests == [] and strict.models.all() == []


def test_a_name_that_turns_private_after_submit_fails_the_job(api, strict, checkpoint, dns, loopback_is_public):
    dns.answers[MIRROR] = [["127.0.0.1"], ["10.0.0.7"]]  # at submit, then at download
    error = failed_with(api, strict, f"http://{MIRROR}:{checkpoint.httpd.server_address[1]}/model.safetensors")
    assert error["code"] == "download_failed"
    assert f"'{MIRROR}' resolves to an address that is not public" in error["message"]
    assert "10.0.0.7" not in error["message"] and checkpoint.requests == []


def test_the_worker_connects_to_the_address_it_checked(api, strict, checkpoint, dns, loopback_is_public):
    """A rebinding resolver answers a public address to the check and a private one after: the
    download still comes from the address checked (a second lookup would find nothing there)."""
    port = checkpoint.httpd.server_address[1]
    dns.answers[MIRROR] = [["127.0.0.1"], ["127.0.0.1"], ["10.0.0.7"]]  # submit, the worker's check, later
    queued = api.post("/v1/models", json={"source": f"http://{MIRROR}:{port}/model.safetensors", "name": "pinned"})
    assert queued.status_code == 202, queued.text
    assert run_queued(strict, queued.json()["id"]) == "succeeded"
    assert dns.asked == [MIRROR, MIRROR]
    assert [r["host"] for r in checkpoint.requests] == [f"{MIRROR}:{port}"]  # the name, not the address
    assert strict.models.get("pinned").sha256 == hashlib.sha256(checkpoint.payload).hexdigest()


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("certified", [MIRROR, "other.example"])
def test_tls_is_verified_against_the_name_while_connecting_to_the_address(
        api, strict, checkpoint, dns, loopback_is_public, tmp_path, monkeypatch, certified):
    """The certificate names only the host (never 127.0.0.1): it verifies only when TLS checks
    the name, and one made out for another name is refused."""
    cert, key = self_signed(tmp_path, certified)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    checkpoint.httpd.socket = context.wrap_socket(checkpoint.httpd.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust this certificate alone
    dns.answers[MIRROR] = [["127.0.0.1"]]
    source = f"https://{MIRROR}:{checkpoint.httpd.server_address[1]}/model.safetensors"
    queued = api.post("/v1/models", json={"source": source, "name": "tls"})
    assert queued.status_code == 202, queued.text
    ended = run_queued(strict, queued.json()["id"])
    if certified == MIRROR:
        assert ended == "succeeded" and strict.models.get("tls").downloaded
    else:
        # A refused handshake is a connection error: the job goes back to the queue for another try.
        events = api.get(f"/v1/jobs/{queued.json()['id']}/events").json()["events"]
        assert ended == "queued" and events[-1]["payload"]["reason"] == "download_interrupted", events
        assert checkpoint.requests == []
        assert strict.models.all() == []


# -- the operator's own command --------------------------------------------------------------------

def test_df_models_add_of_a_loopback_url_works_from_the_cli(strict, checkpoint):
    from typer.testing import CliRunner

    from dreamforge.cli.main import app

    assert strict.settings.models_allow_private is False
    added = CliRunner().invoke(app, ["models", "add", checkpoint.url, "--name", "local", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["sha256"] == hashlib.sha256(checkpoint.payload).hexdigest()


# -- the operator's hub token ----------------------------------------------------------------------

@pytest.mark.parametrize(("token_hosts", "sent"), [(None, False), ("example", True), ("huggingface.co, example", True),
                                                   ("ample", False), ("mirror.example.evil", False)])
def test_the_download_token_goes_only_to_the_hosts_named_for_it(env, checkpoint, dns, tmp_path, monkeypatch,  # noqa: F811
                                                                token_hosts, sent):
    """Whoever may call POST /v1/models picks the URL: DF_MODELS_DOWNLOAD_TOKEN goes to the hosts in
    DF_MODELS_TOKEN_HOSTS (and their subdomains) only, over https; by default the hubs'."""
    cert, key = self_signed(tmp_path, MIRROR)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    checkpoint.httpd.socket = context.wrap_socket(checkpoint.httpd.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("DF_MODELS_DOWNLOAD_TOKEN", "hf_operators_own")
    if token_hosts is not None:
        monkeypatch.setenv("DF_MODELS_TOKEN_HOSTS", token_hosts)
    dns.answers[MIRROR] = [["127.0.0.1"]]
    svc = JobService.from_settings(Settings())
    try:
        checkpoint.status = 401
        source = f"https://{MIRROR}:{checkpoint.httpd.server_address[1]}/model.safetensors"
        with pytest.raises(DownloadFailed) as refused:
            svc.models.add_url(source, "hub")
        said = refused.value.message
        if sent:
            assert checkpoint.requests[-1]["authorization"] == "Bearer hf_operators_own"
            assert "the token was refused" in said
        else:
            assert "authorization" not in checkpoint.requests[-1]
            assert "DF_MODELS_TOKEN_HOSTS" in said and MIRROR in said
        assert "hf_operators_own" not in said
    finally:
        svc.close()
