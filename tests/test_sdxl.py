"""The real SDXL runner on a tiny random-weight model, through the real worker, on the CPU."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the diffusers extra is not installed")
pytest.importorskip("diffusers", reason="the diffusers extra is not installed")

from PIL import Image  # noqa: E402

from dreamforge.runners.model_config import use_open_clip_padding  # noqa: E402
from dreamforge.schemas import parse_request  # noqa: E402
from dreamforge.service import JobService  # noqa: E402
from dreamforge.settings import Settings  # noqa: E402
from tests.conftest import WorkerProcess  # noqa: E402
from tests.tiny_sdxl import build_tiny_sdxl  # noqa: E402

sqlite_only = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)

# Token ids from open_clip 3.3.0's SimpleTokenizer (the reference SDXL was trained with), recorded
# once; tests/test_sdxl.py also compares live when open_clip happens to be importable.
OPEN_CLIP_IDS = {
    "an old-growth forest at dawn": [49406, 550, 896, 268, 4026, 4167, 536, 7689, 49407],
    "A photo of a CAT, 4k!!! ultra-detailed; (masterpiece:1.2)":
        [49406, 320, 1125, 539, 320, 2368, 267, 275, 330, 995, 8118, 268, 12609, 282, 263, 12066, 281,
         272, 269, 273, 264, 49407],
    "naïve café — déjà vu 😀 東京":
        [49406, 1097, 35689, 563, 15304, 2005, 25466, 73, 21259, 13230, 7334, 48338, 21078, 361, 49407],
    "  multiple   spaces\tand\nnewlines  ": [49406, 6470, 9006, 537, 1218, 3418, 49407],
    "it's don't we'll <lora:foo>":
        [49406, 585, 568, 847, 713, 649, 1342, 283, 2179, 320, 281, 23435, 285, 49407],
    "": [49406, 49407],
}


def sdxl_env(model: Path, config: Path | None = None) -> dict[str, str]:
    env = {"DF_FAKE_RUNNER": "0", "DF_GENERATE_MODEL_PATH": str(model), "DF_DEVICE": "cpu"}
    if config is not None:
        env["DF_MODEL_CONFIG_DIR"] = str(config)
    return env


def wait_all(svc: JobService, ids: list[str], timeout: float = 240) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [svc.get(i) for i in ids]
        if all(v.status.is_terminal() for v in views):
            return views
        time.sleep(0.05)
    raise AssertionError([(v.id, v.status) for v in views])


def test_tokenizers_match_open_clip(config_dir):
    from transformers import CLIPTokenizer

    tok1 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer_2", local_files_only=True)
    use_open_clip_padding(tok2)
    try:
        from open_clip.tokenizer import SimpleTokenizer

        reference = SimpleTokenizer()
        live = {s: [49406, *reference.encode(s), 49407] for s in OPEN_CLIP_IDS}
        assert live == OPEN_CLIP_IDS
    except ImportError:
        pass
    for text, ids in OPEN_CLIP_IDS.items():
        assert tok1(text)["input_ids"] == ids, text
        assert tok2(text)["input_ids"] == ids, text
    padded = tok2("forest", padding="max_length", max_length=77)["input_ids"]
    assert len(padded) == 77 and padded[3:] == [0] * 74  # open_clip pads the second encoder with 0
    assert tok1("forest", padding="max_length", max_length=77)["input_ids"][3:] == [49407] * 74


def test_single_file_round_trip(tiny_model, config_dir):
    """Our SGM-layout writer is the exact inverse of diffusers' single-file reader."""
    from diffusers import StableDiffusionXLPipeline

    folder, single = tiny_model
    original = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    loaded = StableDiffusionXLPipeline.from_single_file(str(single), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        keys = set(f.keys())
    assert "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in keys
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)


# One warm `df worker` (SQLite, the Diffusers folder, two attempts a job) serves every test below
# that needs a worker: its SDXL child loads torch and the model once for all of them, as a worker
# does in production. The xdist group keeps the tests on one process, so they share it.
ONE_WORKER = pytest.mark.xdist_group("sdxl-worker")


