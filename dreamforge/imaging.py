"""Encoding a generated image, with the parameters that reproduce it embedded in the file."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dreamforge import png

METADATA_KEY = "dreamforge"
EXIF_IMAGE_DESCRIPTION = 0x010E


def parameters_text(params: dict[str, Any]) -> str:
    """The A1111-style "parameters" text other SD tools read, fields in A1111's order. ``params``
    is one item's metadata (see ``item_metadata``): its own seed, and the job's record."""
    from dreamforge.schedulers import a1111_fields

    record = params.get("record") or {}
    model = record.get("model") or {}
    scheduler = (record.get("scheduler") or {}).get("name") or params.get("scheduler")
    loras = params.get("loras") or []
    # A1111 writes the LoRAs it applied into the prompt line as <lora:name:weight>.
    lines = [params["prompt"] + "".join(f" <lora:{lora['name']}:{_number(lora['weight'])}>" for lora in loras)]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields: list[tuple[str, Any]] = [("Steps", params["steps"]), *a1111_fields(scheduler),
                                     ("CFG scale", params["guidance"]), ("Seed", params["seed"]),
                                     ("Size", f"{params['width']}x{params['height']}")]
    if model.get("sha256"):
        fields.append(("Model hash", model["sha256"][:10]))  # A1111's short hash: sha256's first 10
    if model.get("name"):
        fields.append(("Model", _field_value(model["name"])))
    if params.get("mode") in ("img2img", "inpaint") and params.get("strength") is not None:
        fields.append(("Denoising strength", _number(params["strength"])))
    hashes = [f"{lora['name']}: {lora['sha256'][:10]}" for lora in loras if lora.get("sha256")]
    if hashes:
        fields.append(("Lora hashes", json.dumps(", ".join(hashes), ensure_ascii=False)))
    if params.get("count", 1) > 1:
        fields += [("Batch size", params["count"]), ("Batch pos", params.get("item_index", 0))]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def _number(value: float) -> str:
    """0.8, not 0.80000001; 1, not 1.0 (as A1111 writes weights)."""
    return f"{value:g}"


def _field_value(text: str) -> str:
    """A value A1111's parser reads back whole: quoted when it holds a comma, colon or quote."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def item_metadata(params: dict[str, Any], item: int, seed: int, runner: str,
                  record: dict[str, Any]) -> dict[str, Any]:
    """What one image carries about itself: the job's parameters with the item's own seed and
    index, and the job's record. Nothing about when or where it ran (no job id, no time), so a
    rerun on the same machine and model writes the same bytes."""
    return {**params, "seed": seed, "item_index": item, "runner": runner, "record": record}


# zlib level 4: within 1.07-1.23x of level 9's size at a tenth of its time on 1024x1024 pictures
# (benchmarks/png_levels.py, docs/measurements/png-levels-cpu.log); DF_PNG_COMPRESS_LEVEL.
PNG_COMPRESS_LEVEL = 4


def encode(image: Image.Image, fmt: str, params: dict[str, Any],
           png_compress_level: int = PNG_COMPRESS_LEVEL, png_encoder: str = "isal") -> bytes:
    meta = json.dumps(params, sort_keys=True, ensure_ascii=False)
    buf = io.BytesIO()
    if fmt == "png":
        # iTXt (UTF-8) so that any prompt survives; "parameters" is what A1111 and ComfyUI read.
        texts = (("parameters", parameters_text(params)), (METADATA_KEY, meta))
        if png_encoder == "isal" and png.supports(image):
            return png.encode(image, texts, png_compress_level)
        info = PngInfo()
        for keyword, text in texts:
            info.add_itxt(keyword, text)
        image.save(buf, format="PNG", pnginfo=info, compress_level=png_compress_level)
    else:
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = meta
        if fmt == "jpeg":
            image.convert("RGB").save(buf, format="JPEG", quality=92, exif=exif)
        else:
            image.save(buf, format="WEBP", quality=92, exif=exif)
    return buf.getvalue()


def read_parameters(data: bytes) -> dict[str, Any] | None:
    """The generation parameters embedded by ``encode``, or None."""
    with Image.open(io.BytesIO(data)) as img:
        text = img.info.get(METADATA_KEY) if img.format == "PNG" else \
            img.getexif().get(EXIF_IMAGE_DESCRIPTION)
    return json.loads(text) if text else None


def thumbnail(data: bytes, size: int) -> bytes:
    """A small WebP of an encoded image: at most ``size`` pixels on its longer side."""
    image = Image.open(io.BytesIO(data))
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()
