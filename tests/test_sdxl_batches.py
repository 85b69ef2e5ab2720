"""Batches, schedulers, the record and reruns on the real SDXL runner code (dreamforge.runners.sdxl)
with a tiny random-weight model on the CPU, in this process: the pipeline is loaded once per module
and driven by the real Executor, job service and stores; only the child process is left out (the
worker tests in test_sdxl.py cover it)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the diffusers extra is not installed")
pytest.importorskip("diffusers", reason="the diffusers extra is not installed")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dreamforge.execution import Executor  # noqa: E402
from dreamforge.runners import GeneratedBatch, Generation, ProgressCallback  # noqa: E402
from dreamforge.runners.model_config import sdxl_config_dir  # noqa: E402
from dreamforge.runners.sdxl import SDXL  # noqa: E402
from dreamforge.schedulers import NAMES  # noqa: E402
from dreamforge.schemas import parse_request  # noqa: E402
from dreamforge.service import JobService  # noqa: E402
from dreamforge.settings import Settings  # noqa: E402
from tests.tiny_sdxl import save_tiny_sdxl  # noqa: E402

pytestmark = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)


class InProcess:
    """The Runner interface straight onto a loaded SDXL (what the child process runs)."""

    name = "sdxl"

    def __init__(self, model: SDXL):
        self.model = model

    def warm(self) -> None:
        pass

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedBatch:
        return self.model.generate(request, on_progress)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A tiny model gains nothing from more threads, and on a shared CPU their spin-waits make
    it 20x slower (17 s against 0.8 s an image, measured on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    config = sdxl_config_dir(tmp_path_factory.mktemp("model-config"))
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny"), config)


def loaded(path: Path, data_dir: Path, config: Path | None = None) -> SDXL:
    """A single file takes the tiny model's configs from its Diffusers folder."""
    model = SDXL(Settings(generate_model_path=str(path), device="cpu", data_dir=data_dir,
                          model_config_dir=config))
    model.load()
    return model


@pytest.fixture(scope="module")
def single_file(tiny_files, tmp_path_factory) -> SDXL:
    return loaded(tiny_files[1], tmp_path_factory.mktemp("data"), config=tiny_files[0])


@contextmanager
def max_batch(model: SDXL, n: int) -> Iterator[None]:
    before = model.settings
    model.settings = before.model_copy(update={"max_batch": n})
    model._fits.clear()
    try:
        yield
    finally:
        model.settings = before
        model._fits.clear()


def job(svc: JobService, model: SDXL, **fields) -> str:
    body = {"prompt": "a lighthouse in fog", "width": 64, "height": 64, "steps": 3, "seed": 7, **fields}
    job_id = svc.submit(parse_request(body)).view.id
    assert Executor(svc, InProcess(model), "worker:test:1:a").execute(job_id) == "succeeded", \
        svc.get(job_id).error
    return job_id


def files(svc: JobService, job_id: str) -> list[bytes]:
    return [svc.artifact_bytes(a.s3_key) for a in svc.get(job_id).artifacts]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_with_max_batch_1_each_item_is_bit_for_bit_its_count_1_job(df_env, single_file):
    svc = JobService.from_settings(Settings())
    with max_batch(single_file, 1):
        batch = job(svc, single_file, count=3)
        assert svc.get(batch).record["batches"] == [1, 1, 1]
        items = files(svc, batch)
        for item in range(3):
            [alone] = files(svc, job(svc, single_file, seed=7 + item))
            assert pixels(alone).tobytes() == pixels(items[item]).tobytes(), f"item {item}"


def test_a_batched_job_is_one_call_its_rerun_is_byte_identical_and_items_match_within_rounding(
        df_env, single_file):
    svc = JobService.from_settings(Settings())
    batch = job(svc, single_file, count=3, scheduler="euler_a")
    view = svc.get(batch)
    assert view.record["batches"] == [3] and view.record["seeds"] == [7, 8, 9]
    assert view.steps[0].progress.current == 9
    rerun = svc.rerun(batch).view.id
    assert Executor(svc, InProcess(single_file), "worker:test:1:a").execute(rerun) == "succeeded"
    assert files(svc, rerun) == files(svc, batch), "a rerun on the same machine and model differs"
    assert [a.sha256 for a in svc.get(rerun).artifacts] == [a.sha256 for a in view.artifacts]
    # Made alone, an item is the same picture; a batched matmul rounds differently, by at most a
    # level of 255 here (DF_MAX_BATCH=1 makes them bit-identical: the test above).
    [alone] = files(svc, job(svc, single_file, seed=8, scheduler="euler_a"))
    assert int(np.abs(pixels(alone) - pixels(files(svc, batch)[1])).max()) <= 2


