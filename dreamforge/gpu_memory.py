"""How much GPU memory an SDXL job will need at its peak, and what to do when it won't fit.

Pure arithmetic (no torch here): the SDXL runner measures the loaded model and the GPU, and asks
``plan_batch`` before each job. The estimate is

    peak = resident weights + (text encoding | the UNet's denoising | the VAE) whichever is largest

because the pipeline runs those phases one after the other and frees each one's activations
before the next: only the weights, the prompt embeddings and the latents live across them.

NOT YET CALIBRATED ON A GPU. The constants below come from arithmetic over the SDXL base
architecture (the tensors alive at once in the largest block, counted by hand from Diffusers'
UNet2DConditionModel and AutoencoderKL), checked against one published figure (see
KNOWN_FIGURES). Every job on CUDA records ``predicted_peak_bytes`` beside the real
``peak_allocated_bytes``, and ``benchmarks/gpu_compiled.py`` prints both, so the first GPU run
says how far off they are; until then the margin (SAFETY_FACTOR, SAFETY_BYTES) is a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024 ** 3

# -- the constants, and where each comes from -------------------------------------------------------
#
# UNet, per sample (CFG makes two samples of each image), in elements per latent pixel, per
# channel of its first block (320 in SDXL base). At latent resolution P = (h/8)(w/8):
#   skip connections kept for the up path: 3x320 + 320/4 + 2x640/4 + 640/16 + 2x1280/16 = 1560 P
#   the largest transient: the GEGLU feed-forward at the first attention level (640 wide, P/4
#   tokens): its 5120-wide projection, the gelu of half and the product, 1280+640+640 = 2560 P;
#   the up path's first full-resolution resnet (960 channels in, its norm, 320 out) is smaller.
#   (1560 + 2560) / 320 = 12.9 per channel; 14 leaves room for the residual stream and the
#   attention's q/k/v.
UNET_ELEMENTS_PER_PIXEL_PER_CHANNEL = 14
# VAE decode, per image, in elements per output pixel, per channel of the decoder's widest
# full-resolution tensor (256 in SDXL: the last upsample carries block_out_channels[1] to the
# output size). Alive at once in the first full-resolution resnet: its input, the group norm's
# output and the SiLU's, 3 x 256 = 768 per output pixel; the upsample (its output and the conv's,
# 2 x 256) is smaller. Arithmetic says 3; the published figure below is 1.0 GiB above what 3
# gives, and the decode is where the unseen bytes most likely are (cuDNN workspaces for
# 256-channel convolutions at full resolution, the mid block's attention), so 4 until measured.
VAE_DECODE_ELEMENTS_PER_PIXEL_PER_CHANNEL = 4
# VAE encode (img2img and inpaint), per image: the encoder runs at full resolution with
# block_out_channels[0] (128) channels, input + norm + activation, 3 x 128 per output pixel;
# counted in the same units (per channel of the decoder's widest tensor, 256) it is 1.5.
VAE_ENCODE_ELEMENTS_PER_PIXEL_PER_CHANNEL = 1.5
# Text encoders: 77 tokens, every hidden state kept (clip-skip reads the penultimate), two
# prompts (CFG) per image. At most 33 layers x 77 x 1280 x 2 bytes = 6.5 MB a prompt; 16 MiB an
# image is generous and never decides anything.
TEXT_BYTES_PER_IMAGE = 16 * 1024 ** 2
# With the "math" attention backend the attention matrix is materialised (scores and softmax,
# two of heads x tokens^2); flash, memory-efficient and cuDNN kernels never hold it. The VAE's
# one 512-wide head at latent resolution is assumed to run memory-efficient (no flash kernel
# takes head_dim 512); with "math" it is counted too.
MATH_ATTENTION_COPIES = 2
# Margin for what arithmetic misses (the caching allocator's rounding, cuBLAS workspaces,
# temporaries in Diffusers' own code): a guess until a GPU run calibrates it.
SAFETY_FACTOR = 1.15
SAFETY_BYTES = 256 * 1024 ** 2

# Published figures the estimate is checked against (tests/test_gpu_memory.py): Diffusers'
# SDXL speed benchmarks (huggingface.co/datasets/sayakpaul/sample-datasets, collated_results_sdxl.csv,
# the "memory (gbs)" column: torch.cuda.max_memory_allocated in GiB) give 8.96 GiB for SDXL base in
# bfloat16 with SDPA, one 1024x1024 image, 30 steps, CFG, on an 80 GB A100. In bfloat16 the VAE
# is not upcast (Diffusers upcasts only float16), so that figure is a 2-byte decode.
KNOWN_FIGURES = {"sdxl_base_bf16_1024_batch1_gib": 8.96}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a loaded pipeline. The defaults are SDXL base's."""

    weights_bytes: int = 6_939_000_000  # every parameter and buffer of the four models, as loaded
    vae_weights_bytes: int = 167_000_000  # the VAE's share (copied to float32 to decode, when it upcasts)
    latent_factor: int = 8  # output pixels per latent pixel, per side
    unet_width: int = 320  # UNet block_out_channels[0]
    unet_attention_heads: int = 10  # heads at the first attention level
    unet_attention_downscale: int = 4  # latent pixels per token there (2 ** level, squared)
    vae_width: int = 256  # channels of the decoder's widest full-resolution tensor
    dtype_bytes: int = 2  # the UNet's and text encoders' dtype
    vae_dtype_bytes: int = 4  # the dtype the VAE decodes in (float32 when it upcasts)


