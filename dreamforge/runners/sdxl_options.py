"""The SDXL runner's GPU options (DF_COMPILE_MODE, DF_FP8, DF_VAE_DTYPE, DF_ATTENTION_BACKEND):
whether this machine can do them, checked before anything is loaded, and how they are applied.

``check_options`` is pure: the runner gives it what it found of the machine (``Machine``), so
every refusal is tested on a CPU with the machine described; the applying functions import torch.
A refusal is RunnerError ``option_unsupported``, naming the setting, what it needs and what this
machine is: a worker that can't honour its settings fails each job clearly instead of quietly
running without them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dreamforge.errors import RunnerError

if TYPE_CHECKING:
    from dreamforge.settings import Settings

# Float8 matmuls (torch._scaled_mm) need Ada (8.9) or Hopper (9.0) and newer.
FP8_MIN_CAPABILITY = (8, 9)
# PyTorch's flash-attention kernel runs on Ampere (8.0) and newer, in float16 or bfloat16.
FLASH_MIN_CAPABILITY = (8, 0)
HALF = ("float16", "bfloat16")
# torch.compile modes that capture CUDA graphs.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Machine:
    """What the options depend on: the device the model runs on, its dtype, the CUDA compute
    capability (None off CUDA), the GPU's name, and torchao's version (None when not installed)."""

    device: str
    dtype: str
    capability: tuple[int, int] | None = None
    gpu: str | None = None
    torchao: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def describe(self) -> str:
        if self.cuda and self.capability is not None:
            return f"{self.gpu or self.device}, compute capability {self.capability[0]}.{self.capability[1]}"
        return self.device


def problems(settings: Settings, machine: Machine) -> list[str]:
    """Every option this machine can't do, one sentence each."""
    found: list[str] = []
    on = machine.describe()
    if settings.compile_mode != "default":
        if not settings.compile:
            found.append(f"DF_COMPILE_MODE={settings.compile_mode} needs DF_COMPILE=1")
        elif settings.compile_mode in CUDA_GRAPH_MODES and not machine.cuda:
            found.append(f"DF_COMPILE_MODE={settings.compile_mode} captures CUDA graphs and needs a "
                         f"CUDA device; this worker runs on {on} (max-autotune-no-cudagraphs works here)")
    if settings.fp8:
        if not machine.cuda or machine.capability is None:
            found.append(f"DF_FP8=1 needs a CUDA GPU of compute capability {FP8_MIN_CAPABILITY[0]}."
                         f"{FP8_MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell); this worker runs on {on}")
        elif machine.capability < FP8_MIN_CAPABILITY:
            found.append(f"DF_FP8=1 needs compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or "
                         f"newer for float8 matmuls; this GPU is {on}")
        if machine.torchao is None:
            found.append("DF_FP8=1 needs torchao: pip install 'dreamforge[fp8]'")
    if settings.vae_dtype == "float16":
        if not settings.vae_path:
            found.append("DF_VAE_DTYPE=float16 needs DF_VAE_PATH: the SDXL VAE overflows in float16 (NaN "
                         "images); point DF_VAE_PATH at a VAE fixed for it, such as sdxl-vae-fp16-fix")
        if machine.dtype != "float16":
            found.append(f"DF_VAE_DTYPE=float16 needs the model in float16 (DF_DTYPE); it is {machine.dtype} here")
    if settings.vae_dtype == "float32" and machine.dtype == "bfloat16":
        found.append("DF_VAE_DTYPE=float32 upcasts a float16 model's VAE; in bfloat16 the VAE decodes in "
                     "bfloat16 without overflowing: leave DF_VAE_DTYPE=auto")
    backend = settings.attention_backend
    if backend in ("efficient", "cudnn") and not machine.cuda:
        found.append(f"DF_ATTENTION_BACKEND={backend} is a CUDA kernel; this worker runs on {on}")
    if backend in ("flash", "cudnn") and machine.cuda:
        if machine.dtype not in HALF:
            found.append(f"DF_ATTENTION_BACKEND={backend} runs in float16 or bfloat16; the model is {machine.dtype}")
        if backend == "flash" and machine.capability is not None and machine.capability < FLASH_MIN_CAPABILITY:
            found.append(f"DF_ATTENTION_BACKEND=flash needs compute capability 8.0 or newer; this GPU is {on}")
    return found


def check_options(settings: Settings, machine: Machine) -> None:
    found = problems(settings, machine)
    if found:
        raise RunnerError("; ".join(found), code="option_unsupported",
                          details={"problems": found, "device": machine.describe()})


def probe_machine(device: str, dtype: Any) -> Machine:
    """The real machine, as check_options wants it."""
    import importlib.metadata

    import torch

    capability: tuple[int, int] | None = None
    gpu = None
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        capability = (major, minor)
        gpu = str(torch.cuda.get_device_name(torch.device(device)))
    try:
        torchao: str | None = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        torchao = None
    return Machine(device, str(dtype).replace("torch.", ""), capability, gpu, torchao)


def attention_context(backend: str) -> contextlib.AbstractContextManager[Any]:
    """Around a pipeline call: the chosen SDPA kernel first, then torch's others in its order,
    so a call the chosen one can't run (the VAE's single 512-wide head on flash) still runs.
    SDXL's UNet calls torch's scaled_dot_product_attention itself (AttnProcessor2_0), so Diffusers'
    own set_attention_backend, which only reaches its attention dispatcher, changes nothing for it
    (checked in Diffusers 0.42.1)."""
    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]
    if chosen == SDPBackend.MATH:
        return sdpa_kernel([SDPBackend.MATH])
    rest = [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH) if b != chosen]
    return sdpa_kernel([chosen, *rest], set_priority=True)


def quantize_fp8(unet: Any) -> None:
    """torchao's float8 dynamic activation + weight quantisation of every nn.Linear in the UNet
    (per-tensor scales, torchao's default). Convolutions stay in the model's dtype."""
    import importlib

    # By name: torchao is an optional extra (fp8), and ships no type information.
    torchao = importlib.import_module("torchao.quantization")
    torchao.quantize_(unet, torchao.Float8DynamicActivationFloat8WeightConfig())


def vae_decode_dtype(pipe: Any) -> str:
    """The dtype the pipeline will decode in: Diffusers upcasts a float16 VAE to float32 when its
    config says force_upcast (SDXL's does; DF_VAE_PATH's fixed VAE is registered without)."""
    import torch

    dtype = pipe.vae.dtype
    if dtype == torch.float16 and pipe.vae.config.force_upcast:
        return "float32"
    return str(dtype).replace("torch.", "")