def test_out_of_memory_halves_the_batch_and_records_the_split(df_env, single_file, monkeypatch):
    real = single_file.pipe
    calls: list[int] = []

    class SmallGpu:
        """The pipeline, but a call of more than two images runs out of memory (as CUDA would)."""

        def __call__(self, **kwargs):
            calls.append(kwargs["num_images_per_prompt"])
            if kwargs["num_images_per_prompt"] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(**kwargs)

        def __getattr__(self, name):
            return getattr(real, name)

        def __setattr__(self, name, value):
            setattr(real, name, value)

    monkeypatch.setattr(single_file, "pipe", SmallGpu())
    svc = JobService.from_settings(Settings())
    with max_batch(single_file, 8):
        first = job(svc, single_file, count=5)
        record = svc.get(first).record
        assert calls == [5, 2, 2, 1] and record["batches"] == [2, 2, 1]
        assert record["splits"] == [{"at_item": 0, "items": 5, "then": 2}]
        assert len(svc.get(first).artifacts) == 5
        calls.clear()
        job(svc, single_file, count=4)  # the size that fits is remembered: no second failure
        assert calls == [2, 2]


def test_every_scheduler_runs_is_recorded_and_is_reproducible(df_env, single_file):
    svc = JobService.from_settings(Settings())
    made = {}
    for name in NAMES:
        job_id = job(svc, single_file, count=2, steps=3, scheduler=name)
        view = svc.get(job_id)
        made[name] = files(svc, job_id)
        record = view.record["scheduler"]
        assert record["name"] == name and record["class"].endswith("Scheduler")
        if name.endswith("karras"):
            assert record["config"]["use_karras_sigmas"] is True
        assert made[name][0] != made[name][1]  # each item its own seed
    assert len({pixels(m[0]).tobytes() for m in made.values()}) == len(NAMES)
    for name in ("euler_a", "dpmpp_sde_karras"):  # the ones that draw noise while sampling
        assert files(svc, job(svc, single_file, count=2, scheduler=name)) == made[name], name
    # The checkpoint's own scheduler (Euler for SDXL base) comes back after a job chose another.
    default = svc.get(job(svc, single_file)).record["scheduler"]
    assert default["name"] == "euler" and default["class"] == "EulerDiscreteScheduler"


def test_the_record_names_the_model_its_hash_and_the_machine(df_env, single_file, tiny_files):
    svc = JobService.from_settings(Settings())
    view = svc.get(job(svc, single_file, scheduler="dpmpp_2m_karras"))
    record = view.record
    sha = hashlib.sha256(tiny_files[1].read_bytes()).hexdigest()
    assert record["model"] == {"name": "tiny-sdxl", "sha256": sha, "kind": "single_file"}
    assert record["dtype"] == "float32" and record["device"].startswith("cpu")
    assert record["torch"] == torch.__version__ and record["diffusers"] and record["dreamforge"]
    with Image.open(io.BytesIO(files(svc, view.id)[0])) as image:
        text = image.info["parameters"]
    assert (f"Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 7, Size: 64x64, "
            f"Model hash: {sha[:10]}, Model: tiny-sdxl") in text
    cache = single_file.settings.data_dir / "model-hashes.json"
    assert sha in cache.read_text()


def test_a_diffusers_folder_has_no_file_hash_and_the_same_pixels_as_its_single_file(
        df_env, tiny_files, single_file, tmp_path):
    folder = loaded(tiny_files[0], tmp_path)
    svc = JobService.from_settings(Settings())
    from_folder, from_file = job(svc, folder, steps=2), job(svc, single_file, steps=2)
    record = svc.get(from_folder).record
    assert record["model"] == {"name": "tiny-sdxl", "sha256": None, "kind": "diffusers_folder"}
    # The same weights make the same pixels; the files differ in what they say of their model.
    [a], [b] = files(svc, from_folder), files(svc, from_file)
    assert pixels(a).tobytes() == pixels(b).tobytes() and a != b
    assert {k: v for k, v in record.items() if k != "model"} == \
        {k: v for k, v in svc.get(from_file).record.items() if k != "model"}


def test_the_batch_throughput_benchmark_runs_on_the_cpu(df_env, capsys):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "batch_throughput.py"
    spec = importlib.util.spec_from_file_location("batch_throughput", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--repeats", "1", "--steps", "1", "--threads", "1"])
    assert [(r["count"], r["batches"]) for r in rows] == [(1, [1]), (4, [4]), (4, [1, 1, 1, 1])]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "batched count 4 against count 1" in capsys.readouterr().out