@dataclass(frozen=True)
class Estimate:
    """Bytes, by part. ``peak`` = weights + the largest phase; ``need`` = what a job must find
    beyond the weights (already resident in a loaded worker), margin included."""

    weights: int
    text: int
    unet: int
    vae: int

    @property
    def phase(self) -> int:
        return max(self.text, self.unet, self.vae)

    @property
    def peak(self) -> int:
        return self.weights + self.phase

    @property
    def need(self) -> int:
        return int(self.phase * SAFETY_FACTOR) + SAFETY_BYTES


def estimate(shape: ModelShape, width: int, height: int, batch: int, *, guidance: bool = True,
             attention: str = "default", encode: bool = False) -> Estimate:
    """The peak of one pipeline call making ``batch`` images at width x height. ``guidance``:
    classifier-free guidance doubles the UNet's batch. ``encode``: img2img and inpaint also run
    the VAE's encoder over the input image."""
    if width <= 0 or height <= 0 or batch <= 0:
        raise ValueError(f"width, height and batch must be positive, not {width}, {height}, {batch}")
    pixels = width * height
    latent = pixels // (shape.latent_factor ** 2)
    samples = batch * (2 if guidance else 1)
    resident = samples * latent * 4 * 4  # the latents, and the scheduler's float32 copy of them
    unet_elems = UNET_ELEMENTS_PER_PIXEL_PER_CHANNEL * shape.unet_width * latent
    vae_elems = VAE_DECODE_ELEMENTS_PER_PIXEL_PER_CHANNEL * shape.vae_width * pixels
    if encode:
        vae_elems = max(vae_elems, int(VAE_ENCODE_ELEMENTS_PER_PIXEL_PER_CHANNEL * shape.vae_width * pixels))
    if attention == "math":
        tokens = latent // shape.unet_attention_downscale
        unet_elems += MATH_ATTENTION_COPIES * shape.unet_attention_heads * tokens * tokens
        vae_elems += MATH_ATTENTION_COPIES * latent * latent
    unet = samples * unet_elems * shape.dtype_bytes
    vae = batch * vae_elems * shape.vae_dtype_bytes
    if shape.vae_dtype_bytes > shape.dtype_bytes:
        # Upcasting replaces the VAE's half-precision weights with float32 ones for the decode.
        vae += shape.vae_weights_bytes * (shape.vae_dtype_bytes - shape.dtype_bytes) // shape.dtype_bytes
    text = batch * TEXT_BYTES_PER_IMAGE
    return Estimate(weights=shape.weights_bytes, text=text + resident, unet=unet + resident,
                    vae=vae + resident)


@dataclass(frozen=True)
class MemoryState:
    """One GPU's memory as this process sees it: ``free`` from the driver (cudaMemGetInfo),
    ``reusable`` what this process's caching allocator holds but no tensor uses (reserved minus
    allocated), ``allocated`` what this process's tensors use now (the loaded model)."""

    free: int
    reusable: int
    allocated: int
    device: str = "cuda"

    @property
    def available(self) -> int:
        return self.free + self.reusable


@dataclass(frozen=True)
class BatchPlan:
    """What to do with a job: run ``batch`` items a call (maybe fewer than ``wanted``), or, when
    not even one fits, ``batch`` is 0 and the job is refused."""

    batch: int
    wanted: int
    estimate: Estimate  # for ``batch`` items (for one, when refused)
    state: MemoryState

    @property
    def refused(self) -> bool:
        return self.batch == 0

    @property
    def shrunk(self) -> bool:
        return 0 < self.batch < self.wanted

    @property
    def predicted_peak(self) -> int:
        """What torch.cuda.max_memory_allocated should read after the job: what is allocated now
        (the model) plus the largest phase."""
        return self.state.allocated + self.estimate.phase

    def record(self) -> dict[str, Any]:
        """For the job's record, in bytes."""
        return {"batch": self.batch, "wanted": self.wanted, "need_bytes": self.estimate.need,
                "available_bytes": self.state.available, "predicted_peak_bytes": self.predicted_peak}


def plan_batch(shape: ModelShape, state: MemoryState, width: int, height: int, wanted: int, **kwargs: Any) -> BatchPlan:
    """The largest batch of at most ``wanted`` items whose need fits what is available; 0 when
    not even one item does. ``kwargs`` go to ``estimate``."""
    for batch in range(wanted, 0, -1):
        guess = estimate(shape, width, height, batch, **kwargs)
        if guess.need <= state.available:
            return BatchPlan(batch, wanted, guess, state)
    return BatchPlan(0, wanted, estimate(shape, width, height, 1, **kwargs), state)


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def refusal_message(plan: BatchPlan, width: int, height: int, device_name: str) -> str:
    one = plan.estimate
    return (f"this job would need about {gib(one.need)} of GPU memory beyond the loaded model "
            f"({gib(one.weights)}) to make even one {width}x{height} image, but only "
            f"{gib(plan.state.available)} is free on {plan.state.device} ({device_name}); try a "
            "smaller size, or a worker on a GPU with more memory (predicted before it ran, so not retried; "
            "DF_GPU_MEMORY_CHECK=0 on the worker turns the prediction off)")
