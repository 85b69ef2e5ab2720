"""The model registry and downloader: what a file is, from its header alone; the registry's verbs;
downloads from a real HTTP server on 127.0.0.1 that serves the tiny SDXL single file (complete,
cut off and resumed, wrong checksum, 404, gone); /v1/models through the official openai client;
`df models` through typer's runner and once as a real process."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dreamforge.errors import DownloadFailed, InvalidRequest, ModelConflict, ModelNotFound, ModelRejected
from dreamforge.registry import identify as ident
from dreamforge.registry.header import read_header
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import run_df

# -- files written by hand: a header with the marker keys, one-element tensors -----------------

SDXL_KEYS = [ident.XL_BASE, "model.diffusion_model.input_blocks.0.0.weight",
             "model.diffusion_model.label_emb.0.0.weight", "first_stage_model.decoder.conv_in.weight",
             "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"]
LAYOUTS: dict[str, tuple[dict[str, list[int]], str, str | None]] = {
    "sd15": ({ident.V1: [1], "cond_stage_model.transformer.text_model.final_layer_norm.weight": [1],
              "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]},
             "Stable Diffusion 1.x checkpoint", None),
    "sd2": ({ident.V2: [320, 1024], ident.V1: [1]}, "Stable Diffusion 2.x checkpoint", None),
    "refiner": ({ident.XL_REFINER: [1], "model.diffusion_model.input_blocks.0.0.weight": [384, 4, 3, 3]},
                "SDXL refiner", None),
    "flux": ({ident.FLUX[0]: [1], "double_blocks.0.img_attn.qkv.weight": [1]}, "Flux model", None),
    "sdxl-lora": ({"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k.lora_down.weight": [1],
                   "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": [1]},
                  "an SDXL LoRA", ident.LORA),
    "sd15-lora": ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight": [1],
                   "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.alpha": []},
                  "a LoRA for Stable Diffusion 1.x or 2.x", None),
    "vae": ({"decoder.conv_in.weight": [1], "encoder.conv_in.weight": [1], "quant_conv.weight": [1]},
            "a VAE alone", None),
    "sdxl-no-vae": ({k: [1] for k in SDXL_KEYS if not k.startswith("first_stage_model.")},
                    "an SDXL base checkpoint without its VAE", None),
    "other": ({"weight": [2, 2], "bias": [2]}, "nothing DreamForge recognises", None),
}


def write_safetensors(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file of F16 zeros with these tensor names and shapes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def hand_made_sdxl(path: Path) -> Path:
    return write_safetensors(path, {k: [1] for k in SDXL_KEYS}, {"format": "pt"})


@pytest.fixture
def tiny_sdxl_file(tiny_model) -> tuple[Path, Path]:
    """The tiny random SDXL of tests/tiny_sdxl.py: (Diffusers folder, single file in the original layout)."""
    return tiny_model


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"DF_DATA_DIR": str(tmp_path / "data"), "DF_MODELS_ROOT": str(tmp_path / "models"),
              "DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": "0", "DF_MODELS_ALLOW_HTTP": "1",
              # The FileServer is on loopback, which POST /v1/models may reach only with this.
              "DF_MODELS_ALLOW_PRIVATE": "1",
              "DF_GENERATE_MODEL_PATH": str(tmp_path / "seed-model.safetensors")}
    for name in list(os.environ):
        if name.startswith("DF_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return values


@pytest.fixture
def service(env) -> Iterator[JobService]:
    svc = JobService.from_settings(Settings())
    yield svc
    svc.close()


def models_dir(env: dict[str, str]) -> list[str]:
    root = Path(env["DF_MODELS_ROOT"])
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- what a file is ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_told_from_its_header(tmp_path, layout):
    shapes, looks_like, kind = LAYOUTS[layout]
    path = write_safetensors(tmp_path / f"{layout}.safetensors", shapes)
    identity = ident.identify(path)
    assert looks_like in identity.looks_like and identity.kind == kind
    with pytest.raises(ModelRejected) as refused:
        ident.require(identity, path)
    assert refused.value.code == "not_sdxl"
    assert looks_like in refused.value.message and "not an SDXL base checkpoint" in refused.value.message


def test_sdxl_base_is_accepted_from_a_hand_made_header_and_the_real_tiny_model(tmp_path, tiny_sdxl_file):
    folder, single = tiny_sdxl_file
    for path, fmt in ((hand_made_sdxl(tmp_path / "x.safetensors"), "single_file"), (single, "single_file"),
                      (folder, "diffusers")):
        identity = ident.require(ident.identify(path), path)
        assert identity.kind == "sdxl_checkpoint" and identity.format == fmt
    assert ident.identify(single).details["tensors"] > 500


def test_diffusers_folders_that_are_not_sdxl_base_are_refused(tmp_path, tiny_sdxl_file):
    import shutil

    folder = shutil.copytree(tiny_sdxl_file[0], tmp_path / "refiner")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None]}))
    assert "SDXL refiner" in ident.identify(folder).looks_like
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    assert "Stable Diffusion" in ident.identify(folder).looks_like and ident.identify(folder).kind is None
    (folder / "model_index.json").write_text(json.dumps(index))
    shard = next((folder / "unet").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ModelRejected, match="truncated") as bad:
        ident.identify(folder)
    assert bad.value.code == "model_invalid"


def corrupt_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = hand_made_sdxl(tmp_path / "good.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    sized = json.loads(good[8:8 + n])
    sized[ident.XL_BASE]["shape"] = [3]
    sized_raw = json.dumps(sized).encode()
    return {
        "truncated": (write("cut.safetensors", good[:-3]), "truncated"),
        "header cut": (write("head.safetensors", good[: 8 + n // 2]), "header claims"),
        "garbage": (write("junk.safetensors", os.urandom(64)), "header claims"),
        "empty": (write("empty.safetensors", b""), "shorter than a header"),
        "not json": (write("text.safetensors", struct.pack("<Q", 5) + b"{nope" + bytes(8)), "not JSON"),
        "trailing bytes": (write("tail.safetensors", good + b"\0" * 16), "follow the last tensor"),
        "size mismatch": (write("size.safetensors", struct.pack("<Q", len(sized_raw)) + sized_raw
                                + good[8 + n:]), "needs"),
        "no tensors": (write("none.safetensors", struct.pack("<Q", 2) + b"{}"), "no tensors"),
    }


def test_a_corrupt_or_truncated_file_is_refused_saying_why(tmp_path):
    for case, (path, reason) in corrupt_files(tmp_path).items():
        with pytest.raises(ModelRejected) as bad:
            read_header(path)
        assert bad.value.code == "model_invalid", case
        assert reason in bad.value.message, (case, bad.value.message)


# -- the registry ------------------------------------------------------------------------------

def test_the_settings_name_the_default_until_one_is_registered(service, env, tmp_path):
    registry = service.models
    fallback = registry.resolve(None)
    assert (fallback.name, fallback.registered, fallback.chosen_by) == ("default", False, "DF_GENERATE_MODEL_PATH")
    assert fallback.location == Path(env["DF_GENERATE_MODEL_PATH"])
    assert registry.resolve("default") == fallback
    with pytest.raises(ModelNotFound) as unknown:
        registry.resolve("nope")
    assert unknown.value.code == "unknown_model"

    path = hand_made_sdxl(tmp_path / "elsewhere.safetensors")
    record = registry.add_local(path, "mine")
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.path == str(path) and not record.downloaded and not record.is_default
    assert registry.resolve(None).name == "default"
    registry.set_default("mine")
    assert registry.resolve(None).name == "mine" == registry.resolve("default").name
    registry.touch("mine")
    assert registry.get("mine").last_used_at is not None
    assert registry.set_default(None).name == "default"


def test_add_refuses_what_is_not_sdxl_taken_names_and_wrong_hashes(service, tmp_path):
    registry = service.models
    sd15 = write_safetensors(tmp_path / "sd15.safetensors", LAYOUTS["sd15"][0])
    with pytest.raises(ModelRejected, match=r"Stable Diffusion 1\.x"):
        registry.add_local(sd15)
    with pytest.raises(ModelRejected, match="truncated"):
        registry.add_local(corrupt_files(tmp_path)["truncated"][0])
    path = hand_made_sdxl(tmp_path / "a.safetensors")
    with pytest.raises(ModelRejected) as wrong:
        registry.add_local(path, "a", sha256="0" * 64)
    assert wrong.value.code == "checksum_mismatch"
    registry.add_local(path, "a")
    with pytest.raises(ModelConflict):
        registry.add_local(hand_made_sdxl(tmp_path / "b.safetensors"), "a")
    with pytest.raises(ModelConflict, match="registered already"):
        registry.add_local(path, "a-again")
    with pytest.raises(InvalidRequest):
        registry.add_local(path, "../escape")
    assert [r.name for r in registry.all()] == ["a"]


@pytest.mark.parametrize("df_env", ["sqlite", "postgres_redis"], indirect=True)
def test_registry_rows_on_both_stores(df_env, tmp_path, monkeypatch):
    monkeypatch.setenv("DF_MODELS_ROOT", str(tmp_path / "models"))
    (tmp_path / "models" / "sub").mkdir(parents=True)
    hand_made_sdxl(tmp_path / "models" / "sub" / "one.safetensors")
    write_safetensors(tmp_path / "models" / "vae.safetensors", LAYOUTS["vae"][0])
    svc = JobService.from_settings(Settings())
    try:
        report = svc.models.scan()
        assert [r.name for r in report.added] == ["one"] and report.added[0].path == "sub/one.safetensors"
        assert [r["path"] for r in report.refused] == ["vae.safetensors"]
        assert "VAE alone" in report.refused[0]["reason"]
        assert svc.models.scan().known == ["one"]
        svc.models.set_default("one")
        assert [r.is_default for r in svc.models.all()] == [True]
        verified = svc.models.verify("one")
        assert verified.ok and svc.models.get("one").verified_at is not None
        with open(tmp_path / "models" / "sub" / "one.safetensors", "r+b") as f:
            f.seek(-1, 2)
            f.write(b"\x01")
        assert not svc.models.verify("one").ok
        _, deleted = svc.models.remove("one")
        assert deleted is None and (tmp_path / "models" / "sub" / "one.safetensors").exists()  # not ours
        assert svc.models.all() == []
    finally:
        svc.close()


# -- downloads from a real HTTP server on 127.0.0.1 ----------------------------------------------

class FileServer:
    """Serves one payload at /model.safetensors with Range support; can cut the body off after
    ``cut_after`` bytes (once), answer ``status`` instead, or claim a ``content_length``."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None
        self.status: int | None = None
        self.content_length: int | None = None
        # Send this many bytes, then wait for ``release`` before the rest.
        self.stall_after: int | None = None
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.ignore_range = False
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({k.lower(): v for k, v in self.headers.items()})
                if server.status or self.path.split("?")[0] != "/model.safetensors":
                    self.send_response(server.status or 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, start = server.payload, 0
                wanted = self.headers.get("Range")
                if wanted and not server.ignore_range and self.headers.get("If-Range") in (None, '"v1"'):
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", '"v1"')
                self.send_header("Content-Length", str(server.content_length or len(body) - start))
                self.end_headers()
                if server.content_length:
                    return
                rest = body[start:]
                if server.cut_after is not None:
                    rest, server.cut_after = rest[: server.cut_after], None
                    self.wfile.write(rest)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.stall_after is not None:
                    self.wfile.write(rest[: server.stall_after])
                    self.wfile.flush()
                    server.stalled.set()
                    server.release.wait(30)
                    rest = rest[server.stall_after:]
                self.wfile.write(rest)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.safetensors"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tiny_sdxl_file) -> Iterator[FileServer]:
    server = FileServer(tiny_sdxl_file[1].read_bytes())
    yield server
    server.stop()


def test_a_complete_download_is_checked_and_registered(service, served, env):
    digest = hashlib.sha256(served.payload).hexdigest()
    seen: list[tuple[int, int | None]] = []
    record = service.models.add_url(served.url, "tiny", digest.upper(),
                                    progress=lambda done, total: seen.append((done, total)))
    assert (record.name, record.sha256, record.size_bytes) == ("tiny", digest, len(served.payload))
    assert record.downloaded and record.path == "tiny.safetensors" and record.source == served.url
    assert seen[-1] == (len(served.payload), len(served.payload))
    assert models_dir(env) == ["tiny.safetensors"]
    assert "authorization" not in served.requests[0]  # no token over plain http
    assert service.models.remove("tiny")[1] is not None and models_dir(env) == []  # ours: deleted


def test_a_download_cut_off_half_way_resumes_with_range(service, served, env):
    half = len(served.payload) // 2
    served.cut_after = half
    with pytest.raises(DownloadFailed) as broke:
        service.models.add_url(served.url, "tiny")
    assert broke.value.code == "download_interrupted" and "resumes" in broke.value.message
    assert service.models.all() == [] and "tiny.safetensors" not in models_dir(env)
    assert (Path(env["DF_MODELS_ROOT"]) / "tiny.partial").stat().st_size == half
    record = service.models.add_url(served.url, "tiny")
    assert served.requests[-1]["range"] == f"bytes={half}-" and served.requests[-1]["if-range"] == '"v1"'
    assert record.sha256 == hashlib.sha256(served.payload).hexdigest()
    assert models_dir(env) == ["tiny.safetensors"]


def test_a_server_that_ignores_range_sends_it_all_again(service, served, env):
    served.cut_after = len(served.payload) // 3
    with pytest.raises(DownloadFailed):
        service.models.add_url(served.url, "tiny")
    served.ignore_range = True
    record = service.models.add_url(served.url, "tiny")
    assert "range" in served.requests[-1]  # asked to resume, got a 200: started over
    assert record.sha256 == hashlib.sha256(served.payload).hexdigest() and models_dir(env) == ["tiny.safetensors"]


def test_urls_are_kept_without_their_credentials():
    from dreamforge.registry.records import has_credentials, redact_url

    url = "https://user:pw@hub.example/m.safetensors?token=abc&download=true"
    assert redact_url(url) == "https://user:***@hub.example/m.safetensors?token=***&download=true"
    assert has_credentials(url) and has_credentials("https://h/x?api_key=1")
    assert not has_credentials("https://h/x.safetensors?download") and not has_credentials("https://u@h/x")


def test_a_wrong_checksum_leaves_nothing(service, served, env):
    with pytest.raises(DownloadFailed) as wrong:
        service.models.add_url(served.url, "tiny", "ab" * 32)
    assert wrong.value.code == "checksum_mismatch"
    assert models_dir(env) == [] and service.models.all() == []


def test_not_found_gone_http_and_full_disk_are_clear_errors(service, served, env, monkeypatch):
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        service.models.add_url(served.url.replace("model", "missing"), "tiny")
    assert models_dir(env) == []
    served.content_length = 10**15
    with pytest.raises(DownloadFailed) as full:
        service.models.add_url(served.url, "tiny")
    assert full.value.code == "insufficient_disk"
    url = served.url
    served.stop()
    with pytest.raises(DownloadFailed, match="could not connect") as gone:
        service.models.add_url(url, "tiny")
    assert gone.value.code == "download_interrupted"
    assert service.models.all() == [] and models_dir(env) == []
    monkeypatch.setenv("DF_MODELS_ALLOW_HTTP", "0")
    strict = JobService.from_settings(Settings())
    try:
        with pytest.raises(InvalidRequest, match="plain http"):
            strict.models.add_url(url, "tiny")
    finally:
        strict.close()


def test_a_download_that_is_not_sdxl_is_deleted(service, env, tmp_path):
    server = FileServer(write_safetensors(tmp_path / "x.safetensors", LAYOUTS["sd15"][0]).read_bytes())
    try:
        with pytest.raises(ModelRejected, match=r"Stable Diffusion 1\.x") as refused:
            service.models.add_url(server.url, "old")
    finally:
        server.stop()
    assert refused.value.code == "not_sdxl" and models_dir(env) == []


# -- /v1/models and download jobs ---------------------------------------------------------------

@pytest.fixture
def api(service) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from dreamforge.server.app import create_app

    with TestClient(create_app(service.settings, service=service)) as client:
        yield client


def run_queued(service: JobService, job_id: str) -> str | None:
    from dreamforge.execution import Executor
    from dreamforge.runners import make_runner

    return Executor(service, make_runner(service.settings), "test-worker").execute(job_id)


def test_the_openai_client_lists_the_registry(service, api, tmp_path):
    import httpx
    import openai

    service.models.add_local(hand_made_sdxl(tmp_path / "m.safetensors"), "mine")
    class ThroughTestClient(httpx.BaseTransport):
        """openai's httpx in front of Starlette's TestClient (which speaks its own httpx)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            answer = api.request(request.method, request.url.raw_path.decode(), content=request.read(),
                                 headers={k: v for k, v in request.headers.items() if k != "host"})
            headers = [(k, v) for k, v in answer.headers.items() if k not in ("content-encoding", "content-length")]
            return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused",
                           http_client=httpx.Client(transport=ThroughTestClient()))
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["default", "mine"]
    mine = listed.data[1]
    assert mine.object == "model" and mine.owned_by == "dreamforge" and mine.created > 0
    extra = mine.model_extra or {}
    assert extra["sha256"] == service.models.get("mine").sha256 and extra["kind"] == "sdxl_checkpoint"
    assert extra["path"] is None and extra["source"] == "local"  # no server paths outside the root
    assert client.models.retrieve("mine").id == "mine"
    service.models.set_default("mine")
    assert [m.id for m in client.models.list().data] == ["mine"]
    missing = api.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


def test_post_models_queues_a_download_job_that_a_worker_runs(service, api, served, env):
    digest = hashlib.sha256(served.payload).hexdigest()
    response = api.post("/v1/models", json={"source": served.url, "sha256": digest})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["type"] == "download" and job["params"]["name"] == "model" and job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert api.post("/v1/models", json={"source": served.url, "nme": "x"}).status_code == 422
    assert api.post("/v1/models", json={"source": "ftp://x/y"}).status_code == 422
    token_url = api.post("/v1/models", json={"source": served.url + "?token=secret"})
    assert token_url.status_code == 422 and "DF_MODELS_DOWNLOAD_TOKEN" in token_url.json()["error"]["message"]

    assert run_queued(service, job["id"]) == "succeeded"
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["steps"][0]["name"] == "download"
    assert done["steps"][0]["progress"]["current"] == done["steps"][0]["progress"]["total"] >= 1
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["events"]
    assert any(e["kind"] == "progress" for e in events)
    assert events[-1]["payload"]["model"] == "model" and events[-1]["payload"]["sha256"] == digest
    assert api.get("/v1/jobs?type=download").json()["jobs"][0]["id"] == job["id"]
    assert api.get("/v1/models/model").json()["sha256"] == digest
    again = api.post("/v1/models", json={"source": served.url})
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_exists"


def test_a_download_job_that_fails_says_why(service, api, served, env):
    job = api.post("/v1/models", json={"source": served.url, "name": "bad", "sha256": "0" * 64}).json()
    assert run_queued(service, job["id"]) == "failed"
    view = api.get(f"/v1/jobs/{job['id']}").json()
    assert view["error"]["code"] == "checksum_mismatch" and models_dir(env) == []
    assert api.get("/v1/models/bad").status_code == 404
    retried = api.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.json()["type"] == "download"
    assert retried.json()["retry_of"] == job["id"] and retried.json()["params"] == view["params"]


# -- df models -----------------------------------------------------------------------------------

def test_df_models_commands(service, served, env, tmp_path):
    from typer.testing import CliRunner

    from dreamforge.cli.main import app

    runner = CliRunner()
    added = runner.invoke(app, ["models", "add", served.url, "--name", "tiny", "--default", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["id"] == "tiny" and json.loads(added.stdout)["is_default"]
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["tiny"]
    shown = runner.invoke(app, ["models", "show", "tiny"])
    assert "an SDXL base checkpoint" in shown.stdout and served.url in shown.stdout
    assert runner.invoke(app, ["models", "verify", "tiny"]).exit_code == 0
    refused = runner.invoke(app, ["models", "add", str(write_safetensors(tmp_path / "v.safetensors",
                                                                           LAYOUTS["vae"][0]))])
    assert refused.exit_code == 2 and "VAE alone" in refused.stderr
    unknown = runner.invoke(app, ["models", "show", "nope"])
    assert unknown.exit_code == 1 and "no model named 'nope'" in unknown.stderr
    removed = runner.invoke(app, ["models", "remove", "tiny"])
    assert removed.exit_code == 0 and "deleted" in removed.stdout and models_dir(env) == []
    assert "DF_GENERATE_MODEL_PATH" in runner.invoke(app, ["models", "default"]).stdout


def test_df_models_as_a_process(env, tmp_path):
    (tmp_path / "models").mkdir()
    path = hand_made_sdxl(tmp_path / "models" / "proc.safetensors")
    assert run_df(env, "models", "scan").returncode == 0
    shown = run_df(env, "models", "show", "proc", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_canceled_download_job_stops_and_registers_nothing(service, api, served, env):
    served.stall_after = len(served.payload) // 2
    job = api.post("/v1/models", json={"source": served.url, "name": "stopped"}).json()
    ended: list[str | None] = []
    runner = threading.Thread(target=lambda: ended.append(run_queued(service, job["id"])))
    runner.start()
    assert served.stalled.wait(30)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    served.release.set()
    runner.join(30)
    assert ended == ["canceled"] and service.models.all() == []
    assert "stopped.safetensors" not in models_dir(env)  # the partial stays, for a later try
