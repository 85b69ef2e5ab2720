"""The GPU options (DF_COMPILE_MODE, DF_FP8, DF_VAE_DTYPE, DF_ATTENTION_BACKEND): every machine
that can't do one is refused with the setting's name, checked here with the machine described
(check_options is pure); on this CPU the runner refuses them before loading, and the options a
CPU can run (attention kernels, the VAE's dtype) are applied to the tiny model and recorded.
What they gain on a GPU only a GPU shows: benchmarks/gpu_compiled.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dreamforge.errors import RunnerError
from dreamforge.runners.sdxl_options import Machine, check_options, problems
from dreamforge.settings import Settings

CPU = Machine("cpu", "float32")
H100 = Machine("cuda:0", "float16", (9, 0), "NVIDIA H100 80GB HBM3", torchao="0.18.0")
A100 = Machine("cuda:0", "float16", (8, 0), "NVIDIA A100-SXM4-80GB", torchao="0.18.0")
T4 = Machine("cuda:0", "float16", (7, 5), "Tesla T4", torchao=None)


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_everything_at_once_is_fine_on_an_h100():
    every = settings(compile=True, compile_mode="reduce-overhead", fp8=True, vae_path="/models/fix.safetensors",
                     vae_dtype="float16", attention_backend="flash")
    assert problems(every, H100) == []
    check_options(settings(), CPU)  # the defaults ask nothing of any machine


@pytest.mark.parametrize(("values", "machine", "says"), [
    ({"fp8": True}, CPU, "DF_FP8=1 needs a CUDA GPU of compute capability 8.9 or newer"),
    ({"fp8": True}, A100, "this GPU is NVIDIA A100-SXM4-80GB, compute capability 8.0"),
    ({"fp8": True}, Machine("cuda:0", "float16", (9, 0), "H100", torchao=None), "pip install 'dreamforge[fp8]'"),
    ({"compile_mode": "max-autotune"}, H100, "DF_COMPILE_MODE=max-autotune needs DF_COMPILE=1"),
    ({"compile": True, "compile_mode": "reduce-overhead"}, CPU, "captures CUDA graphs and needs a CUDA device"),
    ({"compile": True, "compile_mode": "max-autotune"}, CPU, "max-autotune-no-cudagraphs works here"),
    ({"vae_dtype": "float16"}, H100, "DF_VAE_DTYPE=float16 needs DF_VAE_PATH: the SDXL VAE overflows"),
    ({"vae_dtype": "float16", "vae_path": "/v"}, CPU, "needs the model in float16 (DF_DTYPE); it is float32"),
    ({"vae_dtype": "float32"}, Machine("cuda:0", "bfloat16", (9, 0)), "leave DF_VAE_DTYPE=auto"),
    ({"attention_backend": "efficient"}, CPU, "efficient is a CUDA kernel; this worker runs on cpu"),
    ({"attention_backend": "cudnn"}, CPU, "is a CUDA kernel"),
    ({"attention_backend": "flash"}, T4, "needs compute capability 8.0 or newer; this GPU is Tesla T4"),
    ({"attention_backend": "flash"}, Machine("cuda:0", "float32", (9, 0)), "runs in float16 or bfloat16"),
])
def test_a_machine_that_cannot_do_an_option_is_refused_by_name(values, machine, says):
    with pytest.raises(RunnerError) as refused:
        check_options(settings(**values), machine)
    assert refused.value.code == "option_unsupported"
    assert says in refused.value.message, refused.value.message
    assert refused.value.details["problems"]


def test_what_a_cpu_can_do_passes():
    for values in ({"attention_backend": "flash"}, {"attention_backend": "math"}, {"vae_dtype": "float32"},
                   {"compile": True, "compile_mode": "max-autotune-no-cudagraphs"}):
        assert problems(settings(**values), CPU) == [], values


def test_every_problem_is_named_at_once():
    found = problems(settings(fp8=True, vae_dtype="float16", attention_backend="cudnn"), CPU)
    assert [p.split(" ")[0] for p in found] == ["DF_FP8=1", "DF_FP8=1", "DF_VAE_DTYPE=float16",
                                                "DF_VAE_DTYPE=float16", "DF_ATTENTION_BACKEND=cudnn"]


def test_an_unknown_value_is_a_settings_error():
    with pytest.raises(ValidationError, match="compile_mode"):
        settings(compile_mode="turbo")
    with pytest.raises(ValidationError, match="attention_backend"):
        settings(attention_backend="xformers")


# -- on this CPU, with the real runner code ---------------------------------------------------------

torch = pytest.importorskip("torch", reason="the diffusers extra is not installed")
pytest.importorskip("diffusers", reason="the diffusers extra is not installed")

import numpy as np  # noqa: E402

from dreamforge.runners import Generation  # noqa: E402
from dreamforge.runners.sdxl import SDXL  # noqa: E402
from dreamforge.runners.sdxl_options import probe_machine  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_sdxl_batches.py: a tiny model on a shared CPU
    yield
    torch.set_num_threads(before)


def test_the_runner_refuses_before_loading_anything(tmp_path):
    """A machine that can't do DF_FP8 fails with option_unsupported before the checkpoint is even
    read (this one does not exist: loading it would be model_invalid)."""
    model = SDXL(settings(data_dir=tmp_path, generate_model_path=str(tmp_path / "absent.safetensors"),
                          device="cpu", fp8=True))
    with pytest.raises(RunnerError) as refused:
        model.load()
    assert refused.value.code == "option_unsupported" and "DF_FP8=1" in refused.value.message
    assert model.pipe is None


def test_this_machine_is_probed_as_it_is():
    machine = probe_machine("cpu", torch.float32)
    assert machine == Machine("cpu", "float32", None, None, machine.torchao)
    if machine.torchao is not None:  # with the fp8 extra installed, only the hardware is missing
        assert problems(settings(fp8=True), machine) == [
            "DF_FP8=1 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            "this worker runs on cpu"]


def make(model: SDXL) -> tuple[np.ndarray, dict]:
    request = Generation(prompt="a lighthouse", negative_prompt=None, width=64, height=64, steps=2,
                         guidance=7.0, seed=11)
    batch = model.generate(request, lambda current, total: None)
    return np.asarray(batch.images[0].image, dtype=np.int16), batch.record


def test_attention_kernels_and_the_vae_dtype_run_here_and_are_recorded(tmp_path, tiny_model):
    folder, _single = tiny_model
    images, records = {}, {}
    for backend in ("default", "flash", "math"):
        model = SDXL(settings(data_dir=tmp_path, generate_model_path=str(folder), device="cpu",
                              attention_backend=backend, vae_dtype="float32"))
        model.load()
        images[backend], records[backend] = make(model)
    for backend, record in records.items():
        assert record["attention_backend"] == backend and record["fp8"] is False
        assert record["vae_decode_dtype"] == "float32" and "compile_mode" not in record
    # The same picture whichever kernel computed the attention, within float rounding.
    assert np.abs(images["flash"] - images["default"]).max() <= 1
    assert np.abs(images["math"] - images["default"]).max() <= 1
