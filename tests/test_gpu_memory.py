"""Memory prediction (dreamforge/gpu_memory.py): the estimate's arithmetic, the decision it drives
(run, make fewer items a call, refuse) with free-memory figures given in the test, and the SDXL
runner's refusal on the tiny model in this process. On a CPU: the runner reads the GPU through
``memory_probe``, which only CUDA sets in production; these tests set it to figures of their own,
so the arithmetic and the refusal are real and only the GPU is described."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dreamforge.gpu_memory import (
    GIB,
    KNOWN_FIGURES,
    MemoryState,
    ModelShape,
    estimate,
    plan_batch,
    refusal_message,
)

SDXL_FP16 = ModelShape()  # float16 weights, the VAE upcast to float32 to decode (Diffusers' default)
SDXL_BF16 = ModelShape(vae_dtype_bytes=2)


def test_the_estimate_grows_with_size_and_count():
    sizes = [(512, 512), (768, 768), (1024, 1024), (1024, 1536), (2048, 2048)]
    peaks = [estimate(SDXL_FP16, w, h, 1).peak for w, h in sizes]
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    by_count = [estimate(SDXL_FP16, 1024, 1024, n).peak for n in range(1, 9)]
    assert by_count == sorted(by_count) and len(set(by_count)) == 8
    # The weights are paid once; the activations grow with the count.
    one, eight = estimate(SDXL_FP16, 1024, 1024, 1), estimate(SDXL_FP16, 1024, 1024, 8)
    assert eight.weights == one.weights and eight.phase > 7 * one.phase


def test_half_precision_halves_the_activations():
    full = ModelShape(dtype_bytes=4, vae_dtype_bytes=4)
    half = ModelShape(dtype_bytes=2, vae_dtype_bytes=2)
    for w, h, n in [(1024, 1024, 1), (512, 768, 4)]:
        a, b = estimate(full, w, h, n), estimate(half, w, h, n)
        # Only the latents (float32 in the scheduler either way) don't halve.
        assert b.phase == pytest.approx(a.phase / 2, rel=0.01)
    # The float16 default decodes in float32: its decode costs twice bfloat16's, plus the upcast weights.
    fp16, bf16 = estimate(SDXL_FP16, 1024, 1024, 1), estimate(SDXL_BF16, 1024, 1024, 1)
    assert fp16.vae > 2 * bf16.vae - 1 * 1024 ** 2 and fp16.unet == bf16.unet


def test_the_estimate_matches_the_published_sdxl_figure():
    """8.96 GiB measured for SDXL base in bfloat16, one 1024x1024 image with CFG: the predicted
    peak lands within 10 %, and what a job is asked to find (with the margin) covers it."""
    published = KNOWN_FIGURES["sdxl_base_bf16_1024_batch1_gib"] * GIB
    guess = estimate(SDXL_BF16, 1024, 1024, 1)
    assert guess.peak == pytest.approx(published, rel=0.10)
    assert guess.weights + guess.need >= published
    # The VAE's decode is the largest phase at this size, as the arithmetic says.
    assert guess.vae > guess.unet > guess.text


def test_guidance_and_math_attention_cost_what_they_should():
    with_cfg, without = estimate(SDXL_FP16, 1024, 1024, 2), estimate(SDXL_FP16, 1024, 1024, 2, guidance=False)
    assert with_cfg.unet == pytest.approx(2 * without.unet, rel=0.01)
    math = estimate(SDXL_FP16, 1024, 1024, 1, attention="math")
    flash = estimate(SDXL_FP16, 1024, 1024, 1, attention="flash")
    # 10 heads x 4096^2 scores and softmax, two samples, 2 bytes: 1.25 GiB more in the UNet.
    assert math.unet - flash.unet == 2 * 2 * 10 * 4096 ** 2 * 2
    assert estimate(SDXL_FP16, 1024, 1024, 1, encode=True).vae >= flash.vae
    with pytest.raises(ValueError, match="positive"):
        estimate(SDXL_FP16, 0, 1024, 1)


def gpu(available_gib: float, allocated_gib: float = 7.0) -> MemoryState:
    free = int(available_gib * GIB) - 512 * 1024 ** 2
    return MemoryState(free=free, reusable=512 * 1024 ** 2, allocated=int(allocated_gib * GIB), device="cuda:0")


def test_the_plan_runs_shrinks_or_refuses():
    needs = [estimate(SDXL_FP16, 1024, 1024, n).need for n in range(1, 9)]
    roomy = plan_batch(SDXL_FP16, gpu(70), 1024, 1024, 8)
    assert roomy.batch == 8 and not roomy.shrunk and not roomy.refused
    # Room for three a call, not four: three it is.
    room = MemoryState(free=needs[2] + 1000, reusable=0, allocated=7 * GIB)
    tight = plan_batch(SDXL_FP16, room, 1024, 1024, 8)
    assert tight.batch == 3 and tight.shrunk and tight.record()["wanted"] == 8
    assert tight.predicted_peak == 7 * GIB + tight.estimate.phase
    none = plan_batch(SDXL_FP16, gpu(1.0), 1024, 1024, 8)
    assert none.refused and none.batch == 0
    # Reusable cached memory counts: the same free figure without it is refused.
    edge = MemoryState(free=needs[0] - 10, reusable=20, allocated=0)
    assert plan_batch(SDXL_FP16, edge, 1024, 1024, 1).batch == 1
    assert plan_batch(SDXL_FP16, MemoryState(free=needs[0] - 10, reusable=0, allocated=0), 1024, 1024, 1).refused


def test_the_refusal_says_what_it_needs_and_what_is_free():
    plan = plan_batch(SDXL_FP16, gpu(1.5), 1024, 1024, 1)
    message = refusal_message(plan, 1024, 1024, "NVIDIA GeForce RTX 3060")
    need = f"{plan.estimate.need / GIB:.1f} GiB"
    assert need in message and "1.5 GiB is free on cuda:0 (NVIDIA GeForce RTX 3060)" in message
    assert "1024x1024" in message and "not retried" in message


# -- the runner, in this process, on the tiny model ------------------------------------------------

torch = pytest.importorskip("torch", reason="the diffusers extra is not installed")
pytest.importorskip("diffusers", reason="the diffusers extra is not installed")

from dreamforge.errors import RunnerError  # noqa: E402
from dreamforge.execution import Executor  # noqa: E402
from dreamforge.runners import Generation  # noqa: E402
from dreamforge.runners.sdxl import SDXL  # noqa: E402
from dreamforge.runners.sdxl_memory import model_shape  # noqa: E402
from dreamforge.schemas import parse_request  # noqa: E402
from dreamforge.service import JobService  # noqa: E402
from dreamforge.settings import Settings  # noqa: E402
from tests.test_sdxl_batches import InProcess  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, config_dir, tiny_model) -> Iterator[SDXL]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_sdxl_batches.py: a tiny model on a shared CPU
    folder, _single = tiny_model
    model = SDXL(Settings(_env_file=None, generate_model_path=str(folder), device="cpu",
                          data_dir=tmp_path_factory.mktemp("data")))
    model.load()
    yield model
    torch.set_num_threads(before)


def request(count: int = 1) -> Generation:
    return Generation(prompt="a lighthouse", negative_prompt=None, width=64, height=64, steps=2, guidance=7.0,
                      seed=5, count=count)


def test_on_the_cpu_nothing_is_predicted(tiny):
    """Production sets the probe only for CUDA: a CPU job runs as before, with no plan recorded."""
    assert tiny.memory_probe is None
    batch = tiny.generate(request(), lambda current, total: None)
    assert "memory_plan" not in batch.record and batch.gpu_memory is None


def test_the_shape_is_read_from_the_loaded_model(tiny):
    shape = model_shape(tiny.pipe)
    params = sum(t.numel() * t.element_size() for m in (tiny.pipe.unet, tiny.pipe.vae, tiny.pipe.text_encoder,
                                                         tiny.pipe.text_encoder_2)
                 for t in [*m.parameters(), *m.buffers()])
    assert shape.weights_bytes == params
    assert (shape.latent_factor, shape.unet_width, shape.unet_attention_heads, shape.vae_width) == (2, 32, 4, 32)
    assert shape.dtype_bytes == 4 and shape.vae_dtype_bytes == 4


def test_a_job_that_cannot_fit_is_refused_before_it_runs(tiny, monkeypatch):
    steps: list[int] = []
    monkeypatch.setattr(tiny, "memory_probe", lambda: MemoryState(free=64 * 1024 ** 2, reusable=0,
                                                                  allocated=3 * GIB, device="cuda:0"))
    with pytest.raises(RunnerError) as refused:
        tiny.generate(request(2), lambda current, total: steps.append(current))
    error = refused.value
    assert error.code == "gpu_out_of_memory_predicted" and steps == []  # not one step ran
    assert "0.1 GiB is free on cuda:0" in error.message and "64x64" in error.message
    assert error.details["available_bytes"] == 64 * 1024 ** 2 and error.details["batch"] == 1
    assert error.details["needed_bytes"] > error.details["available_bytes"]
    assert error.details["predicted_peak_bytes"] > 3 * GIB


def test_a_smaller_batch_that_fits_is_used_and_recorded(tiny, monkeypatch):
    from dreamforge.gpu_memory import estimate

    shape = model_shape(tiny.pipe)
    room = estimate(shape, 64, 64, 2).need
    monkeypatch.setattr(tiny, "memory_probe", lambda: MemoryState(free=room, reusable=0, allocated=0))
    batch = tiny.generate(request(4), lambda current, total: None)
    assert batch.record["batches"] == [2, 2] and len(batch.images) == 4
    plan = batch.record["memory_plan"]
    assert plan["batch"] == 2 and plan["wanted"] == 4 and plan["need_bytes"] <= plan["available_bytes"]


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_the_refusal_is_final_and_the_job_says_why(df_env, tiny, monkeypatch):
    """gpu_out_of_memory_predicted is not a transient code: the job fails on its first attempt,
    with the message and the bytes, instead of going back to the queue."""
    monkeypatch.setattr(tiny, "memory_probe", lambda: MemoryState(free=0, reusable=0, allocated=0))
    svc = JobService.from_settings(Settings(max_attempts=3))
    job_id = svc.submit(parse_request({"prompt": "x", "width": 64, "height": 64, "steps": 1})).view.id
    assert Executor(svc, InProcess(tiny), "worker:test:1:a").execute(job_id) == "failed"
    view = svc.get(job_id)
    assert view.status.value == "failed" and view.error.code == "gpu_out_of_memory_predicted"
    assert "GiB" in view.error.message and view.artifacts == []
    assert not list(Path(df_env["DF_DATA_DIR"]).rglob("*.png"))


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_each_jobs_real_peak_is_recorded_beside_its_prediction(df_env):
    """What a CUDA runner reports of a job's memory lands in the job's timings (its succeeded
    event), so a prediction can be checked against the job's real peak. The report is the one
    thing faked here: a CPU has no CUDA allocator to read."""
    from dreamforge.runners.fake import FakeRunner

    class ReportsGpuMemory(FakeRunner):
        def generate(self, request, on_progress):
            batch = super().generate(request, on_progress)
            batch.gpu_memory = {"device": "cuda:0", "allocated": 7 * GIB, "peak": 9 * GIB,
                                "peak_allocated_bytes": 9 * GIB, "predicted_peak_bytes": 10 * GIB}
            return batch

    from dreamforge import metrics

    svc = JobService.from_settings(Settings())
    job_id = svc.submit(parse_request({"prompt": "x", "width": 64, "height": 64, "steps": 1})).view.id
    try:
        assert Executor(svc, ReportsGpuMemory(), "worker:test:1:a").execute(job_id) == "succeeded"
    finally:  # the gauges are this process's: other tests look for a GPU there
        metrics.GPU_PEAK.remove("cuda:0")
        metrics.GPU_ALLOCATED.remove("cuda:0")
    (succeeded,) = [e for e in svc.events(job_id) if e["payload"].get("status") == "succeeded"]
    timings = succeeded["payload"]["timings"]
    assert timings["gpu_peak_bytes"] == 9 * GIB and timings["gpu_predicted_bytes"] == 10 * GIB
