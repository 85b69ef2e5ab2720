"""PNG encoding: time and size at each DF_PNG_COMPRESS_LEVEL for a 1024x1024 image, with each
DF_PNG_ENCODER (`isal`: dreamforge/png.py; `pillow`: Pillow's encoder, optimize off), on the kinds
of picture a worker encodes, through the worker's own ``imaging.encode`` (metadata included).
Prints a table; nothing is asserted. The size column is against Pillow's level 9 on that picture.

    PYTHONPATH=. python benchmarks/png_levels.py [--size 1024] [--repeats 3] [--image PATH ...]
        [--encoders isal,pillow] [--levels 0,1,2,...]

Kinds measured without a model: `smooth` (the fake runner's picture: gradients and soft shapes, the
closest stand-in for a real model's output available here), `photo-noise` (smooth plus mild grain,
as a real photo-like render carries) and `noise` (uniform random pixels: what a random-weight SDXL
gives, and the worst case). Images a real model made can be added with --image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from PIL import Image

from dreamforge import imaging
from dreamforge.runners import Generation
from dreamforge.runners.fake import FakeRunner


def pictures(size: int, extra: list[Path]) -> dict[str, Image.Image]:
    request = Generation(prompt="an old-growth forest at dawn", negative_prompt=None, width=size,
                         height=size, steps=30, guidance=7.0, seed=7)
    smooth = FakeRunner().generate(request, lambda current, total: None).images[0].image
    grain = Image.effect_noise((size, size), 12).convert("RGB")
    found = {"smooth": smooth, "photo-noise": Image.blend(smooth, grain, 0.08),
             "noise": Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))}
    for path in extra:
        with Image.open(path) as image:
            found[path.name] = image.convert("RGB").resize((size, size))
    return found


PARAMS = {"prompt": "an old-growth forest at dawn", "negative_prompt": None, "steps": 30, "guidance": 7.0,
          "seed": 7, "width": 1024, "height": 1024}


def encode(image: Image.Image, level: int, encoder: str) -> bytes:
    return imaging.encode(image, "png", PARAMS, level, encoder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", type=Path, action="append", default=[])
    parser.add_argument("--encoders", default="isal,pillow")
    parser.add_argument("--levels", default=",".join(map(str, range(10))))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    print(f"{'picture':<14}{'encoder':>8}{'level':>6}{'seconds':>10}{'MiB':>8}{'vs pillow 9':>13}")
    for name, image in pictures(args.size, args.image).items():
        smallest = len(encode(image, 9, "pillow"))
        for encoder in args.encoders.split(","):
            for level in levels:
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    data = encode(image, level, encoder)
                    times.append(time.perf_counter() - started)
                print(f"{name:<14}{encoder:>8}{level:>6}{statistics.median(times):>10.3f}"
                      f"{len(data) / 2**20:>8.2f}{len(data) / smallest:>12.2f}x")


if __name__ == "__main__":
    main()