@dataclass
class WarmWorker:
    worker: WorkerProcess
    svc: JobService
    data_dir: Path

    def children_ready(self) -> int:
        return self.worker.log().count(" ready: ")

    def run(self, request: dict, timeout: float = 240):
        [view] = wait_all(self.svc, [self.svc.submit(parse_request(request)).view.id], timeout)
        return view


@pytest.fixture(scope="module")
def warm(tmp_path_factory, tiny_model) -> Iterator[WarmWorker]:
    folder, _ = tiny_model
    data = tmp_path_factory.mktemp("sdxl-data")
    # One torch thread: two threads on two shared cores make a tiny model's step 20x slower.
    env = {"DF_DATA_DIR": str(data), "DF_HEARTBEAT_INTERVAL_S": "0.5", "DF_WORKER_TIMEOUT_S": "5",
           "DF_MAX_ATTEMPTS": "2", "OMP_NUM_THREADS": "1", **sdxl_env(folder)}
    worker = WorkerProcess(env, data / "worker.log")
    try:
        worker.wait_ready()
        svc = JobService.from_settings(Settings(_env_file=None, data_dir=data))
        yield WarmWorker(worker, svc, data)
    finally:
        worker.kill()


@ONE_WORKER
def test_worker_generates_with_the_diffusers_folder(warm):
    """Size and format honoured, same seed → same bytes, other seed → other image, one progress
    event per step, and the warm child serves every job (no reload)."""
    ready = warm.children_ready()
    svc = warm.svc
    requests = [{"prompt": "a red barn", "width": 96, "height": 64, "steps": 3, "seed": 11},
                {"prompt": "a red barn", "width": 96, "height": 64, "steps": 3, "seed": 11},
                {"prompt": "a red barn", "width": 96, "height": 64, "steps": 3, "seed": 12},
                {"prompt": "a red barn", "width": 64, "height": 64, "steps": 2, "format": "webp"}]
    ids = [svc.submit(parse_request(r)).view.id for r in requests]
    views = wait_all(svc, ids)
    assert [v.status.value for v in views] == ["succeeded"] * 4, [v.error for v in views]
    blobs = [svc.artifact_bytes(v.artifacts[0].s3_key) for v in views]
    assert blobs[0] == blobs[1] and blobs[0] != blobs[2]
    first = Image.open(io.BytesIO(blobs[0]))
    assert first.format == "PNG" and first.size == (96, 64)
    assert Image.open(io.BytesIO(blobs[3])).format == "WEBP"
    assert views[3].params["seed"] is not None and views[3].artifacts[0].seed == views[3].params["seed"]
    for view in views:
        # Progress is coalesced (at most 4 writes a second), and the last step is always written.
        progress = [e["payload"] for e in svc.events(view.id) if e["kind"] == "progress"]
        steps = view.params["steps"]
        currents = [p["current"] for p in progress]
        assert currents == sorted(set(currents)) and currents[-1] == steps, progress
        assert all(p["total"] == steps for p in progress)
    assert warm.children_ready() == max(ready, 1) and "SDXL child" in warm.worker.log()


@ONE_WORKER
def test_an_inpaint_job_runs_in_the_warm_child(warm):
    """The input images travel to the child as bytes with the Generation; the child builds the
    inpainting pipeline from the loaded one and keeps the pixels outside the mask."""
    source, mask = Image.new("RGB", (64, 64), (30, 140, 200)), Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    ids = []
    for image in (source, mask):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        ids.append(warm.svc.upload_image(buf.getvalue()).sha256)
    view = warm.run({"type": "inpaint", "prompt": "a red barn", "init_image": ids[0], "mask_image": ids[1],
                     "steps": 2, "seed": 3})
    assert view.status.value == "succeeded", view.error
    out = Image.open(io.BytesIO(warm.svc.artifact_bytes(view.artifacts[0].s3_key))).convert("RGB")
    assert "/inpaint/" in view.artifacts[0].s3_key and out.size == (64, 64)
    assert out.crop((0, 0, 32, 64)).tobytes() == source.crop((0, 0, 32, 64)).tobytes()


