"""Encoding a generated image, with the parameters that reproduce it embedded in the file."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

METADATA_KEY = "dreamforge"
EXIF_IMAGE_DESCRIPTION = 0x010E


def parameters_text(params: dict[str, Any]) -> str:
    """The A1111-style "parameters" line other SD tools read."""
    lines = [params["prompt"]]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    lines.append(f"Steps: {params['steps']}, CFG scale: {params['guidance']}, Seed: {params['seed']}, "
                 f"Size: {params['width']}x{params['height']}")
    return "\n".join(lines)


def encode(image: Image.Image, fmt: str, params: dict[str, Any]) -> bytes:
    meta = json.dumps(params, sort_keys=True, ensure_ascii=False)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        # iTXt (UTF-8) so that any prompt survives; "parameters" is what A1111 and ComfyUI read.
        info.add_itxt("parameters", parameters_text(params))
        info.add_itxt(METADATA_KEY, meta)
        image.save(buf, format="PNG", pnginfo=info, compress_level=4)
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
