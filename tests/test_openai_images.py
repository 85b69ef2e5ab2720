"""POST /v1/images/generations with the official `openai` client against a real `df serve` on
loopback (fake runner, embedded worker): the answer decodes to a PNG of the asked size, errors
raise the client's own types. Error shapes and the wait's bound are checked in-process."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import get_args

import httpx
import openai
import pytest
from PIL import Image
from starlette.testclient import TestClient

from dreamforge.schemas import GenerateRequest
from dreamforge.server.app import create_app
from dreamforge.settings import Settings
from tests.test_api import Server

# One `df serve` for these tests: they stay on one xdist worker (--dist loadgroup), and the server
# lives for the session (a module-scoped one restarts whenever xdist interleaves another module).
pytestmark = pytest.mark.xdist_group("openai-images")
TOKEN = "openai-compatible-token"
BATCHES = get_args(GenerateRequest.model_fields["count"].annotation) != (1,)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("openai")
    env = {name: "" for name in os.environ if name.startswith("DF_")}
    env |= {"DF_DATA_DIR": str(folder / "data"), "DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": "0",
            "DF_API_TOKEN": TOKEN, "DF_HEARTBEAT_INTERVAL_S": "0.5", "DF_WORKER_TIMEOUT_S": "5"}
    started = Server(env, folder / "serve.log")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_b64_json_decodes_to_a_png_of_the_asked_size(client, server):
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt="a red fox in the snow", size="256x192", response_format="b64_json",
        n=1, quality="high", user="someone", extra_body={"seed": 7, "steps": 3})
    result = raw.parse()
    assert len(result.data) == 1 and result.created > 0
    assert png(base64.b64decode(result.data[0].b64_json)).size == (256, 192)
    job_id = raw.headers["x-dreamforge-job-id"]
    job = server.client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert job["status"] == "succeeded" and job["params"]["prompt"] == "a red fox in the snow"
    assert (job["params"]["seed"], job["params"]["steps"], job["params"]["width"]) == (7, 3, 256)


def test_url_points_at_the_content_endpoint(client, server):
    result = client.images.generate(prompt="a lighthouse", size="128x128", extra_body={"steps": 2})
    url = result.data[0].url
    assert url.startswith(f"{server.url}/v1/jobs/") and url.endswith("/artifacts/0/content")
    image = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert image.status_code == 200 and png(image.content).size == (128, 128)


def test_an_idempotency_key_gives_the_first_job_again(client):
    asked = {"prompt": "once only", "size": "64x64", "extra_body": {"steps": 1},
             "extra_headers": {"Idempotency-Key": "openai-once"}}
    first = client.images.with_raw_response.generate(**asked)
    second = client.images.with_raw_response.generate(**asked)
    assert first.headers["x-dreamforge-job-id"] == second.headers["x-dreamforge-job-id"]
    assert second.headers["idempotent-replayed"] == "true"


def test_a_bad_size_raises_the_clients_bad_request_error(client):
    for size, says in [("100x100", "multiple of 8"), ("huge", "WIDTHxHEIGHT"), ("4096x4096", "2048")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="x", size=size)  # type: ignore[arg-type]
        error = caught.value.body
        assert error["param"] == "size" and says in error["message"], error
        assert error["type"] == "invalid_request_error"


def test_a_wrong_token_raises_the_clients_authentication_error(server):
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.images.generate(prompt="x", size="64x64")
    assert caught.value.body["code"] == "invalid_api_key"
    assert set(caught.value.body) == {"message", "type", "param", "code"}


@pytest.mark.skipif(not BATCHES, reason="GenerateRequest.count is Literal[1]: batches are not merged yet")
def test_n_makes_that_many_images(client):
    result = client.images.generate(prompt="two cats", size="64x64", n=2, response_format="b64_json",
                                    extra_body={"steps": 1})
    assert [png(base64.b64decode(d.b64_json)).size for d in result.data] == [(64, 64), (64, 64)]


def test_n_beyond_what_the_server_makes_is_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="many cats", size="64x64", n=2 if not BATCHES else 9)
    assert caught.value.body["param"] == "n" and "n=" in caught.value.body["message"]


# -- in-process: error shapes and the wait's bound -------------------------------------------------

def post(api: TestClient, body: object, **headers: str) -> httpx.Response:
    return api.post("/v1/images/generations", json=body, headers=headers)


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_error_shapes_and_the_wait_bound(df_env, monkeypatch):
    monkeypatch.setenv("DF_OPENAI_WAIT_S", "0.3")
    with TestClient(create_app(Settings())) as api:  # no worker: the job waits in the queue
        for body, param, code in [({"prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
                                  ({"size": "64x64"}, "prompt", "missing_required_parameter"),
                                  ({"prompt": "x", "response_format": "gif"}, "response_format", None),
                                  ({"prompt": "  "}, "prompt", None), (["prompt"], None, None)]:
            r = post(api, body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code
        for raw, kind, status in [(b"{nope", "application/json", 400),
                                  (b"[" * 5000 + b"]" * 5000, "application/json", 400),
                                  (b'{"prompt": "' + b"x" * 70_000 + b'"}', "application/json", 413),
                                  (b"prompt=x", "application/x-www-form-urlencoded", 415),
                                  (b'{"prompt": "x", "n": true}', "application/json", 400),
                                  (b'{"prompt": "x", "response_format": 0}', "application/json", 400)]:
            bad = api.post("/v1/images/generations", content=raw, headers={"content-type": kind})
            assert bad.status_code == status, bad.text[:300]
            assert set(bad.json()["error"]) == {"message", "type", "param", "code"} and len(bad.content) < 1000
        r = post(api, {"prompt": "never run", "size": "64x64", "style": "vivid", "background": "auto"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        job_id = r.json()["error"]["message"].split()[1]
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # an ordinary job, listed
        assert post(api, {"prompt": "x"}, **{"Idempotency-Key": "bad key"}).json()["error"]["param"] == \
            "Idempotency-Key"


def test_a_failed_job_answers_a_server_error_naming_it(df_env, monkeypatch):
    monkeypatch.setenv("DF_FAKE_FAILURE", "crash")
    monkeypatch.setenv("DF_MAX_ATTEMPTS", "1")
    with TestClient(create_app(Settings(), embedded_worker=True)) as api:
        r = post(api, {"prompt": "doomed", "size": "64x64", "steps": 1})
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "runner_crashed"
    assert error["message"].startswith("job ") and " failed: runner_crashed" in error["message"]
