"""What a LoRA file was trained for, told from its safetensors header: its key layout and the
shapes of a few of its tensors.

Layouts (the ones Diffusers' ``load_lora_weights`` reads, see ``diffusers.loaders.
lora_conversion_utils``):

- kohya-ss: ``lora_unet_…``, ``lora_te1_…``/``lora_te2_…`` (``lora_te_…`` for SD 1.x and 2.x),
  each with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``;
- PEFT, as Diffusers saves it: ``unet.….lora_A.weight``/``lora_B.weight``, ``text_encoder.…``,
  ``text_encoder_2.…``;
- Diffusers' older attention-processor layout: ``….to_k_lora.down.weight``.

The base: Flux and SD 3 LoRAs adapt transformer blocks (``transformer.single_transformer_blocks``,
``lora_unet_double_blocks``…). For a UNet LoRA, the input width of a cross-attention key or value
projection is the text embedding's width: 2048 for SDXL (its two text encoders side by side),
768 for SD 1.x, 1024 for SD 2.x. A second text encoder's keys, or a transformer block index above 1
(SDXL stacks up to 10 per attention; SD 1.x and 2.x have one), say SDXL too.
"""

from __future__ import annotations

import re
from typing import Any

from dreamforge.registry.header import Header

SDXL, SD1, SD2 = "sdxl", "sd1", "sd2"
CROSS_WIDTHS = {2048: SDXL, 768: SD1, 1024: SD2}
FLUX_MARKS = ("single_transformer_blocks", "lora_unet_double_blocks", "lora_unet_single_blocks",
              "double_blocks.", "single_blocks.", "lora_transformer_single_transformer_blocks")
SD3_MARKS = ("context_block", "joint_blocks", "lora_transformer_transformer_blocks")
LYCORIS = re.compile(r"\.(hada_w[12]_[ab]|lokr_w[12](_[ab])?|oft_blocks|oft_diag)$")
# A cross-attention key or value projection's down (A) matrix, in each layout.
CROSS_DOWN = re.compile(r"attn2[._](processor[._])?to[._][kv]([._]lora)?[._](lora_down|lora_A|down)\.weight$")
DEEP_BLOCK = re.compile(r"transformer_blocks[._]([2-9])[._]")
SECOND_ENCODER = ("lora_te2_", "text_encoder_2.")
KOHYA = re.compile(r"^lora_(unet|te\d?)_")
PEFT = re.compile(r"\.lora_[AB]\.weight$")
OLD_DIFFUSERS = re.compile(r"_lora\.(up|down)\.weight$|\.lora\.(up|down)\.weight$")


def layout_of(keys: set[str]) -> str:
    if any(KOHYA.match(k) for k in keys):
        return "kohya"
    if any(PEFT.search(k) for k in keys):
        return "peft"
    if any(OLD_DIFFUSERS.search(k) for k in keys):
        return "diffusers"
    return "other"


def _cross_widths(header: Header) -> set[int]:
    return {t.shape[1] for k, t in header.tensors.items() if CROSS_DOWN.search(k) and len(t.shape) == 2}


def _targets(keys: set[str]) -> dict[str, int]:
    """How many layers each part of the model has adapted (down/A matrices)."""
    counts = {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}
    for key in keys:
        if not re.search(r"(lora_down|lora_A|lora\.down|_lora\.down)\.weight$", key):
            continue
        if key.startswith(("lora_te2_", "text_encoder_2.")):
            counts["text_encoder_2"] += 1
        elif key.startswith(("lora_te1_", "lora_te_", "text_encoder.")):
            counts["text_encoder"] += 1
        else:
            counts["unet"] += 1
    return {part: n for part, n in counts.items() if n}


def _rank(header: Header) -> int | None:
    ranks = {t.shape[0] for k, t in header.tensors.items()
             if re.search(r"(lora_down|lora_A|lora\.down)\.weight$", k) and t.shape}
    return max(ranks) if ranks else None


def classify_lora(header: Header) -> tuple[str | None, str, dict[str, Any]]:
    """(base or None, what it looks like, details). base is sdxl, sd1 or sd2; None for a LoRA
    DreamForge can't load (Flux, SD 3, LyCORIS, an unknown base)."""
    keys = set(header.tensors)
    layout = layout_of(keys)
    details: dict[str, Any] = {"layout": layout}
    if any(LYCORIS.search(k) for k in keys):
        return None, "a LyCORIS (LoHa, LoKr or OFT) file, which Diffusers' load_lora_weights can't load", details
    if any(mark in k for k in keys for mark in FLUX_MARKS):
        return None, "a LoRA for Flux", details
    if any(mark in k for k in keys for mark in SD3_MARKS) or any(k.startswith("transformer.") for k in keys):
        return None, "a LoRA for Stable Diffusion 3 or another transformer model", details
    details |= {"targets": _targets(keys), "rank": _rank(header)}
    widths = _cross_widths(header)
    bases = {CROSS_WIDTHS[w] for w in widths if w in CROSS_WIDTHS}
    if widths:
        details["cross_attention_width"] = max(widths)
    second_encoder = any(k.startswith(SECOND_ENCODER) for k in keys)
    if bases == {SDXL} or (not bases and (second_encoder or any(DEEP_BLOCK.search(k) for k in keys))):
        details["base"] = SDXL
        return SDXL, f"an SDXL LoRA ({layout} layout)", details
    if bases == {SD1}:
        return SD1, "a LoRA for Stable Diffusion 1.x (768-wide cross-attention)", details
    if bases == {SD2}:
        return SD2, "a LoRA for Stable Diffusion 2.x (1024-wide cross-attention)", details
    if widths:
        shown = ", ".join(str(w) for w in sorted(widths))
        return None, f"a LoRA for an unknown model (cross-attention {shown} wide)", details
    return None, "a LoRA for Stable Diffusion 1.x or 2.x", details
