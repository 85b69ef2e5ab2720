"""The fast PNG writer (dreamforge/png.py) against Pillow's decoder: the same pixels, the same
text chunks, CRCs that check, for every mode it writes and the sizes that stress its row and
chunk arithmetic; other modes go through Pillow's own encoder."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from PIL import Image

from dreamforge import imaging, png

PROMPT = 'a "quoted", multi-line\nprompt: 日本の森 🌲, 100% <lora:x:1>'


def picture(mode: str, width: int, height: int, noise: bool) -> Image.Image:
    if noise:
        return Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge(mode, [gradient.rotate(90 * i) for i in range(len(mode))]) if len(mode) > 1 else gradient


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each CRC checked."""
    assert data[:8] == png.SIGNATURE
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        at += 12 + length
    return found


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (3, 5), (64, 64), (1000, 7), (7, 300)])
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("level", [0, 4, 9])
def test_pillow_reads_back_the_same_pixels_and_texts(mode, width, height, noise, level):
    image = picture(mode, width, height, noise)
    data = png.encode(image, [("parameters", PROMPT), ("dreamforge", '{"seed": 7}')], level)
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"iTXt") == 2
    with Image.open(io.BytesIO(data)) as back:
        back.load()
        assert (back.mode, back.size) == (mode, (width, height))
        assert back.tobytes() == image.tobytes()
        assert back.info["parameters"] == PROMPT and back.info["dreamforge"] == '{"seed": 7}'


def test_a_large_picture_spreads_its_data_over_several_idat_chunks():
    image = picture("RGB", 1024, 512, noise=True)  # 1.5 MiB that deflate can't shrink
    data = png.encode(image, [], 4)
    idats = [body for kind, body in chunks(data) if kind == b"IDAT"]
    assert len(idats) == 2 and len(idats[0]) == png.IDAT_CHUNK_BYTES
    assert zlib.decompress(b"".join(idats))[:1] == png.FILTER_UP
    with Image.open(io.BytesIO(data)) as back:
        assert back.tobytes() == image.tobytes()


def test_higher_levels_are_never_larger_on_a_smooth_picture():
    image = picture("RGB", 512, 512, noise=False)
    sizes = [len(png.encode(image, [], level)) for level in (0, 1, 4, 7)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > 512 * 512 * 3  # level 0 stores the rows as they are
    assert [png.isal_level(level) for level in range(1, 10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("mode", ["P", "I;16", "LA", "1"])
def test_modes_it_does_not_write_go_through_pillow(mode):
    image = Image.new(mode, (16, 16))
    assert not png.supports(image)
    params = {"prompt": "p", "steps": 1, "guidance": 1.0, "seed": 1, "width": 16, "height": 16}
    data = imaging.encode(image, "png", params)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == mode and back.tobytes() == image.tobytes()
    assert imaging.read_parameters(data) == params


def test_both_encoders_embed_the_same_metadata():
    image = picture("RGB", 64, 64, noise=False)
    params = {"prompt": PROMPT, "negative_prompt": None, "steps": 3, "guidance": 7.0, "seed": 5,
              "width": 64, "height": 64}
    fast = imaging.encode(image, "png", params, 4, "isal")
    slow = imaging.encode(image, "png", params, 4, "pillow")
    assert fast != slow
    for data in (fast, slow):
        with Image.open(io.BytesIO(data)) as back:
            assert back.tobytes() == image.tobytes()
            assert back.info["parameters"] == imaging.parameters_text(params)
        assert imaging.read_parameters(data) == params
