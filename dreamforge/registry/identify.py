"""What a model file or folder is, told from its safetensors header or its Diffusers configs,
never from its weights.

Single files are told apart by marker keys, the same ones Diffusers uses to pick a config
(``diffusers.loaders.single_file_utils.CHECKPOINT_KEY_NAMES`` and ``infer_diffusers_model_type``):
SDXL base carries the 10th block of its second (OpenCLIP) text encoder under
``conditioner.embedders.1``, the refiner carries that encoder alone under ``conditioner.embedders.0``,
SD 2.x has 1024-wide cross-attention, SD 1.x a twelfth output block. Diffusers folders say what
they are in ``model_index.json`` and ``unet/config.json``.

Only an SDXL base checkpoint is accepted as a model a job can run (kind ``sdxl_checkpoint``). A
LoRA made for SDXL, in the kohya or the PEFT/Diffusers key layout, is kind ``sdxl_lora`` (see
``registry/lora.py``); everything else is refused with a message that says what it looks like.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamforge.errors import ModelRejected
from dreamforge.registry.header import Header, read_header

CHECKPOINT = "sdxl_checkpoint"
LORA = "sdxl_lora"
KINDS = (CHECKPOINT, LORA)
SINGLE_FILE, DIFFUSERS = "single_file", "diffusers"

# Diffusers' CHECKPOINT_KEY_NAMES, the markers that matter here.
XL_BASE = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
XL_REFINER = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
V1 = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
V2 = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
INPAINTING = "model.diffusion_model.input_blocks.0.0.weight"
PLAYGROUND = "edm_mean"
UPSCALE = "model.diffusion_model.input_blocks.10.0.skip_connection.bias"
CONTROLNET = ("control_model.time_embed.0.weight", "controlnet_cond_embedding.conv_in.weight")
FLUX = ("double_blocks.0.img_attn.norm.key_norm.scale",
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale")
SD3 = ("joint_blocks.0.context_block.adaLN_modulation.1.bias",
       "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias")
SD1_TEXT = "cond_stage_model.transformer."
# The parts of an SGM-layout SDXL file, and what each is called in a message.
SDXL_PARTS = {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE",
              "conditioner.embedders.0.transformer.": "first text encoder"}
LORA_MARK = re.compile(r"(lora_(up|down|A|B)\b|\.lora\.|_lora\.(up|down)\.|^lora_(unet|te\d?)_|\.hada_w1_a|"
                       r"\.lokr_w1|\.alpha$)")
# Diffusers components that carry weights, and the files that hold them.
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASH_CHUNK = 8 * 1024 * 1024


@dataclass
class Identity:
    """What a model file or folder is. ``kind`` is None for what DreamForge can't use."""

    looks_like: str
    format: str
    kind: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _complete_sdxl(keys: set[str]) -> str | None:
    missing = [what for prefix, what in SDXL_PARTS.items() if not any(k.startswith(prefix) for k in keys)]
    return " and ".join(missing) if missing else None


def _lora(header: Header) -> Identity:
    """A LoRA: kind sdxl_lora when made for SDXL (dreamforge/registry/lora.py tells)."""
    from dreamforge.registry.lora import SDXL, classify_lora

    base, looks_like, details = classify_lora(header)
    return Identity(looks_like, SINGLE_FILE, LORA if base == SDXL else None, details)


def classify_keys(header: Header) -> Identity:
    """The first marker that matches, in the order Diffusers checks them (LoRAs, Flux and SD 3
    first: their keys never mix with the others')."""
    t = header.tensors
    keys = set(t)
    if any(LORA_MARK.search(k) for k in keys):
        return _lora(header)
    if any(k in keys for k in FLUX) or any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys):
        return Identity("a Flux model", SINGLE_FILE)
    if any(k in keys for k in SD3):
        return Identity("a Stable Diffusion 3 model", SINGLE_FILE)
    if INPAINTING in keys and len(t[INPAINTING].shape) > 1 and t[INPAINTING].shape[1] == 9:
        family = "SDXL" if XL_BASE in keys else "Stable Diffusion"
        return Identity(f"an {family} inpainting checkpoint (9 input channels)", SINGLE_FILE)
    if V2 in keys and t[V2].shape and t[V2].shape[-1] == 1024:
        return Identity("a Stable Diffusion 2.x checkpoint", SINGLE_FILE)
    if PLAYGROUND in keys:
        return Identity("a Playground v2.5 checkpoint (SDXL-shaped, but trained for an EDM scheduler)",
                        SINGLE_FILE)
    if XL_BASE in keys:
        missing = _complete_sdxl(keys)
        if missing:
            return Identity(f"an SDXL base checkpoint without its {missing}", SINGLE_FILE)
        return Identity("an SDXL base checkpoint", SINGLE_FILE, CHECKPOINT)
    if XL_REFINER in keys:
        return Identity("an SDXL refiner checkpoint (it refines a base model's latents; it can't "
                        "start an image from a prompt)", SINGLE_FILE)
    if UPSCALE in keys:
        return Identity("a Stable Diffusion upscaler", SINGLE_FILE)
    if any(k in keys for k in CONTROLNET):
        return Identity("a ControlNet", SINGLE_FILE)
    if V1 in keys or any(k.startswith(SD1_TEXT) for k in keys):
        return Identity("a Stable Diffusion 1.x checkpoint", SINGLE_FILE)
    return _component(keys, SINGLE_FILE)


