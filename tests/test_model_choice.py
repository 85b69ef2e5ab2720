"""A job names its model: checked at submit, resolved at run time through the registry, recorded,
and pinned by a rerun. Fake runner, in-process: the real service, job store, registry and Executor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dreamforge.errors import InvalidRequest, ModelNotFound
from dreamforge.execution import Executor
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.test_models import hand_made_sdxl

sqlite_only = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)


def request(**extra):
    return parse_request({"prompt": "a pier at low tide", "width": 64, "height": 64, "steps": 2,
                          "seed": 5, **extra})


def run(svc: JobService, job_id: str) -> str | None:
    return Executor(svc, FakeRunner(), "worker:test:1:m").execute(job_id)


@pytest.fixture
def svc(df_env, tmp_path: Path) -> JobService:
    service = JobService.from_settings(Settings())
    service.models.add_local(hand_made_sdxl(tmp_path / "alt.safetensors"), name="alt")
    return service


def test_a_job_runs_on_the_model_it_names_and_records_it(svc):
    named = svc.submit(request(model="alt")).view
    default = svc.submit(request()).view
    assert named.params["model"] == "alt" and default.params["model"] is None
    assert run(svc, named.id) == run(svc, default.id) == "succeeded"
    named, default = svc.get(named.id), svc.get(default.id)
    alt = svc.models.resolve("alt")
    assert named.record["model"] == {"name": "alt", "sha256": alt.sha256}
    assert default.record["model"]["name"] == "fake"
    assert svc.artifact_bytes(named.artifacts[0].s3_key) != svc.artifact_bytes(default.artifacts[0].s3_key)
    assert alt.last_used_at is not None


@sqlite_only
def test_an_unknown_model_is_refused_at_submit_and_nothing_is_queued(svc, api):
    with pytest.raises(InvalidRequest) as refused:
        svc.submit(request(model="nope"))
    assert "nope" in refused.value.message and refused.value.details[0]["field"] == "model"
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "model"
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "../etc/passwd"})
    assert r.status_code == 422
    assert svc.page_jobs().jobs == [] and svc.queue.depth() == 0


@sqlite_only
def test_a_model_removed_after_the_job_was_queued_fails_it_clearly(svc):
    job = svc.submit(request(model="alt")).view
    svc.models.remove("alt")
    assert run(svc, job.id) == "failed"
    view = svc.get(job.id)
    assert view.error.code == "unknown_model" and "alt" in view.error.message


@sqlite_only
def test_a_rerun_pins_the_registered_default_it_ran_on(svc):
    svc.models.set_default("alt")
    first = svc.submit(request()).view
    assert run(svc, first.id) == "succeeded"
    assert svc.get(first.id).record["model"]["name"] == "alt"
    svc.models.set_default(None)  # the settings' model is the default again
    again = svc.rerun(first.id).view
    assert again.params["model"] == "alt"
    assert run(svc, again.id) == "succeeded"
    assert svc.artifact_bytes(svc.get(again.id).artifacts[0].s3_key) == \
        svc.artifact_bytes(svc.get(first.id).artifacts[0].s3_key)


def test_a_worker_reads_the_registry_once_a_second_and_sees_its_own_changes_at_once(svc, tmp_path, monkeypatch):
    from dreamforge.registry import registry as registry_module

    monkeypatch.setattr(registry_module, "RECENT_S", 0.5)
    worker_side = svc.models
    reads: list[str | None] = []
    resolve = worker_side.resolve
    monkeypatch.setattr(worker_side, "resolve", lambda name: reads.append(name) or resolve(name))

    assert worker_side.resolve_recent(None).name == "default"  # the settings' model
    assert worker_side.resolve_recent(None).name == "default" and reads == [None]  # kept

    # Another process makes alt the default: a worker sees it within RECENT_S, not at once.
    other_process = JobService.from_settings(Settings())
    other_process.models.set_default("alt")
    assert worker_side.resolve_recent(None).name == "default"
    time.sleep(0.55)
    assert worker_side.resolve_recent(None).name == "alt" and reads == [None, None]

    # This process's own change is seen at once, and so is a removal.
    worker_side.add_local(hand_made_sdxl(tmp_path / "third.safetensors"), name="third", make_default=True)
    assert worker_side.resolve_recent(None).name == "third"
    assert worker_side.resolve_recent("alt").name == "alt"
    worker_side.remove("alt")
    with pytest.raises(ModelNotFound):
        worker_side.resolve_recent("alt")
    other_process.close()
