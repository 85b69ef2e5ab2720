"""LoRAs in the registry (issue 19): told from their safetensors header in the kohya and the
PEFT/Diffusers key layouts, SDXL ones taken (kind sdxl_lora), others refused saying what they
look like; a LoRA's name and a checkpoint's never stand in for each other. The tiny LoRAs that
tests/tiny_lora.py writes really load into the tiny SDXL with Diffusers' load_lora_weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamforge.errors import ModelNotFound, ModelRejected
from dreamforge.registry import identify as ident
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.test_models import hand_made_sdxl, write_safetensors

XL_CROSS = "input_blocks_4_1_transformer_blocks_0_attn2_to_k"
KOHYA_SDXL = {f"lora_unet_{XL_CROSS}.lora_down.weight": [4, 2048], f"lora_unet_{XL_CROSS}.lora_up.weight": [640, 4],
              f"lora_unet_{XL_CROSS}.alpha": [],
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768],
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [768, 4],
              "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 1280],
              "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [1280, 4]}
PEFT_CROSS = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
OLD_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
PEFT_SDXL = {f"unet.{PEFT_CROSS}.lora_A.weight": [8, 2048], f"unet.{PEFT_CROSS}.lora_B.weight": [640, 8],
             "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight": [8, 1280],
             "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight": [1280, 8]}
LORAS: dict[str, tuple[dict[str, list[int]], str, str | None]] = {
    "sdxl-kohya": (KOHYA_SDXL, "an SDXL LoRA (kohya layout)", ident.LORA),
    "sdxl-peft": (PEFT_SDXL, "an SDXL LoRA (peft layout)", ident.LORA),
    "sdxl-unet-only": ({f"unet.{PEFT_CROSS}.lora_A.weight": [4, 2048], f"unet.{PEFT_CROSS}.lora_B.weight": [640, 4]},
                       "an SDXL LoRA", ident.LORA),
    "sdxl-old-diffusers": ({f"unet.{OLD_ATTN}.processor.to_k_lora.down.weight": [4, 2048],
                            f"unet.{OLD_ATTN}.processor.to_k_lora.up.weight": [640, 4]},
                           "an SDXL LoRA (diffusers layout)", ident.LORA),
    "sd15-kohya": ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768],
                    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 4],
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768]},
                   "a LoRA for Stable Diffusion 1.x", None),
    "sd2-peft": ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": [4, 1024],
                  "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight": [320, 4]},
                 "a LoRA for Stable Diffusion 2.x", None),
    "flux-peft": ({"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": [4, 3072],
                   "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": [3072, 4]},
                  "a LoRA for Flux", None),
    "flux-kohya": ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [4, 3072],
                    "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": [9216, 4]},
                   "a LoRA for Flux", None),
    "sd3-peft": ({"transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight": [4, 1536]},
                 "a LoRA for Stable Diffusion 3", None),
    "loha": ({f"lora_unet_{XL_CROSS}.hada_w1_a": [2048, 4], f"lora_unet_{XL_CROSS}.hada_w1_b": [4, 640]},
             "LyCORIS", None),
}


@pytest.mark.parametrize("layout", LORAS)
def test_each_lora_layout_and_base_is_told_from_its_header(tmp_path, layout):
    shapes, looks_like, kind = LORAS[layout]
    path = write_safetensors(tmp_path / f"{layout}.safetensors", shapes)
    identity = ident.identify(path)
    assert looks_like in identity.looks_like and identity.kind == kind
    if kind == ident.LORA:
        assert identity.details["base"] == "sdxl"
        assert ident.require(identity, path, ident.KINDS) is identity
    with pytest.raises(ModelRejected) as refused:
        ident.require(identity, path)  # a checkpoint's place takes no LoRA
    assert refused.value.code == "not_sdxl"
    if kind is None:
        with pytest.raises(ModelRejected) as refused:
            ident.require(identity, path, ident.KINDS)
        assert looks_like in refused.value.message and "SDXL LoRA" in refused.value.message


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobService]:
    for name in list(os.environ):
        if name.startswith("DF_"):
            monkeypatch.delenv(name)
    for name, value in {"DF_DATA_DIR": str(tmp_path / "data"), "DF_MODELS_ROOT": str(tmp_path / "models"),
                        "DF_FAKE_RUNNER": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    svc = JobService.from_settings(Settings())
    yield svc
    svc.close()


def test_loras_are_registered_and_never_stand_in_for_checkpoints(service, tmp_path):
    registry = service.models
    lora = registry.add_local(write_safetensors(tmp_path / "detail-xl.safetensors", KOHYA_SDXL))
    assert (lora.name, lora.kind, lora.format) == ("detail-xl", ident.LORA, ident.SINGLE_FILE)
    assert lora.sha256 == ident.sha256_file(tmp_path / "detail-xl.safetensors")
    assert lora.details["layout"] == "kohya" and lora.details["targets"] == {
        "unet": 1, "text_encoder": 1, "text_encoder_2": 1}
    base = registry.add_local(hand_made_sdxl(tmp_path / "base.safetensors"))
    assert registry.resolve_lora("detail-xl") == lora
    assert registry.find("detail-xl") == lora
    with pytest.raises(ModelNotFound) as unknown:
        registry.resolve_lora("nope")
    assert unknown.value.code == "unknown_model"
    with pytest.raises(ModelRejected) as wrong:
        registry.resolve_lora("base")
    assert wrong.value.code == "not_a_lora" and wrong.value.message == "base is a checkpoint, not a LoRA"
    with pytest.raises(ModelRejected) as wrong:
        registry.resolve("detail-xl")
    assert wrong.value.code == "not_a_checkpoint" and "detail-xl is a LoRA, not a checkpoint" in wrong.value.message
    assert registry.resolve("base") == base
    with pytest.raises(ModelRejected):
        registry.set_default("detail-xl")
    with pytest.raises(ModelRejected):
        registry.add_local(write_safetensors(tmp_path / "other.safetensors", PEFT_SDXL), make_default=True)
    assert [r.name for r in registry.all()] == ["base", "detail-xl"]
    with pytest.raises(ModelRejected) as refused:
        registry.add_local(write_safetensors(tmp_path / "sd15.safetensors", LORAS["sd15-kohya"][0]))
    assert refused.value.code == "not_sdxl" and "a LoRA for Stable Diffusion 1.x" in refused.value.message


def test_df_models_add_and_list_show_a_lora(service, tmp_path):
    from dreamforge.cli.main import app

    runner = CliRunner()
    added = runner.invoke(app, ["models", "add", str(write_safetensors(tmp_path / "style.safetensors", PEFT_SDXL))])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "style" in listed.output and "sdxl_lora" in listed.output
    flux = runner.invoke(app, ["models", "add", str(write_safetensors(tmp_path / "flux.safetensors",
                                                                        LORAS["flux-peft"][0]))])
    assert flux.exit_code == 2 and "a LoRA for Flux" in flux.output
    shown = runner.invoke(app, ["models", "show", "style", "--json"])
    assert shown.exit_code == 0 and '"kind": "sdxl_lora"' in shown.output


@pytest.fixture(scope="module")
def tiny_pipe(config_dir):
    pytest.importorskip("peft", reason="Diffusers' LoRA loading needs peft")
    from tests.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(config_dir)


def _outputs(pipe):
    """The UNet's and both text encoders' outputs on fixed inputs: what a LoRA changes."""
    import torch

    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, pipe.unet.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=generator),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    ids = torch.tensor([[0, 320, 1125, 2]])
    with torch.no_grad():
        return (pipe.unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample,
                pipe.text_encoder(ids).last_hidden_state, pipe.text_encoder_2(ids).last_hidden_state)


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_tiny_loras_in_both_layouts_are_sdxl_loras_that_diffusers_loads(tiny_pipe, tmp_path, layout):
    import torch
    from peft.tuners.lora import LoraLayer

    from tests.tiny_lora import lora_targets, write_tiny_lora

    path = write_tiny_lora(tmp_path / f"tiny-{layout}.safetensors", tiny_pipe, layout)
    identity = ident.identify(path)
    assert identity.kind == ident.LORA and identity.details["layout"] == layout
    targets = lora_targets(tiny_pipe)
    assert identity.details["targets"] == {part: len(names) for part, names in targets.items()}
    base = _outputs(tiny_pipe)
    tiny_pipe.load_lora_weights(str(path), adapter_name=layout)
    try:
        for part, names in targets.items():
            adapted = [m for m in getattr(tiny_pipe, part).modules() if isinstance(m, LoraLayer)]
            assert len(adapted) == len(names), part  # every layer of the file found its place
        tiny_pipe.set_adapters([layout], [0.0])
        assert all(torch.equal(a, b) for a, b in zip(_outputs(tiny_pipe), base, strict=True))
        tiny_pipe.set_adapters([layout], [1.0])
        assert not any(torch.equal(a, b) for a, b in zip(_outputs(tiny_pipe), base, strict=True))
    finally:
        tiny_pipe.unload_lora_weights()
    assert all(torch.equal(a, b) for a, b in zip(_outputs(tiny_pipe), base, strict=True))


def test_a_job_naming_a_lora_as_its_model_is_refused_at_submit(service, tmp_path):
    from dreamforge.errors import InvalidRequest
    from dreamforge.schemas import parse_request

    service.models.add_local(write_safetensors(tmp_path / "style.safetensors", PEFT_SDXL))
    with pytest.raises(InvalidRequest) as refused:
        service.submit(parse_request({"prompt": "p", "width": 64, "height": 64, "steps": 2, "model": "style"}))
    assert refused.value.code == "not_a_checkpoint" and refused.value.details[0]["field"] == "model"
    assert service.list_jobs() == []
