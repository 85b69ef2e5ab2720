"""img2img, inpainting and LoRAs on the real SDXL runner code with the tiny random-weight model on
the CPU, in this process (the pipeline loaded once per module, driven by the real Executor, job
service and stores). Random weights draw nothing in particular, so these test what holds whatever
the model draws: reproducibility, the steps that run, the pixels kept, the LoRA's effect undone."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the diffusers extra is not installed")
pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
pytest.importorskip("peft", reason="Diffusers' LoRA loading needs peft")

from PIL import Image, ImageDraw  # noqa: E402

from dreamforge.execution import Executor  # noqa: E402
from dreamforge.runners.sdxl import SDXL  # noqa: E402
from dreamforge.schemas import parse_request  # noqa: E402
from dreamforge.service import JobService  # noqa: E402
from dreamforge.settings import Settings  # noqa: E402
from tests.test_sdxl_batches import InProcess  # noqa: E402
from tests.tiny_lora import write_tiny_lora  # noqa: E402

pytestmark = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on a shared small CPU make a tiny step many times slower (see test_sdxl_batches)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory) -> SDXL:
    folder, single = tiny_model
    sdxl = SDXL(Settings(generate_model_path=str(single), device="cpu",
                         data_dir=tmp_path_factory.mktemp("data"), model_config_dir=folder))
    sdxl.load()
    return sdxl


@pytest.fixture(scope="module")
def lora_file(model, tmp_path_factory) -> Path:
    """Written from the model's own layers before any LoRA is loaded into it."""
    return write_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-kohya.safetensors", model.pipe, "kohya")


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    for i in range(0, size[0], 8):  # some texture, so that kept pixels are not all alike
        draw.line((i, 0, size[0] - i, size[1]), fill=(i * 4 % 256, 255 - i * 3 % 256, 90))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def run(svc: JobService, model: SDXL, **fields) -> str:
    body = {"prompt": "a lighthouse in fog", "steps": 4, "seed": 7, **fields}
    job_id = svc.submit(parse_request(body)).view.id
    assert Executor(svc, InProcess(model), "worker:test:1:a").execute(job_id) == "succeeded", svc.get(job_id).error
    return job_id


def files(svc: JobService, job_id: str) -> list[bytes]:
    return [svc.artifact_bytes(a.s3_key) for a in svc.get(job_id).artifacts]


def rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def test_img2img_is_reproducible_follows_its_input_and_runs_strength_times_steps(df_env, model):
    svc = JobService.from_settings(Settings())
    red, blue = svc.upload_image(png((200, 30, 30))).sha256, svc.upload_image(png((30, 30, 200))).sha256
    plain = files(svc, run(svc, model, width=64, height=64))
    first = run(svc, model, type="img2img", init_image=red, strength=0.5)
    view = svc.get(first)
    # 4 steps at strength 0.5: Diffusers runs the last int(4 * 0.5) = 2 of the schedule.
    assert view.steps[0].name == "img2img" and view.steps[0].progress.model_dump() == {"current": 2, "total": 2}
    assert view.record is not None and view.record["inputs"]["init_image"]["sha256"] == red
    assert "/img2img/" in view.artifacts[0].s3_key and rgb(files(svc, first)[0]).size == (64, 64)
    assert files(svc, run(svc, model, type="img2img", init_image=red, strength=0.5)) == files(svc, first)
    assert files(svc, run(svc, model, type="img2img", init_image=blue, strength=0.5)) != files(svc, first)
    full = svc.get(run(svc, model, type="img2img", init_image=red, strength=1.0, count=2))
    assert full.steps[0].progress.model_dump() == {"current": 8, "total": 8} and full.record["batches"] == [2]
    # The img2img pipeline shares the loaded components and changes nothing of them.
    assert model.pipeline("img2img").unet is model.pipe.unet
    assert files(svc, run(svc, model, width=64, height=64)) == plain


def test_inpainting_leaves_the_pixels_outside_the_mask_exactly_as_they_were(df_env, model):
    svc = JobService.from_settings(Settings())
    source = png((120, 160, 40))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((20, 12, 52, 44), fill=255)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    init_id, mask_id = svc.upload_image(source).sha256, svc.upload_image(buf.getvalue()).sha256
    job_id = run(svc, model, type="inpaint", init_image=init_id, mask_image=mask_id, steps=3)
    view = svc.get(job_id)
    assert "/inpaint/" in view.artifacts[0].s3_key and view.steps[0].progress.total == 3
    assert view.record is not None and view.record["inputs"]["mask_image"]["sha256"] == mask_id
    before, after = rgb(source), rgb(files(svc, job_id)[0])
    kept = [xy for xy in ((x, y) for x in range(64) for y in range(64)) if mask.getpixel(xy) == 0]
    assert all(before.getpixel(xy) == after.getpixel(xy) for xy in kept)
    inside = [xy for xy in ((x, y) for x in range(64) for y in range(64)) if mask.getpixel(xy) == 255]
    assert any(before.getpixel(xy) != after.getpixel(xy) for xy in inside)


def test_a_lora_at_weight_0_is_the_base_at_1_is_not_and_unloading_restores_the_base(
        df_env, model, lora_file):
    svc = JobService.from_settings(Settings())
    record = svc.models.add_local(lora_file, name="tiny")
    size = {"width": 64, "height": 64}
    base = files(svc, run(svc, model, **size))[0]
    zero = run(svc, model, **size, loras=[{"name": "tiny", "weight": 0.0}])
    assert rgb(files(svc, zero)[0]).tobytes() == rgb(base).tobytes()
    one = run(svc, model, **size, loras=[{"name": "tiny", "weight": 1.0}])
    assert rgb(files(svc, one)[0]).tobytes() != rgb(base).tobytes()
    view = svc.get(one)
    assert view.record is not None
    assert view.record["loras"] == [{"name": "tiny", "sha256": record.sha256, "weight": 1.0}]
    with Image.open(io.BytesIO(files(svc, one)[0])) as image:
        text = image.info["parameters"]
    assert "<lora:tiny:1>" in text.splitlines()[0] and f'Lora hashes: "tiny: {record.sha256[:10]}"' in text
    assert model._loras  # kept loaded for the next job that uses it
    again = files(svc, run(svc, model, **size))[0]
    assert not model._loras and again == base  # the whole file: the same bytes as before any LoRA


@pytest.fixture(scope="module")
def peft_file(model, tmp_path_factory) -> Path:
    model.apply_loras(())  # from the model's own layers, whatever an earlier test left loaded
    return write_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-peft.safetensors", model.pipe, "peft", seed=1)


def test_two_loras_in_both_layouts_and_dropping_one_leaves_exactly_the_other(df_env, model, lora_file, peft_file):
    svc = JobService.from_settings(Settings())
    svc.models.add_local(lora_file, name="style-kohya")
    svc.models.add_local(peft_file, name="style.peft")  # a dot: adapter names are made safe for PEFT
    size = {"width": 64, "height": 64}
    both = run(svc, model, **size, loras=[{"name": "style-kohya", "weight": 1.0},
                                          {"name": "style.peft", "weight": 0.5}])
    assert len(model._loras) == 2
    dropped = files(svc, run(svc, model, **size, loras=[{"name": "style.peft", "weight": 0.5}]))[0]
    assert len(model._loras) == 1
    run(svc, model, **size)  # every LoRA out
    fresh = files(svc, run(svc, model, **size, loras=[{"name": "style.peft", "weight": 0.5}]))[0]
    assert dropped == fresh and dropped != files(svc, both)[0]
