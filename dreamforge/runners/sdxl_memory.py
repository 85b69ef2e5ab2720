"""The torch side of dreamforge/gpu_memory.py for the SDXL runner: this GPU's memory now, the
loaded pipeline's shape, and the plan (or the refusal) for a job."""

from __future__ import annotations

from typing import Any

from dreamforge.errors import RunnerError
from dreamforge.gpu_memory import BatchPlan, MemoryState, ModelShape, plan_batch, refusal_message
from dreamforge.runners import Generation
from dreamforge.runners.sdxl_options import vae_decode_dtype


def cuda_memory_state(device: str) -> MemoryState:
    """The GPU's free memory (the driver's figure) and what this process's caching allocator holds
    unused, which a job can reuse without asking the driver."""
    import torch

    where = torch.device(device)
    free, _total = torch.cuda.mem_get_info(where)
    reserved, allocated = torch.cuda.memory_reserved(where), torch.cuda.memory_allocated(where)
    return MemoryState(free=free, reusable=max(0, reserved - allocated), allocated=allocated, device=device)


def model_shape(pipe: Any) -> ModelShape:
    """What gpu_memory's estimate needs, read from the loaded pipeline: the real bytes of every
    parameter and buffer, and the widths and dtypes its activations scale with."""
    import itertools

    def size(module: Any) -> int:
        if module is None:
            return 0
        return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))

    unet, vae = pipe.unet.config, pipe.vae.config
    level = next((i for i, kind in enumerate(unet.down_block_types) if kind.startswith("CrossAttn")), 1)
    # Diffusers' UNet2DConditionModel reads SDXL's attention_head_dim as the number of heads.
    heads = unet.attention_head_dim[level] if isinstance(unet.attention_head_dim, list | tuple) \
        else unet.attention_head_dim
    widths = list(vae.block_out_channels)
    decode = {"float32": 4, "float16": 2, "bfloat16": 2}.get(vae_decode_dtype(pipe), 4)
    models = ("unet", "vae", "text_encoder", "text_encoder_2")
    return ModelShape(
        weights_bytes=sum(size(getattr(pipe, name, None)) for name in models),
        vae_weights_bytes=size(pipe.vae), latent_factor=2 ** (len(widths) - 1),
        unet_width=int(unet.block_out_channels[0]), unet_attention_heads=int(heads),
        unet_attention_downscale=4 ** level, vae_width=int(widths[1] if len(widths) > 1 else widths[0]),
        dtype_bytes=pipe.unet.dtype.itemsize, vae_dtype_bytes=decode)


def plan_memory(shape: ModelShape, state: MemoryState, request: Generation, wanted: int, attention: str,
                device_name: str) -> BatchPlan:
    """How many of ``wanted`` items a call fits ``state``; RunnerError gpu_out_of_memory_predicted,
    with the bytes in its details, when not even one does."""
    plan = plan_batch(shape, state, request.width, request.height, wanted,
                      guidance=request.guidance > 1, attention=attention, encode=request.mode != "generate")
    if plan.refused:
        raise RunnerError(
            refusal_message(plan, request.width, request.height, device_name),
            code="gpu_out_of_memory_predicted",
            details={"needed_bytes": plan.estimate.need, "available_bytes": state.available,
                     "free_bytes": state.free, "reusable_bytes": state.reusable,
                     "model_bytes": plan.estimate.weights, "predicted_peak_bytes": plan.predicted_peak,
                     "device": state.device, "width": request.width, "height": request.height, "batch": 1})
    return plan
