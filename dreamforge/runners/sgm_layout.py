"""Diffusers' SDXL layout → the original (SGM/LDM) single-file layout that civitai checkpoints use.

Diffusers converts that layout into its own when loading a single file, but ships no way back;
this is the inverse, written from diffusers' own conversion rules and checked by a round trip
through them (tests/test_sdxl.py). Used to make test checkpoints, and by anyone who wants to export
a Diffusers folder as one .safetensors file.
"""

from __future__ import annotations

from typing import Any

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT_ENCODER = "conditioner.embedders.0.transformer."
TEXT_ENCODER_2 = "conditioner.embedders.1.model."

RESNET_RENAMES = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                  ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."),
                  ("conv_shortcut.", "skip_connection.")]
VAE_ATTENTION_RENAMES = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")]


def _rename(key: str, prefixes: list[tuple[str, str]], what: str) -> tuple[str, str]:
    for diffusers_prefix, sgm_prefix in prefixes:
        if key.startswith(diffusers_prefix):
            return sgm_prefix, key[len(diffusers_prefix):]
    raise KeyError(f"no original-layout name for {what} key {key!r}")


def unet_to_sgm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    per_block = config["layers_per_block"]
    blocks = len(config["block_out_channels"])
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(blocks):
        for j in range(per_block):
            n = (per_block + 1) * i + j + 1
            prefixes += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0."),
                         (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")]
        for j in range(per_block + 1):
            n = (per_block + 1) * i + j
            prefixes += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0."),
                         (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")]
        if i < blocks - 1:
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            prefixes += [(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per_block + 1) * (i + 1)}.0.op."),
                         (f"up_blocks.{i}.upsamplers.0.",
                          f"output_blocks.{(per_block + 1) * i + per_block}.{2 if has_attention else 1}.")]
    out = {}
    for key, value in state.items():
        sgm_prefix, rest = _rename(key, prefixes, "UNet")
        if ".resnets." in key or key.startswith("mid_block.resnets"):
            for old, new in RESNET_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
        out[UNET + sgm_prefix + rest] = value
    return out


def vae_to_sgm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    blocks = len(config["block_out_channels"])
    prefixes = []
    for side in ("encoder", "decoder"):
        prefixes += [(f"{side}.conv_norm_out.", f"{side}.norm_out."),
                     (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
                     (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
                     (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")]
    for i in range(blocks):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                     (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                     (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block."),
                     (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")]
    prefixes += [("", "")]  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
    out = {}
    for key, value in state.items():
        sgm_prefix, rest = _rename(key, prefixes, "VAE")
        if ".attentions." in key:
            for old, new in VAE_ATTENTION_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            if value.ndim == 2:  # linear in Diffusers, 1x1 convolution in the original
                value = value[:, :, None, None]
        rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        out[VAE + sgm_prefix + rest] = value
    return out


def _strip_text_model(state: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 dropped the "text_model." prefix from CLIP's state-dict keys; older ones had it.
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}


def text_encoder_to_sgm(state: dict[str, Any]) -> dict[str, Any]:
    return {f"{TEXT_ENCODER}text_model.{k}": v for k, v in _strip_text_model(state).items()
            if not k.endswith("position_ids")}


def text_encoder_2_to_sgm(state: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection → open_clip's text tower (q, k, v fused into in_proj)."""
    state = _strip_text_model(state)
    out = {TEXT_ENCODER_2 + "token_embedding.weight": state["embeddings.token_embedding.weight"],
           TEXT_ENCODER_2 + "positional_embedding": state["embeddings.position_embedding.weight"],
           TEXT_ENCODER_2 + "ln_final.weight": state["final_layer_norm.weight"],
           TEXT_ENCODER_2 + "ln_final.bias": state["final_layer_norm.bias"],
           TEXT_ENCODER_2 + "text_projection": state["text_projection.weight"].T.contiguous()}
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{TEXT_ENCODER_2}transformer.resblocks.{i}."
        for old, new in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
            for p in ("weight", "bias"):
                out[f"{dst}{new}.{p}"] = state[f"{src}{old}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(
                [state[f"{src}self_attn.{x}_proj.{p}"] for x in ("q", "k", "v")], dim=0)
    return out


def pipeline_to_sgm(pipe: Any) -> dict[str, Any]:
    """One state dict in the original SDXL single-file layout, from a StableDiffusionXLPipeline."""
    return {**unet_to_sgm(pipe.unet.state_dict(), dict(pipe.unet.config)),
            **vae_to_sgm(pipe.vae.state_dict(), dict(pipe.vae.config)),
            **text_encoder_to_sgm(pipe.text_encoder.state_dict()),
            **text_encoder_2_to_sgm(pipe.text_encoder_2.state_dict())}
