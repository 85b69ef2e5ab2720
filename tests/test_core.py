"""The core path through the public doors: `df generate`, `df worker`, `df jobs`, `df status`,
on SQLite+SQLite and on PostgreSQL+Redis."""

from __future__ import annotations

import io
import json
import re
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamforge.cli.main import app
from dreamforge.imaging import read_parameters
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import run_df

KEY = re.compile(r"^dreamforge/default/jobs/(?P<job>[0-9a-f-]{36})/generate/"
                 r"(?P<ts>\d{8}T\d{6}Z)_0_(?P<w>\d+)x(?P<h>\d+)_(?P<seed>\d+)\.(?P<ext>png|jpg|webp)$")
cli = CliRunner()


def service() -> JobService:
    return JobService.from_settings(Settings())


def generate(*args: str):
    return cli.invoke(app, ["generate", *args])


def test_generate_wait_runs_in_process_and_records_everything(df_env, tmp_path):
    """With no worker alive, --wait runs the job here, says so, and leaves a complete record."""
    out = tmp_path / "out.png"
    result = generate("an old-growth forest at dawn", "--width", "256", "--height", "192",
                      "--steps", "10", "--wait", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "No live worker: running job" in result.output

    svc = service()
    [view] = svc.list_jobs()
    assert view.status.value == "succeeded"
    assert view.summary.completed == 1 and view.summary.count == 1
    [step] = view.steps
    assert step.status.value == "succeeded" and (step.progress.current, step.progress.total) == (10, 10)
    seed = view.params["seed"]
    assert isinstance(seed, int) and step.seed == seed  # drawn, then recorded on job and step
    [art] = view.artifacts
    m = KEY.match(art.s3_key)
    assert m, art.s3_key
    assert (m["job"], m["w"], m["h"], int(m["seed"]), m["ext"]) == (view.id, "256", "192", seed, "png")
    assert art.seed == seed and (art.width, art.height) == (256, 192)

    # The file lies at the key under the local store, and -o copied exactly those bytes.
    stored = Path(df_env["DF_DATA_DIR"]) / "artifacts" / art.s3_key  # the key begins with the bucket
    assert stored.read_bytes() == out.read_bytes()
    assert art.path == str(stored) and art.size_bytes == stored.stat().st_size
    image = Image.open(out)
    assert image.size == (256, 192) and image.format == "PNG"
    meta = read_parameters(out.read_bytes())
    assert meta["prompt"] == "an old-growth forest at dawn" and meta["seed"] == seed
    assert f"Seed: {seed}" in image.info["parameters"]

    kinds = [(e["kind"], e["payload"].get("status")) for e in svc.events(view.id)]
    assert kinds[0] == ("status", "queued") and ("status", "running") in kinds
    assert kinds[-1] == ("status", "succeeded")
    progress = [e["payload"] for e in svc.events(view.id) if e["kind"] == "progress"]
    # Coalesced (at most four writes a second), and always the last step.
    assert 1 <= len(progress) <= 10 and progress[-1] == {"current": 10, "total": 10}
    assert svc.queue.depth() == 0  # the in-process run consumed its queue entry


def test_worker_process_does_the_work(df_env, start_worker, tmp_path):
    """With `df worker` alive, generate only enqueues and watches; SIGTERM stops the worker with 0."""
    worker = start_worker()
    result = run_df(df_env, "generate", "forest", "--width", "64", "--height", "64", "--steps", "3",
                    "--wait", "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["status"] == "succeeded"
    assert "No live worker" not in result.stderr
    job = service().job_store.job(view["id"])
    assert job["worker_id"] is None or job["worker_id"].startswith("worker:")
    assert f"[job={view['id']}" in worker.log()
    assert worker.stop(signal.SIGTERM) == 0
    # The job's own lines carry its id; Huey's per-task lines (its own task id) are not logged,
    # its consumer's lines are.
    log = worker.log()
    assert f"[job={view['id']} request_id=" in log and "] succeeded: 1 image(s)" in log
    assert "Executing dreamforge" not in log and " executed in " not in log
    assert "huey.consumer: Received SIGTERM" in log


def test_jobs_list_show_watch_status_json(df_env):
    ids = []
    for seed in (1, 2):
        r = generate("a lighthouse", "--width", "64", "--height", "64", "--steps", "2",
                     "--seed", str(seed), "--wait", "--json")
        assert r.exit_code == 0, r.output
        ids.append(json.loads(r.stdout)["id"])
    listed = json.loads(cli.invoke(app, ["jobs", "list", "--json"]).stdout)["jobs"]
    assert {j["id"] for j in listed} == set(ids)
    only_failed = json.loads(cli.invoke(app, ["jobs", "list", "--status", "failed", "--json"]).stdout)
    assert only_failed["jobs"] == []
    shown = cli.invoke(app, ["jobs", "show", ids[0], "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["params"]["seed"] == 1
    human = cli.invoke(app, ["jobs", "show", ids[0]])
    assert "succeeded" in human.stdout and "a lighthouse" in human.stdout
    watched = cli.invoke(app, ["jobs", "watch", ids[1]])
    assert watched.exit_code == 0 and watched.stdout.strip().endswith(".png")
    status = json.loads(cli.invoke(app, ["status", "--json"]).stdout)
    assert status["jobs"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "canceled": 0}
    assert status["queue_depth"] == 0
    table = cli.invoke(app, ["jobs", "list"])
    assert table.exit_code == 0 and ids[0] in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--width", "100"], "width must be a multiple of 8"),
    (["--height", "4096"], "height"),
    (["--steps", "0"], "steps"),
    (["--guidance", "31"], "guidance"),
    (["--seed", "4294967296"], "seed"),
    (["--format", "gif"], "format"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(df_env, args, message):
    result = generate("a valid prompt", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    svc = service()
    assert svc.list_jobs() == [] and svc.queue.depth() == 0


def test_blank_prompt_is_refused(df_env):
    result = generate("   ", "--wait")
    assert result.exit_code == 2 and "prompt must not be blank" in result.output
    assert service().list_jobs() == []


def test_unknown_job_is_exit_1(df_env):
    for args in (["jobs", "show", "nope"], ["jobs", "watch", "nope"]):
        result = cli.invoke(app, args)
        assert result.exit_code == 1 and "no job with id 'nope'" in result.output


def test_bad_setting_is_exit_2(df_env, monkeypatch):
    monkeypatch.setenv("DF_API_PORT", "not-a-port")
    result = cli.invoke(app, ["status"])
    assert result.exit_code == 2 and "DF_API_PORT" in result.output
    monkeypatch.delenv("DF_API_PORT")
    monkeypatch.setenv("DF_QUEUE_URL", "amqp://nope")
    result = cli.invoke(app, ["status"])
    assert result.exit_code == 2 and "DF_QUEUE_URL" in result.output


@pytest.mark.parametrize("fmt, pil_format, ext", [("png", "PNG", "png"), ("jpeg", "JPEG", "jpg"),
                                                  ("webp", "WEBP", "webp")])
def test_format_size_and_determinism(df_env, tmp_path, fmt, pil_format, ext):
    """Same prompt and seed give the same bytes; another seed gives another image."""
    outputs = []
    for seed, name in ((7, "a"), (7, "b"), (8, "c")):
        out = tmp_path / f"{name}.{ext}"
        r = generate("determinism", "--width", "128", "--height", "64", "--steps", "2",
                     "--seed", str(seed), "--format", fmt, "-o", str(out))
        assert r.exit_code == 0, r.output
        outputs.append(out.read_bytes())
    a, b, _ = outputs
    assert Image.open(io.BytesIO(a)).format == pil_format
    assert Image.open(io.BytesIO(a)).size == (128, 64)
    assert read_parameters(a)["seed"] == 7
    assert a == b  # the same bytes, metadata included
    pixels = [Image.open(io.BytesIO(x)).convert("RGB").tobytes() for x in outputs]
    assert pixels[0] != pixels[2]


def test_missing_checkpoint_fails_with_model_not_found(df_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DF_FAKE_RUNNER", "0")
    monkeypatch.setenv("DF_GENERATE_MODEL_PATH", str(tmp_path / "nope.safetensors"))
    result = generate("forest", "--width", "64", "--height", "64", "--wait")
    assert result.exit_code == 1
    assert "model_not_found" in result.output and "nope.safetensors" in result.output
    assert "DF_GENERATE_MODEL_PATH" in result.output
    [view] = service().list_jobs()
    assert view.status.value == "failed" and view.error.code == "model_not_found"
    assert view.error.details["path"] == str(tmp_path / "nope.safetensors")


def test_worker_survives_runner_errors(df_env, start_worker, tmp_path):
    """A job whose runner fails is marked failed with a code; the worker goes on to the next."""
    worker = start_worker(env={"DF_FAKE_RUNNER": "0",
                               "DF_GENERATE_MODEL_PATH": str(tmp_path / "missing.safetensors")})
    svc = service()
    from dreamforge.schemas import parse_request

    ids = [svc.submit(parse_request({"prompt": f"p{i}", "width": 64, "height": 64})).view.id
           for i in range(2)]
    deadline = time.monotonic() + 30
    while any(not svc.get(i).status.is_terminal() for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in ids:
        view = svc.get(i)
        assert view.status.value == "failed" and view.error.code == "model_not_found"
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_inline_run_that_dies_ends_the_wait_instead_of_hanging(df_env, monkeypatch):
    """If the CLI's own in-process run breaks, --wait reports it and exits 1 rather than
    watching forever a job that nobody runs."""
    from huey.api import Huey

    def broken_dequeue(self):
        raise RuntimeError("queue storage broke")

    monkeypatch.setattr(Huey, "dequeue", broken_dequeue)
    started = time.monotonic()
    result = generate("doomed", "--width", "64", "--height", "64", "--steps", "1", "--wait")
    assert result.exit_code == 1 and "queue storage broke" in result.output
    assert time.monotonic() - started < 30
    [view] = service().list_jobs()
    assert view.status.value == "queued"  # still queued for a real worker: nothing lost
