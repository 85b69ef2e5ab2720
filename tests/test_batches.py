"""Batches, schedulers, the record and reruns, on the fake runner, in-process: the real job service,
job store (SQLite file; PostgreSQL where named), artifact store and Executor; the API through
Starlette's TestClient and the CLI through typer's CliRunner."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dreamforge.artifact_store import ArtifactStore
from dreamforge.cli.main import app
from dreamforge.errors import JobStateError, StorageError
from dreamforge.execution import Executor
from dreamforge.imaging import read_parameters
from dreamforge.runners.fake import FakeRunner
from dreamforge.schedulers import NAMES
from dreamforge.schemas import MAX_SEED, parse_request
from dreamforge.server.app import create_app
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.spool import Spool

sqlite_only = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
cli = CliRunner()


def request(prompt: str = "batch", count: int = 1, seed: int | None = 10, **extra):
    return parse_request({"prompt": prompt, "width": 64, "height": 64, "steps": 3, "seed": seed,
                          "count": count, **extra})


def service() -> JobService:
    return JobService.from_settings(Settings())


def run(svc: JobService, job_id: str, runner: FakeRunner | None = None) -> str | None:
    return Executor(svc, runner or FakeRunner(), "worker:test:1:a").execute(job_id)


def made(svc: JobService, job_id: str) -> list[bytes]:
    return [svc.artifact_bytes(a.s3_key) for a in svc.get(job_id).artifacts]


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


@sqlite_only
def test_a_batch_makes_count_items_each_the_count_1_image_of_its_seed(df_env):
    svc = service()
    job = svc.submit(request(count=4, seed=MAX_SEED - 1)).view
    assert job.summary.count == 4 and job.steps[0].progress.total == 4 * 3  # items x steps
    assert run(svc, job.id) == "succeeded"
    view = svc.get(job.id)
    seeds = [MAX_SEED - 1, MAX_SEED, 0, 1]  # seed + i, wrapping past 2^32 - 1 to 0
    assert [(a.item_index, a.seed) for a in view.artifacts] == list(enumerate(seeds))
    assert view.summary.count == 4 and view.summary.completed == 4
    assert view.steps[0].progress.current == view.steps[0].progress.total == 12
    assert len({a.s3_key for a in view.artifacts}) == 4
    assert all(f"_{a.item_index}_64x64_{a.seed}." in a.s3_key for a in view.artifacts)
    assert view.record["seeds"] == seeds and view.record["runner"] == "fake"
    assert view.record["dreamforge"] and view.record["batches"] == [1, 1, 1, 1]

    batch = made(svc, job.id)
    for item, seed in enumerate(seeds):
        alone = svc.submit(request(seed=seed)).view.id
        run(svc, alone)
        [single] = made(svc, alone)
        assert pixels(single) == pixels(batch[item]), f"item {item} differs from its count-1 job"
        meta = read_parameters(batch[item])
        assert meta["seed"] == seed and meta["item_index"] == item and meta["count"] == 4
        text = Image.open(io.BytesIO(batch[item])).info["parameters"]
        assert f"Seed: {seed}," in text and f"Batch size: 4, Batch pos: {item}" in text


@sqlite_only
def test_progress_counts_items_times_steps(df_env):
    svc = service()
    job = svc.submit(request(count=3)).view.id
    run(svc, job)
    totals = {e["payload"]["total"] for e in svc.events(job) if e["kind"] == "progress"}
    currents = [e["payload"]["current"] for e in svc.events(job) if e["kind"] == "progress"]
    assert totals == {9} and currents[-1] == 9 and currents == sorted(currents)


@sqlite_only
def test_the_scheduler_is_recorded_and_changes_the_picture(df_env):
    svc = service()
    ids = {name: svc.submit(request(scheduler=name)).view.id for name in (None, "euler", "dpmpp_2m_karras")}
    for job_id in ids.values():
        run(svc, job_id)
    images = {name: made(svc, job_id)[0] for name, job_id in ids.items()}
    assert len({pixels(i) for i in images.values()}) == 3
    view = svc.get(ids["dpmpp_2m_karras"])
    assert view.params["scheduler"] == "dpmpp_2m_karras" and view.record["scheduler"]["name"] == "dpmpp_2m_karras"
    text = Image.open(io.BytesIO(images["dpmpp_2m_karras"])).info["parameters"]
    assert "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 10" in text
    assert "Model: fake" in text and "Batch size" not in text


@sqlite_only
def test_bad_count_or_scheduler_is_a_422_and_nothing_is_queued(df_env):
    with TestClient(create_app(Settings())) as api:
        for body, field in (({"prompt": "x", "scheduler": "k_lms"}, "scheduler"),
                            ({"prompt": "x", "count": 9}, "count"), ({"prompt": "x", "count": 0}, "count"),
                            ({"prompt": "x", "count": "2"}, "count"), ({"prompt": "x", "count": True}, "count")):
            r = api.post("/v1/jobs", json=body)
            assert r.status_code == 422, body
            error = r.json()["error"]
            assert error["code"] == "validation_error" and error["details"][0]["field"] == field
        r = api.post("/v1/jobs", json={"prompt": "x", "scheduler": "k_lms"})
        assert all(name in r.json()["error"]["message"] for name in NAMES)
        assert api.get("/v1/jobs").json()["jobs"] == []
    bad = cli.invoke(app, ["generate", "x", "--scheduler", "k_lms"])
    assert bad.exit_code == 2 and "scheduler must be one of euler, euler_a" in bad.output
    assert cli.invoke(app, ["generate", "x", "-n", "9"]).exit_code == 2
    assert service().list_jobs() == []


class FailingPuts:
    """The real artifact store, but the puts numbered in ``failing`` (1-based) raise."""

    def __init__(self, real: ArtifactStore, failing: set[int]):
        self.real, self.failing, self.puts = real, failing, 0

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None:
        self.puts += 1
        if self.puts in self.failing:
            raise StorageError(f"could not write {key}: the store said no")
        self.real.put(key, data, content_type, sha256)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_a_batch_whose_third_item_fails_to_store_keeps_the_rest_and_recovers(df_env):
    """The items that stored stay (summary.completed counts them); the job fails with storage_error
    naming the item that did not; it waits in the spool, and `df artifacts retry` uploads it and
    the job succeeds with every item."""
    svc = service()
    job = svc.submit(request(count=4)).view.id
    flaky = JobService(svc.settings, svc.job_store, svc.queue, FailingPuts(svc.artifact_store, {3}))
    assert Executor(flaky, FakeRunner(), "worker:test:1:a").execute(job) == "failed"
    view = svc.get(job)
    assert view.error.code == "storage_error" and "item 2 of 4 was not stored" in view.error.message
    assert view.error.details["not_stored"] == [2] and view.error.details["stored"] == [0, 1, 3]
    assert view.error.details["kept"] is True
    assert [a.item_index for a in view.artifacts] == [0, 1, 3] and view.summary.completed == 3
    assert view.record["seeds"] == [10, 11, 12, 13]  # recorded with the failure
    assert not svc.job_store.unsettled_uploads(-1), "an upload row outlived the attempt"
    [entry] = Spool(svc.settings.spool_dir).entries()
    assert entry.artifact["item_index"] == 2

    result = cli.invoke(app, ["artifacts", "retry", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["job_succeeded"] for r in json.loads(result.stdout)] == [True]
    view = svc.get(job)
    assert view.status.value == "succeeded" and view.error is None
    assert [(a.item_index, a.seed) for a in view.artifacts] == [(0, 10), (1, 11), (2, 12), (3, 13)]
    for art in view.artifacts:
        assert hashlib.sha256(svc.artifact_bytes(art.s3_key)).hexdigest() == art.sha256


@sqlite_only
def test_two_items_spooled_one_uploaded_later_the_job_stays_failed_until_both(df_env):
    svc = service()
    job = svc.submit(request(count=3)).view.id
    Executor(JobService(svc.settings, svc.job_store, svc.queue, FailingPuts(svc.artifact_store, {1, 3})),
             FakeRunner(), "worker:test:1:a").execute(job)
    assert svc.get(job).error.details["not_stored"] == [0, 2]
    # The first retry's upload of item 0 fails again; item 2 goes up.
    half = JobService(svc.settings, svc.job_store, svc.queue, FailingPuts(svc.artifact_store, {1}))
    results = half.retry_spooled()
    assert sorted((r["key"].split("_")[1], r["uploaded"]) for r in results) == [("0", False), ("2", True)]
    view = svc.get(job)
    assert view.status.value == "failed" and [a.item_index for a in view.artifacts] == [1, 2]
    assert [r["job_succeeded"] for r in svc.retry_spooled()] == [True]
    assert [a.item_index for a in svc.get(job).artifacts] == [0, 1, 2]
    assert svc.get(job).status.value == "succeeded"


@sqlite_only
def test_a_spooled_item_whose_job_is_gone_leaves_no_object_behind(df_env):
    svc = service()
    job = svc.submit(request(count=2)).view.id
    Executor(JobService(svc.settings, svc.job_store, svc.queue, FailingPuts(svc.artifact_store, {2})),
             FakeRunner(), "worker:test:1:a").execute(job)
    assert svc.prune(0, ["failed"]) == {"jobs": 1, "artifacts": 1}
    [result] = svc.retry_spooled()
    assert result["uploaded"] and not result["job_succeeded"]
    root = Path(svc.settings.storage_url.removeprefix("file://"))
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert Spool(svc.settings.spool_dir).entries() == []


@sqlite_only
def test_a_rerun_gives_the_same_images_byte_for_byte(df_env):
    svc = service()
    first = svc.submit(request(count=3, seed=None, scheduler="euler_a")).view.id
    run(svc, first)
    rerun = svc.rerun(first).view
    assert rerun.rerun_of == first and rerun.retry_of is None
    assert rerun.params == svc.get(first).params  # its drawn seed and its scheduler
    run(svc, rerun.id)
    assert made(svc, rerun.id) == made(svc, first)
    assert svc.get(rerun.id).record == svc.get(first).record

    fresh = svc.rerun(first, new_seed=True).view
    assert fresh.params["seed"] is None and fresh.rerun_of == first
    run(svc, fresh.id)
    assert made(svc, fresh.id) != made(svc, first)

    queued = svc.submit(request(seed=None)).view.id
    with pytest.raises(JobStateError) as refused:
        svc.rerun(queued)
    assert refused.value.code == "job_not_rerunnable"
    assert svc.rerun(queued, new_seed=True).created


@sqlite_only
def test_rerun_over_http_with_and_without_a_body_and_idempotency(df_env):
    svc = service()
    first = svc.submit(request(count=2)).view.id
    run(svc, first)
    with TestClient(create_app(Settings())) as api:
        r = api.post(f"/v1/jobs/{first}/rerun")
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        assert r.json()["rerun_of"] == first and r.json()["params"]["seed"] == 10
        assert r.json()["summary"] == {"count": 2, "completed": 0}
        new = api.post(f"/v1/jobs/{first}/rerun", json={"new_seed": True})
        assert new.status_code == 202 and new.json()["params"]["seed"] is None

        key = {"Idempotency-Key": "rerun-1"}
        once = api.post(f"/v1/jobs/{first}/rerun", headers=key)
        again = api.post(f"/v1/jobs/{first}/rerun", headers=key)
        assert once.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = api.post(f"/v1/jobs/{first}/rerun", headers=key, json={"new_seed": True})
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"

        for body in ({"seed": 3}, {"new_seed": "yes"}, [1], None):
            bad = api.post(f"/v1/jobs/{first}/rerun", content=json.dumps(body),
                           headers={"content-type": "application/json"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
        missing = api.post("/v1/jobs/00000000-0000-0000-0000-000000000000/rerun")
        assert missing.status_code == 404
        assert api.post(f"/v1/jobs/{first}/rerun", content=b"{", headers={
            "content-type": "application/json"}).status_code == 400
        view = api.get(f"/v1/jobs/{first}").json()
        assert view["record"]["seeds"] == [10, 11] and view["rerun_of"] is None
    rerun_id = r.json()["id"]
    run(svc, rerun_id)
    assert made(svc, rerun_id) == made(svc, first)


@sqlite_only
def test_cli_count_output_files_show_and_rerun(df_env, tmp_path: Path):
    out = tmp_path / "out" / "forest.png"
    result = cli.invoke(app, ["generate", "forest", "-n", "3", "--scheduler", "ddim", "--seed", "5",
                              "--width", "64", "--height", "64", "--steps", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    files = [out.with_name(f"forest-{i}.png") for i in range(3)]
    assert result.stdout.split() == [str(f) for f in files] and all(f.exists() for f in files)
    [job] = service().list_jobs()
    assert [read_parameters(f.read_bytes())["seed"] for f in files] == [5, 6, 7]

    shown = cli.invoke(app, ["jobs", "show", job.id])
    assert shown.exit_code == 0
    for expected in ("count:", "3", "scheduler:", "ddim", "  seeds:", "5, 6, 7", "6/6 (3 images x 2 steps)",
                     "stored:", "3 of 3", "artifact 2:"):
        assert expected in shown.stdout, expected
    as_json = json.loads(cli.invoke(app, ["jobs", "show", job.id, "--json"]).stdout)
    assert as_json["record"]["scheduler"]["name"] == "ddim"

    rerun = cli.invoke(app, ["jobs", "rerun", job.id, "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["rerun_of"] == job.id
    plain = cli.invoke(app, ["jobs", "rerun", job.id, "--new-seed"])
    assert plain.exit_code == 0 and service().get(plain.stdout.strip()).params["seed"] is None
    missing = cli.invoke(app, ["jobs", "rerun", "nope"])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1


@sqlite_only
@pytest.mark.parametrize("encoder", ["isal", "pillow"])
def test_png_encoder_and_level_are_settings(df_env, monkeypatch, encoder):
    """DF_PNG_ENCODER picks the writer and DF_PNG_COMPRESS_LEVEL=0 its fastest level: the same
    pixels and parameters either way, a larger file at level 0."""
    monkeypatch.setenv("DF_PNG_ENCODER", encoder)
    sizes, pixels, params = [], [], []
    for level in ("4", "0"):
        monkeypatch.setenv("DF_PNG_COMPRESS_LEVEL", level)
        svc = service()
        job = svc.submit(request(prompt="one picture")).view
        assert run(svc, job.id) == "succeeded"
        [data] = made(svc, job.id)
        sizes.append(len(data))
        with Image.open(io.BytesIO(data)) as image:
            pixels.append(image.convert("RGB").tobytes())
        params.append(read_parameters(data))
    assert sizes[1] > sizes[0]
    assert pixels[0] == pixels[1] and params[0] == params[1]
    assert params[0]["prompt"] == "one picture"