def test_single_file_checkpoint_gives_the_same_image(tiny_model, tmp_path):
    """The same image from the single file (with the folder's configs) as from the folder. The
    weights are equal (test_single_file_round_trip); the converted tensors' memory layouts are
    not, so float rounding may move a pixel value by one."""
    from dreamforge.runners import Generation
    from dreamforge.runners.sdxl import SDXL

    folder, single = tiny_model
    request = Generation(prompt="a lighthouse", negative_prompt=None, width=64, height=64, steps=2,
                         guidance=7.0, seed=3)
    images = []
    for path, config in ((folder, None), (single, folder)):
        model = SDXL(Settings(_env_file=None, data_dir=tmp_path, generate_model_path=str(path),
                              model_config_dir=config, device="cpu"))
        model.load()
        made = model.generate(request, lambda current, total: None).images[0].image
        images.append(np.asarray(made, dtype=int))
    assert np.abs(images[0] - images[1]).max() <= 1


def _child_pid(log: str) -> int:
    found = re.findall(r"SDXL child (\d+) ready", log)
    assert found, log
    return int(found[-1])


def _kill_child_mid_attempt(warm: WarmWorker, job_id: str, attempt: int) -> int:
    """SIGKILL the SDXL child once the job's ``attempt`` has made a step."""
    deadline = time.monotonic() + 120
    while True:
        view = warm.svc.get(job_id)
        if view.attempts == attempt and view.status.value == "running" and view.steps[0].progress.current >= 1:
            break
        assert time.monotonic() < deadline, (view, warm.worker.log())
        time.sleep(0.01)
    pid = _child_pid(warm.worker.log())
    os.kill(pid, signal.SIGKILL)
    return pid


@ONE_WORKER
def test_child_crash_sends_the_job_back_then_fails_it_with_runner_crashed(warm):
    """The child killed mid-job with an attempt left: the job goes back to the queue and runs on a
    fresh child. Killed again on the last attempt: the job fails with runner_crashed. The worker
    lives on throughout, and the next job gets a fresh child. (A crash-once job that then
    succeeds is tested on the fake runner, tests/test_moves.py.)"""
    svc = warm.svc
    slow = svc.submit(parse_request({"prompt": "slow", "width": 64, "height": 64, "steps": 150})).view.id
    _kill_child_mid_attempt(warm, slow, 1)
    pid = _kill_child_mid_attempt(warm, slow, 2)
    [view] = wait_all(svc, [slow])
    assert view.status.value == "failed" and view.error.code == "runner_crashed"
    assert "exit code -9" in view.error.message and view.attempts == 2
    statuses = [(e["payload"].get("status"), e["payload"].get("reason")) for e in svc.events(slow)
                if e["kind"] == "status"]
    assert statuses[:4] == [("queued", None), ("running", None), ("queued", "runner_crashed"),
                            ("running", None)] and statuses[-1][0] == "failed"
    view = warm.run({"prompt": "after", "width": 64, "height": 64, "steps": 2})
    assert view.status.value == "succeeded", view.error
    assert _child_pid(warm.worker.log()) != pid
    assert warm.worker.proc.poll() is None


@ONE_WORKER
def test_cancel_stops_the_child_at_its_next_step_and_keeps_it_warm(warm):
    """A running job canceled: the pipeline stops at its next step (its step-end callback), the
    job ends canceled with no artifact, and the same warm child runs the next job."""
    svc = warm.svc
    long = svc.submit(parse_request({"prompt": "long", "width": 64, "height": 64, "steps": 150})).view.id
    deadline = time.monotonic() + 120
    while svc.get(long).steps[0].progress.current < 2:
        assert time.monotonic() < deadline, warm.worker.log()
        time.sleep(0.01)
    ready = warm.children_ready()
    svc.cancel(long)
    [view] = wait_all(svc, [long])
    assert view.status.value == "canceled" and view.artifacts == []
    assert view.steps[0].progress.current < 150
    view = warm.run({"prompt": "after", "width": 64, "height": 64, "steps": 2})
    assert view.status.value == "succeeded", view.error
    assert warm.children_ready() == ready, "the child was restarted instead of interrupted"
    assert not list((warm.data_dir / "artifacts").rglob(f"*{long}*/*.png"))


