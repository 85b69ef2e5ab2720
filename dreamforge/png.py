"""A fast PNG writer: each row "Up"-filtered by Pillow in C, deflated by ISA-L.

Pillow's PNG encoder picks a filter per row by trying all five, then deflates with the system's
zlib; at 1024x1024 that is 60-210 ms a picture (docs/measurements/png-encoders-cpu.log), all of it
after the GPU has finished, on the single job's critical path. One fixed filter and ISA-L's deflate
(python-isal: Intel's SIMD deflate, a stream any zlib inflates) take 8-25 ms, for files about the
size of Pillow's level 2-3: 10% larger than its level 4 on smooth and photo-like pictures, the same
on noise (benchmarks/png_levels.py). DF_PNG_ENCODER=pillow keeps the smaller, slower files.

The file is an ordinary PNG (signature, IHDR, iTXt, IDAT, IEND), read back by any decoder.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from isal import isal_zlib
from PIL import Image, ImageChops

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types by Pillow mode; other modes go through Pillow's encoder.
COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
FILTER_UP = b"\x02"
# IDAT data split into chunks of this size: decoders stream them, none needs one huge chunk.
IDAT_CHUNK_BYTES = 1 << 20


def supports(image: Image.Image) -> bool:
    return image.mode in COLOUR_TYPES


def isal_level(level: int) -> int:
    """zlib's 1-9 scale (DF_PNG_COMPRESS_LEVEL) onto ISA-L's 1-3: 1-3, 4-6, 7-9. ISA-L's level 0
    is left out: no faster here, and it grows incompressible pictures by a fifth."""
    return 1 + (level - 1) // 3


def deflate(data: bytes, level: int) -> bytes:
    """A zlib stream of ``data``: stored as it is at level 0, as zlib's level 0 does."""
    return zlib.compress(data, 0) if level == 0 else isal_zlib.compress(data, isal_level(level))


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data,
                     struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))))


def itxt(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk's data: UTF-8 text, no language tag (as PngInfo.add_itxt)."""
    return keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")


def _filtered_rows(image: Image.Image) -> bytes:
    """The image's scanlines, each led by filter type 2 ("Up": the byte minus the one above)."""
    width, height = image.size
    above = Image.new(image.mode, image.size)  # the first row's "above" is zeros, as PNG says
    if height > 1:
        above.paste(image.crop((0, 0, width, height - 1)), (0, 1))
    data = memoryview(ImageChops.subtract_modulo(image, above).tobytes())
    stride = len(data) // height
    return b"".join(part for y in range(height) for part in (FILTER_UP, data[y * stride:(y + 1) * stride]))


def encode(image: Image.Image, texts: Iterable[tuple[str, str]], level: int) -> bytes:
    """``image`` (mode L, RGB or RGBA) as PNG bytes with the ``texts`` as iTXt chunks.

    ``level`` is zlib's 0-9 (DF_PNG_COMPRESS_LEVEL): 0 stores, 1-9 map onto ISA-L's levels."""
    colour_type = COLOUR_TYPES[image.mode]
    width, height = image.size
    idat = memoryview(deflate(_filtered_rows(image), level))
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))]
    parts += [_chunk(b"iTXt", itxt(keyword, text)) for keyword, text in texts]
    parts += [_chunk(b"IDAT", idat[i:i + IDAT_CHUNK_BYTES]) for i in range(0, len(idat), IDAT_CHUNK_BYTES)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
