"""A tiny random-weight SDXL pipeline, built in code: same architecture family as SDXL base (two
text encoders of different widths, text_time conditioning), a few MB, under a second per image on
a CPU. Saved as a Diffusers folder and as a single-file checkpoint in the original layout."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_sdxl(config_dir: Path):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from dreamforge.runners.model_config import use_open_clip_padding

    torch.manual_seed(0)
    te1_width, te2_width, time_dim = 32, 48, 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=te2_width + 6 * time_dim,
        cross_attention_dim=te1_width + te2_width, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=64, force_upcast=True,
                        scaling_factor=0.13025)
    common = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=49408,
                  max_position_embeddings=77, layer_norm_eps=1e-5)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=te1_width, intermediate_size=64, num_attention_heads=4,
                                       num_hidden_layers=2, hidden_act="quick_gelu", projection_dim=te1_width,
                                       **common))
    # 10+ layers so that diffusers recognises a single file of it as SDXL base.
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=te2_width, intermediate_size=64,
                                                     num_attention_heads=4, num_hidden_layers=10,
                                                     hidden_act="gelu", projection_dim=te2_width, **common))
    scheduler = EulerDiscreteScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)
    tok1 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer_2", local_files_only=True)
    use_open_clip_padding(tok2)
    for module in (unet, vae, te1, te2):
        module.eval()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                     tokenizer_2=tok2, unet=unet, scheduler=scheduler)


def save_tiny_sdxl(root: Path, config_dir: Path) -> tuple[Path, Path]:
    """(Diffusers folder, single .safetensors file in the original SGM layout) of one tiny model."""
    from safetensors.torch import save_file

    from dreamforge.runners.sgm_layout import pipeline_to_sgm

    pipe = build_tiny_sdxl(config_dir)
    folder = root / "tiny-sdxl"
    pipe.save_pretrained(folder)
    single = root / "tiny-sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in pipeline_to_sgm(pipe).items()}, str(single))
    return folder, single