def _component(keys: set[str], fmt: str) -> Identity:
    """A part of a model saved alone: a VAE, a UNet, a text encoder."""
    if all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model."))
           for k in keys) and any("decoder." in k for k in keys):
        return Identity("a VAE alone (no UNet or text encoders)", fmt)
    if any(k.startswith("model.diffusion_model.") for k in keys) or \
            ("conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys)):
        return Identity("a UNet alone (no VAE or text encoders)", fmt)
    if any("encoder.layers." in k or "transformer.resblocks." in k for k in keys):
        return Identity("a text encoder alone", fmt)
    return Identity("nothing DreamForge recognises as a Stable Diffusion model", fmt)


# -- Diffusers folders ------------------------------------------------------------------------------

def _json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _folder_invalid(folder, f"{path.relative_to(folder)} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _folder_invalid(folder, f"{path.relative_to(folder)} is not JSON") from None
    if not isinstance(data, dict):
        raise _folder_invalid(folder, f"{path.relative_to(folder)} is not a JSON object")
    return data


def _folder_invalid(folder: Path, why: str) -> ModelRejected:
    return ModelRejected(f"{folder.name} is not a usable Diffusers folder: {why}", code="model_invalid",
                         details={"file": folder.name, "reason": why})


def _present(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _check_weights(folder: Path, component: str) -> int:
    """Check every safetensors file of one component (a truncated shard is found here); returns
    how many weight files it has."""
    where = folder / component
    files = [p for p in where.glob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)] \
        if where.is_dir() else []
    if not files:
        raise _folder_invalid(folder, f"{component}/ has no weights (.safetensors or .bin)")
    for path in files:
        if path.suffix == ".safetensors":
            read_header(path)
    return len(files)


def classify_folder(folder: Path) -> Identity:
    if not (folder / "model_index.json").is_file():
        config = folder / "config.json"
        if config.is_file():
            name = str(_json(config, folder).get("_class_name", "a model component"))
            what = {"AutoencoderKL": "a VAE alone (no UNet or text encoders)",
                    "UNet2DConditionModel": "a UNet alone (no VAE or text encoders)"}.get(name)
            return Identity(what or f"a Diffusers {name[:80]} alone", DIFFUSERS)
        raise _folder_invalid(folder, "it has no model_index.json")
    index = _json(folder / "model_index.json", folder)
    pipeline = str(index.get("_class_name", "?"))[:80]
    unet = _json(folder / "unet" / "config.json", folder) if _present(index, "unet") else {}
    if pipeline.startswith("Flux"):
        return Identity("a Flux model", DIFFUSERS)
    if pipeline.startswith("StableDiffusion3"):
        return Identity("a Stable Diffusion 3 model", DIFFUSERS)
    if pipeline.startswith("StableDiffusionXL"):
        if unet.get("in_channels") == 9 or "Inpaint" in pipeline:
            return Identity("an SDXL inpainting model", DIFFUSERS)
        if not _present(index, "text_encoder") or index.get("requires_aesthetics_score"):
            return Identity("an SDXL refiner (it refines a base model's latents; it can't start an "
                            "image from a prompt)", DIFFUSERS)
        if unet.get("addition_embed_type") != "text_time" or not _present(index, "text_encoder_2"):
            return Identity(f"a {pipeline} whose UNet is not SDXL base's", DIFFUSERS)
        files = sum(_check_weights(folder, c) for c in WEIGHTED)
        return Identity("an SDXL base model", DIFFUSERS, CHECKPOINT, {"weight_files": files})
    if pipeline.startswith("StableDiffusion"):
        width = unet.get("cross_attention_dim")
        version = "2.x" if width == 1024 else "1.x" if width == 768 else "1.x or 2.x"
        return Identity(f"a Stable Diffusion {version} model", DIFFUSERS)
    return Identity(f"a Diffusers {pipeline} model, not SDXL base", DIFFUSERS)


def identify(path: Path) -> Identity:
    """What ``path`` (a .safetensors file or a Diffusers folder) is; ModelRejected (code
    model_invalid) when it is truncated or corrupt."""
    if path.is_dir():
        return classify_folder(path)
    if not path.is_file():
        raise ModelRejected(f"{path} does not exist", code="model_invalid", details={"file": path.name})
    header = read_header(path)
    identity = classify_keys(header)
    identity.details = {**identity.details, "tensors": len(header.tensors), "dtypes": header.dtypes(),
                        **({"metadata": header.metadata} if header.metadata else {})}
    return identity


def require(identity: Identity, path: Path, kinds: tuple[str, ...] = (CHECKPOINT,)) -> Identity:
    """The identity, if it is one of ``kinds``; else ModelRejected (not_sdxl) saying what it is."""
    if identity.kind in kinds:
        return identity
    wanted = ("an SDXL base checkpoint (a single .safetensors file or a Diffusers folder)"
              + (" or an SDXL LoRA (.safetensors)" if LORA in kinds else ""))
    raise ModelRejected(f"{path.name} looks like {identity.looks_like}, not {wanted}", code="not_sdxl",
                        details={"file": path.name, "looks_like": identity.looks_like})


# -- hashing ----------------------------------------------------------------------------------------

def model_files(folder: Path) -> Iterator[Path]:
    """A Diffusers folder's files, in a stable order; hidden files left out."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path)) if path.is_dir() else path.stat().st_size


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """A file's sha256; for a Diffusers folder, the sha256 of the lines ``<sha256>  <path>`` of
    its files (``sha256sum``'s output, sorted by path), so one changed file changes it."""
    if not path.is_dir():
        return sha256_file(path, on_bytes)
    lines = "".join(f"{sha256_file(p, on_bytes)}  {p.relative_to(path).as_posix()}\n"
                    for p in model_files(path))
    return hashlib.sha256(lines.encode()).hexdigest()