@ONE_WORKER
def test_a_job_naming_a_registered_model_gets_a_child_with_it(warm, tiny_model):
    """The registry's model for this job: the worker's child is replaced by one holding it (one
    model in memory at a time), and the job's record names it with the registry's sha256."""
    folder, _ = tiny_model
    record = warm.svc.models.add_local(folder, name="tiny-folder")
    ready = warm.children_ready()
    view = warm.run({"prompt": "a quay", "width": 64, "height": 64, "steps": 2, "seed": 4,
                     "model": "tiny-folder"})
    assert view.status.value == "succeeded", view.error
    assert view.record["model"]["name"] == "tiny-folder"
    assert view.record["model"]["sha256"] == record.sha256
    assert warm.children_ready() == ready + 1 and "switching the SDXL child" in warm.worker.log()


def test_unreadable_checkpoint_is_model_invalid(tmp_path):
    from dreamforge.errors import RunnerError
    from dreamforge.runners.sdxl import SDXL

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    model = SDXL(Settings(_env_file=None, data_dir=tmp_path, generate_model_path=str(bad), device="cpu"))
    with pytest.raises(RunnerError) as failed:
        model.load()
    assert failed.value.code == "model_invalid"
    assert str(bad) in failed.value.message and "DF_GENERATE_MODEL_PATH" in failed.value.message


@sqlite_only
def test_non_finite_output_is_never_stored(df_env, tmp_path, config_dir):
    """A model whose VAE gives NaN: the job fails with non_finite_output and nothing is stored.
    The SDXL runner code runs in this process, under the real executor."""
    from dreamforge.runners.sdxl import SDXL
    from dreamforge.worker import InlineWorker

    pipe = build_tiny_sdxl(config_dir)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    pipe.save_pretrained(tmp_path / "nan-model")
    settings = Settings(generate_model_path=str(tmp_path / "nan-model"), device="cpu", fake_runner=False)
    svc = JobService.from_settings(settings)
    job_id = svc.submit(parse_request({"prompt": "x", "width": 64, "height": 64, "steps": 1})).view.id
    model = SDXL(settings)
    model.load()
    runner = InProcessSDXL(model)
    worker = InlineWorker(svc, runner, job_id)
    worker.start()
    worker.join()
    view = svc.get(job_id)
    assert view.status.value == "failed" and view.error.code == "non_finite_output"
    assert view.artifacts == []
    assert not list((Path(df_env["DF_DATA_DIR"]) / "artifacts").rglob("*.png"))


class InProcessSDXL:
    """The SDXL runner code without its child process, for tests that need no crash isolation."""

    name = "sdxl"

    def __init__(self, model):
        self.model = model

    def warm(self) -> None:
        pass

    def generate(self, request, on_progress):
        return self.model.generate(request, on_progress)

    def close(self) -> None:
        pass


@sqlite_only
def test_cli_api_and_fake_runner_do_not_import_torch(df_env):
    code = ("import sys; import dreamforge.cli.main, dreamforge.server.app, dreamforge.runners.fake, "
            "dreamforge.worker, dreamforge.runners.child; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **df_env})
    # And a whole fake-runner job through the CLI, with torch made unimportable.
    blocker = df_env["DF_DATA_DIR"] + "/blocker"
    Path(blocker).mkdir(parents=True)
    Path(blocker, "torch.py").write_text("raise ImportError('torch must not be imported here')\n")
    result = subprocess.run([sys.executable, "-m", "dreamforge.cli.main", "generate", "x", "--width", "64",
                             "--height", "64", "--steps", "1", "--wait", "--json"],
                            env={**os.environ, **df_env, "PYTHONPATH": blocker}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "succeeded"
