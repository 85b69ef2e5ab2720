"""Tiny LoRAs for the tiny SDXL of tests/tiny_sdxl.py, in the two key layouts people share them in,
with tensor shapes taken from the pipeline's own layers, so Diffusers' ``load_lora_weights``
loads them.

- ``kohya``: what kohya-ss sd-scripts writes for SDXL. UNet keys in the original (SGM) block
  names, ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``, text encoders as
  ``lora_te1_…`` and ``lora_te2_…``; ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``.
- ``peft``: what Diffusers' ``save_lora_weights`` writes: ``unet.<module>.lora_A.weight`` and
  ``lora_B.weight``, ``text_encoder.…`` and ``text_encoder_2.…``.

Every attention projection of the UNet (self and cross) and of both text encoders is adapted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

UNET_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
               "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
COMPONENTS = {"unet": UNET_LAYERS, "text_encoder": TEXT_LAYERS, "text_encoder_2": TEXT_LAYERS}
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def lora_targets(pipe: Any) -> dict[str, dict[str, tuple[int, int]]]:
    """component → module name → (in_features, out_features) of each linear layer a LoRA adapts."""
    targets: dict[str, dict[str, tuple[int, int]]] = {}
    for component, layers in COMPONENTS.items():
        model = getattr(pipe, component)
        targets[component] = {name: (module.in_features, module.out_features)
                              for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and name.endswith(layers)}
    return targets


def _sgm_names(pipe: Any) -> dict[str, str]:
    """Diffusers UNet module name → its name in the original SGM layout (kohya's names)."""
    from dreamforge.runners.sgm_layout import UNET, unet_to_sgm

    state = {name: torch.empty(0) for name, _ in pipe.unet.named_parameters()}
    by_tensor = {id(t): name for name, t in state.items()}
    sgm = unet_to_sgm(state, dict(pipe.unet.config))
    names = {}
    for key, tensor in sgm.items():
        diffusers_key = by_tensor.get(id(tensor))
        if diffusers_key is not None and diffusers_key.endswith(".weight"):
            names[diffusers_key[: -len(".weight")]] = key[len(UNET):-len(".weight")]
    return names


def lora_tensors(pipe: Any, layout: str = "kohya", rank: int = 2, seed: int = 0,
                 components: tuple[str, ...] = tuple(COMPONENTS)) -> dict[str, torch.Tensor]:
    """Random LoRA weights for the pipeline's attention layers, large enough to change its output."""
    if layout not in ("kohya", "peft"):
        raise ValueError(f"layout is kohya or peft, not {layout!r}")
    generator = torch.Generator().manual_seed(seed)
    sgm = _sgm_names(pipe) if layout == "kohya" else {}
    tensors: dict[str, torch.Tensor] = {}
    for component, modules in lora_targets(pipe).items():
        if component not in components:
            continue
        for name, (n_in, n_out) in modules.items():
            down = torch.randn(rank, n_in, generator=generator) * 0.5
            up = torch.randn(n_out, rank, generator=generator) * 0.5
            if layout == "kohya":
                base = KOHYA_PREFIX[component] + (sgm[name] if component == "unet" else name).replace(".", "_")
                tensors |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                            f"{base}.alpha": torch.tensor(float(rank))}
            else:
                tensors |= {f"{component}.{name}.lora_A.weight": down, f"{component}.{name}.lora_B.weight": up}
    return tensors


def write_tiny_lora(path: Path, pipe: Any, layout: str = "kohya", **options: Any) -> Path:
    """A .safetensors LoRA for ``pipe`` (the tiny SDXL) in ``layout`` (kohya or peft)."""
    from safetensors.torch import save_file

    tensors = lora_tensors(pipe, layout, **options)
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})
    return path
