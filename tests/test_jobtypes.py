"""img2img, inpaint and LoRAs on the fake runner, in-process: the real job service, job store
(SQLite file), artifact store and Executor; the API through Starlette's TestClient and the CLI
through typer's CliRunner. The SDXL side is tests/test_sdxl_jobtypes.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.errors import InvalidRequest
from dreamforge.execution import Executor
from dreamforge.imaging import read_parameters
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.server.app import create_app
from dreamforge.service import JobService, fitted_size
from dreamforge.settings import Settings

pytestmark = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
cli = CliRunner()


def png(size: tuple[int, int] = (96, 72), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle((4, 4, size[0] // 2, size[1] // 2), fill=(10, 220, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(size: tuple[int, int] = (96, 72)) -> bytes:
    """White (repaint) on the right half, black (keep) on the left."""
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=255)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def service() -> JobService:
    return JobService.from_settings(Settings())


def run(svc: JobService, job_id: str) -> str | None:
    return Executor(svc, FakeRunner(), "worker:test:1:a").execute(job_id)


def rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def made(svc: JobService, job_id: str) -> list[bytes]:
    return [svc.artifact_bytes(a.s3_key) for a in svc.get(job_id).artifacts]


def test_img2img_over_http_from_an_upload_keys_record_and_rerun(df_env):
    svc = service()
    with TestClient(create_app(Settings())) as api:
        upload = api.post("/v1/uploads", content=png(), headers={"content-type": "image/png"}).json()
        body = {"type": "img2img", "prompt": "a red barn", "init_image": upload["id"], "strength": 0.5,
                "steps": 4, "seed": 7, "count": 2}
        r = api.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = r.json()
        # The output takes the input's size; 4 steps at strength 0.5 run 2 of them, per item.
        assert job["type"] == "img2img" and (job["params"]["width"], job["params"]["height"]) == (96, 72)
        assert job["steps"][0]["name"] == "img2img" and job["steps"][0]["progress"]["total"] == 2 * 2
        assert job["params"]["inputs"]["init_image"]["sha256"] == upload["sha256"]
        assert run(svc, job["id"]) == "succeeded"
        view = api.get(f"/v1/jobs/{job['id']}").json()
    assert view["steps"][0]["progress"] == {"current": 4, "total": 4}
    assert all(f"/{job['id']}/img2img/" in a["s3_key"] for a in view["artifacts"])
    assert view["record"]["inputs"] == {"init_image": {"sha256": upload["sha256"]}}
    assert view["record"]["strength"] == 0.5 and view["record"]["denoising_steps"] == 2
    first = made(svc, job["id"])
    assert rgb(first[0]).size == (96, 72) and first[0] != first[1]
    meta = read_parameters(first[0])
    assert meta["init_image"] == upload["sha256"] and meta["mode"] == "img2img"
    with Image.open(io.BytesIO(first[0])) as image:
        assert "Denoising strength: 0.5" in image.info["parameters"]

    rerun = svc.rerun(job["id"]).view
    assert rerun.params["init_image"] == upload["id"] and rerun.type == "img2img"
    run(svc, rerun.id)
    assert made(svc, rerun.id) == first

    other = svc.submit(parse_request({**body, "init_image": svc.upload_image(png(color=(0, 0, 255))).sha256})).view
    run(svc, other.id)
    assert made(svc, other.id)[0] != first[0]


def test_inpaint_keeps_the_pixels_outside_the_mask_and_starts_from_an_artifact(df_env):
    svc = service()
    source = svc.submit(parse_request({"prompt": "a field", "width": 96, "height": 72, "steps": 2,
                                       "seed": 1})).view
    run(svc, source.id)
    mask = svc.upload_image(mask_png())
    job = svc.submit(parse_request({"type": "inpaint", "prompt": "a horse", "steps": 3, "seed": 2,
                                    "init_image": {"job_id": source.id, "item": 0},
                                    "mask_image": mask.sha256})).view
    assert job.params["strength"] == 1.0 and job.steps[0].progress.total == 3
    assert run(svc, job.id) == "succeeded"
    view = svc.get(job.id)
    assert "/inpaint/" in view.artifacts[0].s3_key
    assert view.record is not None and view.record["inputs"]["mask_image"] == {"sha256": mask.sha256}
    before, after = rgb(made(svc, source.id)[0]), rgb(made(svc, job.id)[0])
    keep, repaint = (0, 0, 48, 72), (48, 0, 96, 72)
    assert before.crop(keep).tobytes() == after.crop(keep).tobytes()
    assert before.crop(repaint).tobytes() != after.crop(repaint).tobytes()


def test_an_explicit_size_resizes_the_input(df_env):
    svc = service()
    up = svc.upload_image(png((100, 60)))
    job = svc.submit(parse_request({"type": "img2img", "prompt": "x", "init_image": up.sha256,
                                    "width": 64, "height": 64, "steps": 2, "seed": 3})).view
    run(svc, job.id)
    assert rgb(made(svc, job.id)[0]).size == (64, 64)
    # Unset: the input's own size, rounded down to a multiple of 8 and scaled to fit 2048.
    assert fitted_size(100, 90) == (96, 88) and fitted_size(4096, 1024) == (2048, 512)
    assert fitted_size(100, 20) == (96, 64)  # at least 64 a side


def test_bad_inputs_and_loras_are_422_and_nothing_is_queued(df_env):
    svc = service()
    init = svc.upload_image(png()).sha256
    small_mask = svc.upload_image(mask_png((32, 32))).sha256
    unknown = "0" * 64
    with TestClient(create_app(Settings())) as api:
        for body, code in [
            ({"type": "img2img", "prompt": "x", "init_image": unknown}, "unknown_input"),
            ({"type": "img2img", "prompt": "x", "init_image": {"job_id": "nope", "item": 0}}, "unknown_input"),
            ({"type": "inpaint", "prompt": "x", "init_image": init, "mask_image": small_mask}, "mask_size_mismatch"),
            ({"type": "inpaint", "prompt": "x", "init_image": init}, "validation_error"),
            ({"type": "img2img", "prompt": "x"}, "validation_error"),
            ({"type": "img2img", "prompt": "x", "init_image": "../etc/passwd"}, "validation_error"),
            ({"type": "img2img", "prompt": "x", "init_image": init, "strength": 1.5}, "validation_error"),
            ({"type": "img2img", "prompt": "x", "init_image": init, "steps": 2, "strength": 0.3}, "validation_error"),
            ({"prompt": "x", "init_image": init}, "validation_error"),
            ({"prompt": "x", "inputs": {}}, "validation_error"),
            ({"prompt": "x", "loras": [{"name": "nope", "weight": 0.5}]}, "validation_error"),
            ({"prompt": "x", "loras": [{"name": f"l{i}"} for i in range(5)]}, "validation_error"),
            ({"prompt": "x", "loras": [{"name": "a", "weight": 5}]}, "validation_error"),
        ]:
            r = api.post("/v1/jobs", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["code"] == code, (body, r.json())
        missing = api.post("/v1/jobs", json={"type": "inpaint", "prompt": "x", "init_image": init})
        assert missing.json()["error"]["details"][0]["field"] == "mask_image"  # named, for the form
    assert svc.list_jobs() == []


def test_loras_fold_into_the_fake_picture_and_the_parameters_text(df_env, tmp_path, monkeypatch):
    svc = service()
    record = _register_lora(svc, tmp_path, monkeypatch)
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 4}
    plain = svc.submit(parse_request(base)).view
    with_lora = svc.submit(parse_request({**base, "loras": [{"name": "tiny", "weight": 0.8}]})).view
    run(svc, plain.id)
    run(svc, with_lora.id)
    assert made(svc, plain.id) != made(svc, with_lora.id)
    view = svc.get(with_lora.id)
    assert view.record is not None
    assert view.record["loras"] == [{"name": "tiny", "sha256": record.sha256, "weight": 0.8}]
    with Image.open(io.BytesIO(made(svc, with_lora.id)[0])) as image:
        text = image.info["parameters"]
    assert text.splitlines()[0] == "x <lora:tiny:0.8>"
    assert f'Lora hashes: "tiny: {record.sha256[:10]}"' in text
    with pytest.raises(InvalidRequest) as wrong:  # a LoRA is not a checkpoint
        svc.submit(parse_request({**base, "model": "tiny"}))
    assert wrong.value.code == "not_a_checkpoint"


def _register_lora(svc: JobService, tmp_path: Path, monkeypatch):
    """A LoRA the registry recognises from its header (the fake runner reads no tensor)."""
    from tests.test_lora_registry import KOHYA_SDXL
    from tests.test_models import write_safetensors

    return svc.models.add_local(write_safetensors(tmp_path / "tiny.safetensors", KOHYA_SDXL), name="tiny")


def test_cli_img2img_from_a_file_and_from_a_job(df_env, tmp_path: Path):
    source = tmp_path / "in.png"
    source.write_bytes(png())
    out = tmp_path / "out.png"
    result = cli.invoke(app, ["generate", "a barn", "--init-image", str(source), "--strength", "0.5",
                              "--steps", "4", "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    [job] = service().list_jobs()
    assert job.type == "img2img" and rgb(out.read_bytes()).size == (96, 72)
    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_png())
    again = cli.invoke(app, ["generate", "a horse", "--init-image", f"{job.id}:0", "--mask-image", str(mask),
                             "--steps", "2", "--json"])
    assert again.exit_code == 0, again.output
    view = json.loads(again.stdout)
    assert view["type"] == "inpaint" and view["params"]["init_image"] == {"job_id": job.id, "item": 0}
    by_id = cli.invoke(app, ["generate", "x", "--init-image", view["params"]["mask_image"], "--json"])
    assert by_id.exit_code == 0 and json.loads(by_id.stdout)["type"] == "img2img", by_id.output
    for args, says in [(["--init-image", str(tmp_path / "missing.png")], "missing.png"),
                       (["--lora", "nope"], "nope"), (["--lora", "a:lot"], "--lora"),
                       (["--strength", "0.5"], "strength")]:
        bad = cli.invoke(app, ["generate", "x", *args])
        assert bad.exit_code != 0 and says in bad.output, bad.output


def test_a_download_is_not_rerun_and_an_unreadable_source_is_422(df_env):
    """Two 500s schemathesis found: a rerun of a model download, a source urlsplit can't read."""
    with TestClient(create_app(Settings())) as api:
        bad = api.post("/v1/models", json={"source": "https://[::1/model.safetensors"})
        assert bad.status_code == 422, bad.text
        # A public address, not a name: a name must resolve at submit, and tests reach no DNS.
        download = api.post("/v1/models", json={"source": "https://1.1.1.1/sdxl.safetensors"})
        assert download.status_code == 202, download.text
        rerun = api.post(f"/v1/jobs/{download.json()['id']}/rerun", json={"new_seed": True})
        assert rerun.status_code == 409 and rerun.json()["error"]["code"] == "job_not_rerunnable"
