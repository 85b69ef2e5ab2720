"""The S3 artifact store against a real SeaweedFS server on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.errors import StorageError
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.spool import Spool
from tests.conftest import s3_settings_env
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

pytestmark = [pytest.mark.s3, pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)]
cli = CliRunner()
KEY = re.compile(r"^dreamforge/default/jobs/[0-9a-f-]{36}/generate/\d{8}T\d{6}Z_0_64x64_\d+\.png$")


def client(endpoint: str, secret: str = SECRET_KEY):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


@pytest.fixture
def s3_env(df_env, seaweed, monkeypatch):
    env = s3_settings_env(seaweed.endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**df_env, **env}


def bucket_of(env) -> str:
    return env["DF_STORAGE_URL"][len("s3://"):]


def test_upload_key_metadata_presigned_and_private(s3_env, seaweed, tmp_path):
    bucket = bucket_of(s3_env)
    s3 = client(seaweed.endpoint)
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=bucket)  # the first upload creates it
    out = tmp_path / "out.png"
    r = cli.invoke(app, ["generate", "s3 forest", "--width", "64", "--height", "64", "--steps", "2",
                         "--wait", "-o", str(out)])
    assert r.exit_code == 0, r.output

    view = JobService.from_settings(Settings()).list_jobs()[0]
    [art] = view.artifacts
    assert KEY.match(art.s3_key), art.s3_key
    obj = s3.get_object(Bucket=bucket, Key=art.s3_key, ChecksumMode="ENABLED")
    body = obj["Body"].read()
    assert body == out.read_bytes()  # exactly the bytes the runner produced, -o read them back
    assert obj["ContentType"] == "image/png"
    assert hashlib.sha256(body).hexdigest() == art.sha256 == obj["Metadata"]["sha256"]
    assert obj.get("ChecksumSHA256") in (None, base64.b64encode(bytes.fromhex(art.sha256)).decode())
    assert art.size_bytes == len(body) and art.path is None

    # A presigned GET works over plain HTTP; an anonymous one is refused.
    assert art.url and "X-Amz-Signature=" in art.url
    fetched = httpx.get(art.url)
    assert fetched.status_code == 200 and fetched.content == body
    anonymous = httpx.get(f"{seaweed.endpoint}/{bucket}/{art.s3_key}")
    assert anonymous.status_code == 403
    with pytest.raises(ClientError):
        s3.get_bucket_policy(Bucket=bucket)  # no policy: nothing public
    grants = s3.get_bucket_acl(Bucket=bucket)["Grants"]
    assert all(g["Grantee"].get("URI") is None for g in grants)  # no AllUsers/AuthenticatedUsers

    shown = json.loads(cli.invoke(app, ["jobs", "show", view.id, "--json"]).stdout)
    assert shown["artifacts"][0]["url"].startswith(seaweed.endpoint)

    got = cli.invoke(app, ["artifacts", "get", view.id, "-o", str(tmp_path / "dl")])
    assert got.exit_code == 0, got.output
    assert (tmp_path / "dl" / art.s3_key.rsplit("/", 1)[1]).read_bytes() == body


def test_bucket_creation_can_be_forbidden(s3_env, monkeypatch):
    monkeypatch.setenv("DF_S3_CREATE_BUCKET", "0")
    r = cli.invoke(app, ["generate", "no bucket", "--width", "64", "--height", "64", "--steps", "1",
                         "--wait"])
    assert r.exit_code == 1
    view = JobService.from_settings(Settings()).list_jobs()[0]
    assert view.error.code == "storage_error"
    assert repr(bucket_of(s3_env)) in view.error.message and "DF_S3_CREATE_BUCKET" in view.error.message
    assert view.error.details["kept"] and Spool(Settings().spool_dir).entries()


def test_wrong_credentials_fail_without_leaking_and_spool_then_retry(s3_env, monkeypatch, seaweed):
    monkeypatch.setenv("DF_S3_SECRET_ACCESS_KEY", "not-the-secret-xyz")
    r = cli.invoke(app, ["generate", "bad creds", "--width", "64", "--height", "64", "--steps", "1",
                         "--wait"])
    assert r.exit_code == 1
    assert "not-the-secret-xyz" not in r.output and SECRET_KEY not in r.output
    view = JobService.from_settings(Settings()).list_jobs()[0]
    assert view.status.value == "failed" and view.error.code == "storage_error"
    assert bucket_of(s3_env) in view.error.message and "HTTP 403" in view.error.message
    recorded = json.dumps(view.model_dump(mode="json"))
    assert "not-the-secret-xyz" not in recorded
    assert seaweed.endpoint not in recorded and str(Settings().data_dir) not in recorded  # no server insides
    [entry] = Spool(Settings().spool_dir).entries()
    spooled = str(entry.path)
    image = Path(spooled).read_bytes()
    assert hashlib.sha256(image).hexdigest() == json.loads(Path(spooled + ".json").read_text())["artifact"]["sha256"]

    monkeypatch.setenv("DF_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    retried = cli.invoke(app, ["artifacts", "retry", "--json"])
    assert retried.exit_code == 0, retried.output
    [result] = json.loads(retried.stdout)
    assert result["uploaded"] and result["job_succeeded"]
    view = JobService.from_settings(Settings()).get(view.id)
    assert view.status.value == "succeeded" and view.error is None
    assert client(seaweed.endpoint).get_object(Bucket=bucket_of(s3_env),
                                               Key=view.artifacts[0].s3_key)["Body"].read() == image
    assert not Path(spooled).exists()
    assert cli.invoke(app, ["artifacts", "retry"]).stdout.strip() == "nothing spooled"


def test_server_stopped_mid_run_retries_spools_and_recovers(df_env, tmp_path, monkeypatch,
                                                            start_worker):
    """Stop the S3 server while a job runs: the upload is retried, the job fails with
    storage_error, the image waits in the spool, and `df artifacts retry` finishes it later."""
    server = SeaweedServer(tmp_path / "weed")
    server.start()
    try:
        env = s3_settings_env(server.endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        svc = JobService.from_settings(Settings())
        svc.artifact_store.check()
        start_worker(env={**env, "DF_FAKE_STEP_DELAY_S": "0.2"})
        job_id = svc.submit(parse_request({"prompt": "mid-run", "width": 64, "height": 64,
                                           "steps": 10})).view.id
        while svc.get(job_id).status.value != "running":
            time.sleep(0.02)
        server.stop()
        deadline = time.monotonic() + 60
        while not (view := svc.get(job_id)).status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert view.status.value == "failed" and view.error.code == "storage_error"
        assert "after 3 attempt(s)" in view.error.message
        with pytest.raises(StorageError):
            svc.artifact_store.check()  # what /readyz and `df env inspect` report

        server.start()
        retried = cli.invoke(app, ["artifacts", "retry", "--json"])
        assert retried.exit_code == 0, retried.output
        view = svc.get(job_id)
        assert view.status.value == "succeeded" and len(view.artifacts) == 1
        assert httpx.get(view.artifacts[0].url).status_code == 200
        kinds = [e["payload"].get("status") for e in svc.events(job_id) if e["kind"] == "status"]
        assert kinds == ["queued", "running", "failed", "succeeded"]
    finally:
        server.stop()
