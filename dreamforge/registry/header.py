"""A safetensors file's header, read and checked without touching its weights.

The format: 8 bytes of little-endian header length N, N bytes of JSON (tensor name → dtype, shape
and [begin, end) byte offsets into the data that follows, plus an optional ``__metadata__`` of
strings), then the data. A 7 GB checkpoint's header is a few hundred KB, so reading it is cheap;
checking every offset against the file's size finds a truncated download or a cut-off copy at
``add`` time, not at the first job. The checks are the ones the safetensors library makes when it
loads a file: offsets inside the data, sizes that match dtype and shape, no gap at the end.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamforge.errors import ModelRejected

# The safetensors library refuses headers over 100 MB.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0

    def dtypes(self) -> dict[str, int]:
        """How many tensors of each dtype, most common first."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def invalid(path: Path, why: str) -> ModelRejected:
    return ModelRejected(f"{path.name} is not a usable safetensors file: {why}", code="model_invalid",
                         details={"file": path.name, "reason": why})


def _tensor(path: Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    shown = name[:80]
    if not isinstance(entry, dict):
        raise invalid(path, f"the header's entry for {shown!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list) \
            or len(offsets) != 2:
        raise invalid(path, f"the header's entry for {shown!r} lacks dtype, shape or data_offsets")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in [*shape, *offsets]):
        raise invalid(path, f"tensor {shown!r} has a negative or non-integer shape or offset")
    begin, end = offsets
    if begin > end:
        raise invalid(path, f"tensor {shown!r} ends before it begins")
    if end > data_size:
        raise invalid(path, f"tensor {shown!r} ends at byte {end} of the data, past its end at "
                            f"{data_size}: the file is truncated")
    width = DTYPE_BYTES.get(dtype)
    if width is not None and (end - begin) != math.prod(shape) * width:
        raise invalid(path, f"tensor {shown!r} holds {end - begin} bytes, and a {dtype} tensor of "
                            f"shape {shape} needs {math.prod(shape) * width}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def read_header(path: Path) -> Header:
    """The header of the safetensors file at ``path``, every offset checked against the file's
    size; ModelRejected (code model_invalid) for anything a loader would refuse."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size < 8:
                raise invalid(path, f"it is {size} bytes long, shorter than a header")
            (length,) = struct.unpack("<Q", f.read(8))
            if length == 0 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise invalid(path, f"the header claims {length} bytes and the file has {size - 8} "
                                    "after the length: truncated, or not a safetensors file")
            raw = f.read(length)
    except OSError as exc:
        raise ModelRejected(f"{path.name} can't be read: {exc.strerror or exc}", code="model_invalid",
                            details={"file": path.name}) from None
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise invalid(path, "the header is not JSON") from None
    if not isinstance(parsed, dict):
        raise invalid(path, "the header is not a JSON object")
    data_size = size - 8 - length
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise invalid(path, "__metadata__ is not an object")
    tensors = {name: _tensor(path, name, entry, data_size) for name, entry in parsed.items()}
    if not tensors:
        raise invalid(path, "it holds no tensors")
    last = max(t.end for t in tensors.values())
    if last != data_size:
        raise invalid(path, f"{data_size - last} bytes follow the last tensor's data, which the "
                            "safetensors library refuses")
    return Header(tensors, {str(k): str(v)[:500] for k, v in list(metadata.items())[:50]}, size)
