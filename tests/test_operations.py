"""Running it for real: retention (df jobs prune and DF_RETENTION_DAYS), retries of failed and
canceled jobs, idempotency keys scoped and expiring."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.errors import JobStateError
from dreamforge.execution import Executor
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.polling import wait_until

cli = CliRunner()


def request(prompt: str = "ops", seed: int | None = 3):
    return parse_request({"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": seed})


def service(**overrides) -> JobService:
    return JobService.from_settings(Settings(**overrides))


def files(svc: JobService) -> set[str]:
    root = Path(svc.settings.storage_url.removeprefix("file://"))
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def generate(*args: str) -> dict:
    result = cli.invoke(app, ["generate", *args, "--width", "64", "--height", "64", "--steps", "2", "--json",
                              "--wait"])
    return json.loads(result.stdout)


def test_prune_removes_old_finished_jobs_with_their_images_and_nothing_else(df_env):
    done = [generate(f"old {i}")["id"] for i in range(3)]
    svc = service()
    svc.cancel(svc.submit(request("old canceled")).view.id)
    queued = svc.submit(request("still queued")).view.id
    svc.queue.flush()  # no worker takes it: it stays queued, and old
    time.sleep(1.1)
    fresh = generate("fresh")["id"]
    assert len(files(svc)) == 4

    dry = cli.invoke(app, ["jobs", "prune", "--older-than", "1s", "--dry-run", "--json"])
    assert json.loads(dry.stdout) == {"jobs": 4, "artifacts": 3, "dry_run": True}
    assert len(svc.list_jobs(limit=100)) == 6  # nothing removed

    result = cli.invoke(app, ["jobs", "prune", "--older-than", "1s", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"jobs": 4, "artifacts": 3, "dry_run": False}
    left = {v.id for v in svc.list_jobs(limit=100)}
    assert left == {queued, fresh}  # the queued job is old, but never pruned
    assert files(svc) == {a.s3_key for a in svc.get(fresh).artifacts}
    assert all(not svc.job_store.events(j) for j in done)  # no orphaned rows


def test_prune_of_one_status_and_bad_ages(df_env):
    svc = service()
    canceled = svc.cancel(svc.submit(request("c")).view.id).id
    kept = generate("kept")["id"]
    time.sleep(1.1)
    result = cli.invoke(app, ["jobs", "prune", "--older-than", "1s", "--status", "canceled"])
    assert result.exit_code == 0 and "removed 1 jobs and 0 images" in result.stdout
    assert {v.id for v in svc.list_jobs()} == {kept} and canceled != kept
    for args in (["--older-than", "soon"], ["--older-than", "1d", "--status", "running"]):
        bad = cli.invoke(app, ["jobs", "prune", *args])
        assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


def test_retention_by_setting_is_applied_by_a_worker(df_env, start_worker):
    svc = service()
    old = generate("expires")["id"]
    time.sleep(1.5)
    start_worker(env={"DF_RETENTION_DAYS": str(1 / 86400), "DF_ORPHAN_SWEEP_INTERVAL_S": "0.5"})
    wait_until(lambda: not svc.list_jobs(), "the worker to prune the old job", timeout=20)
    assert files(svc) == set() and old


def test_retry_runs_a_failed_or_canceled_job_again_as_a_linked_job(df_env, monkeypatch):
    monkeypatch.setenv("DF_FAKE_RUNNER", "0")
    monkeypatch.setenv("DF_GENERATE_MODEL_PATH", "/nowhere/model.safetensors")
    failed = generate("needs a model", "--seed", "11")
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_found"
    monkeypatch.setenv("DF_FAKE_RUNNER", "1")

    result = cli.invoke(app, ["jobs", "retry", failed["id"], "--json"])
    assert result.exit_code == 0, result.output
    [retry] = json.loads(result.stdout)["jobs"]
    assert retry["retry_of"] == failed["id"] and retry["id"] != failed["id"]
    assert retry["params"]["seed"] == 11 and retry["params"]["prompt"] == "needs a model"
    svc = service()
    assert Executor(svc, FakeRunner(), "worker:test:1:a").execute(retry["id"]) == "succeeded"
    assert svc.get(failed["id"]).status.value == "failed"  # the old record stays as it ended
    assert svc.get(retry["id"]).artifacts[0].seed == 11

    succeeded = generate("fine")["id"]
    refused = cli.invoke(app, ["jobs", "retry", succeeded])
    assert refused.exit_code == 1 and "job_not_retryable" in refused.output
    with pytest.raises(JobStateError):
        svc.retry(svc.submit(request("queued")).view.id)


def test_retry_many_by_error_code(df_env, monkeypatch):
    monkeypatch.setenv("DF_FAKE_RUNNER", "0")
    monkeypatch.setenv("DF_GENERATE_MODEL_PATH", "/nowhere/model.safetensors")
    ids = [generate(f"broken {i}")["id"] for i in range(3)]
    result = cli.invoke(app, ["jobs", "retry", "--code", "model_not_found", "--since", "1h", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(j["retry_of"] for j in json.loads(result.stdout)["jobs"]) == sorted(ids)
    listed = json.loads(cli.invoke(app, ["jobs", "list", "--code", "model_not_found", "--json"]).stdout)
    assert {j["id"] for j in listed["jobs"]} == set(ids)
    none = cli.invoke(app, ["jobs", "retry", "--code", "storage_error"])
    assert none.exit_code == 0 and "no failed job matched" in none.output


def test_idempotency_keys_are_scoped_and_expire(df_env):
    svc = service(idempotency_ttl=timedelta(seconds=1))
    first = svc.submit(request("a"), idempotency_key="k-1", idempotency_scope="token-a")
    again = svc.submit(request("a"), idempotency_key="k-1", idempotency_scope="token-a")
    assert first.created and not again.created and again.view.id == first.view.id
    other = svc.submit(request("a"), idempotency_key="k-1", idempotency_scope="token-b")
    assert other.created and other.view.id != first.view.id  # another client's key is another key
    time.sleep(1.2)
    expired = svc.submit(request("a"), idempotency_key="k-1", idempotency_scope="token-a")
    assert expired.created and expired.view.id != first.view.id  # an expired key makes a new job
    assert svc.get(first.view.id).id == first.view.id  # and the old job is still there
