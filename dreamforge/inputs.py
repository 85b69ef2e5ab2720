"""Images a job starts from: uploads checked and stored, and references to them resolved.

An upload is stored exactly as sent (no byte stripped or re-encoded) under
``dreamforge/default/uploads/{sha256}.{ext}``, so the same bytes sent twice are one object and the
sha256 is the upload's id. A job names its input by that id or by an earlier job's artifact
(``{"job_id": …, "item": 0}``); ``resolve_input`` turns either into an ``InputImage``.

Nothing is decoded before the header has been read and judged: a file that declares more pixels
than the limit (a decompression bomb: a few KiB that say 20,000 × 20,000) is refused from its
header alone. What passes is then checked whole (``verify`` for the PNG checksums, then a full
``load``), so a truncated or corrupt file is refused at upload, not in a worker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from dreamforge.errors import ImageRejected, JobNotFound, StorageError
from dreamforge.text import cut

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dreamforge.artifact_store import ArtifactStore
    from dreamforge.service import JobService

# Pillow's limits, set for this use rather than left at their defaults. SDXL's largest side is
# 2048 and DF_UPLOAD_MAX_SIDE may go to 4096, so no honest input has more than 4096² pixels; Pillow
# warns above this and raises DecompressionBombError above twice it, before decoding anything.
MAX_SIDE_CEILING = 4096
Image.MAX_IMAGE_PIXELS = MAX_SIDE_CEILING * MAX_SIDE_CEILING
# A truncated file is an error, never an image padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PNG text chunks (A1111's `parameters` is a few KiB): 1 MiB each, 8 MiB in all.
PngImagePlugin.MAX_TEXT_CHUNK = 1024 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 8 * 1024 * 1024

# Pillow's format name → (ours, content type, file extension).
FORMATS = {"PNG": ("png", "image/png", "png"), "JPEG": ("jpeg", "image/jpeg", "jpg"),
           "WEBP": ("webp", "image/webp", "webp")}
# Pillow opens a JPEG that carries more pictures (a camera's MPO) as format MPO.
PILLOW_FORMAT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
CONTENT_TYPES = {ours: content_type for ours, content_type, _ in FORMATS.values()}
EXTENSIONS = {ours: ext for ours, _, ext in FORMATS.values()}
UPLOADS_PREFIX = "dreamforge/default/uploads/"
UPLOAD_ID = re.compile(r"^[0-9a-f]{64}\Z")
# Other formats, named in the refusal so the sender knows what they sent.
OTHER_FORMATS = ((b"GIF87a", "a GIF"), (b"GIF89a", "a GIF"), (b"BM", "a BMP"), (b"II*\x00", "a TIFF"),
                 (b"MM\x00*", "a TIFF"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000"), (b"8BPS", "a Photoshop file"),
                 (b"%PDF", "a PDF"), (b"\x00\x00\x01\x00", "an icon"), (b"<svg", "an SVG"), (b"<?xml", "XML"))


@dataclass(frozen=True)
class InputImage:
    """An image a job can start from: an upload (``key`` under uploads/) or an earlier artifact.
    ``sha256`` is of the stored bytes; ``format`` is png, jpeg or webp."""

    sha256: str
    key: str
    width: int
    height: int
    format: str
    size_bytes: int | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def upload_view(self) -> dict[str, Any]:
        """What POST and GET /v1/uploads answer and `df uploads add --json` prints."""
        return {"id": self.sha256, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "width": self.width, "height": self.height, "format": self.format,
                "content_type": self.content_type}


def upload_key(sha256: str, fmt: str) -> str:
    return f"{UPLOADS_PREFIX}{sha256}.{EXTENSIONS[fmt]}"


def _unsupported(data: bytes, declared: str | None) -> ImageRejected:
    ours = next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)
    if ours is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ours = "WebP"
    if ours is not None:  # one of ours by its first bytes, but its header doesn't parse
        return ImageRejected(f"the file starts as a {ours} image but its header is broken", code="image_invalid")
    head = data[:16].lstrip()
    what = next((name for magic, name in OTHER_FORMATS if head.startswith(magic)), None)
    if what is None and data[4:8] == b"ftyp":
        what = "an HEIF/AVIF image"
    what = what or ("an empty file" if not data else "not an image Pillow can read")
    sent = f" (sent as {cut(declared, 60)})" if declared else ""
    return ImageRejected(f"the file is {what}{sent}; send a PNG, JPEG or WebP image",
                         code="unsupported_media_type", details={"accepted": sorted(CONTENT_TYPES.values())})


def _too_large(width: int, height: int, max_side: int) -> ImageRejected:
    return ImageRejected(f"the image is {width}×{height} pixels; at most {max_side} on a side is taken",
                         code="image_too_large", details={"width": width, "height": height, "max_side": max_side})


def inspect_image(data: bytes, max_side: int, declared: str | None = None) -> tuple[str, int, int]:
    """(format, width, height) of a PNG, JPEG or WebP that is whole and within ``max_side``;
    ImageRejected otherwise. ``declared``, a content type the sender gave, must agree."""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
            fmt, (width, height) = PILLOW_FORMAT[str(img.format)], img.size
            if width > max_side or height > max_side:
                raise _too_large(width, height, max_side)  # judged from the header, nothing decoded
            if getattr(img, "n_frames", 1) > 1:
                raise ImageRejected("the image has several frames (animated, or a multi-picture JPEG); "
                                    "send a single one", code="image_invalid")
            img.verify()
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
            img.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"the image declares too many pixels to decode safely ({exc})",
                            code="image_too_large") from None
    except UnidentifiedImageError:
        raise _unsupported(data, declared) from None
    except Exception as exc:  # whatever a broken file makes a decoder raise is the file's fault
        log.info("an input image was refused: %s: %s", type(exc).__name__, cut(str(exc), 200))
        raise ImageRejected(f"the image is truncated or corrupt: {cut(str(exc) or type(exc).__name__, 120)}",
                            code="image_invalid") from None
    if declared in CONTENT_TYPES.values() and declared != CONTENT_TYPES[fmt]:
        raise ImageRejected(f"the file is a {fmt.upper()} image, but it was sent as {declared}",
                            code="unsupported_media_type")
    return fmt, width, height


def store_upload(store: ArtifactStore, data: bytes, declared: str | None, *, max_bytes: int,
                 max_side: int) -> InputImage:
    """Check an uploaded image and store its bytes as sent; the same bytes again are not
    written twice."""
    if len(data) > max_bytes:
        raise ImageRejected(f"the image is {len(data)} bytes; at most {max_bytes} are taken "
                            "(DF_UPLOAD_MAX_BYTES)", code="payload_too_large")
    fmt, width, height = inspect_image(data, max_side, declared)
    sha256 = hashlib.sha256(data).hexdigest()
    image = InputImage(sha256, upload_key(sha256, fmt), width, height, fmt, len(data))
    try:
        there = store.exists(image.key)
    except StorageError:
        there = False  # the put says whether the store works (S3 answers 403 to a head without s3:ListBucket)
    if not there:
        store.put(image.key, data, image.content_type, sha256)
    return image


def _unknown(message: str, **details: Any) -> ImageRejected:
    return ImageRejected(message, code="unknown_input", details=details or None)


def find_upload(store: ArtifactStore, upload_id: str) -> tuple[InputImage, bytes]:
    """The stored upload with this id, and its bytes; ImageRejected (unknown_input) if none."""
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
        raise _unknown(f"an upload id is the 64 hex digits of its sha256, not {cut(str(upload_id), 80)!r}")
    for fmt in EXTENSIONS:
        key = upload_key(upload_id, fmt)
        if store.exists(key):
            data = store.get(key)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:  # checked when stored
                width, height = img.size
            return InputImage(upload_id, key, width, height, fmt, len(data)), data
    raise _unknown(f"no upload with id {upload_id} (POST /v1/uploads or df uploads add)", upload=upload_id)


def resolve_input(service: JobService, ref: str | Mapping[str, Any]) -> InputImage:
    """The image a job names: an upload's id (or ``{"upload": id}``), or an earlier job's
    artifact ``{"job_id": …, "item": 0}``. ImageRejected (unknown_input, 422) for an id or item
    that isn't there or a reference of another shape."""
    if isinstance(ref, Mapping) and set(ref) == {"upload"}:
        ref = str(ref["upload"]) if isinstance(ref["upload"], str) else ""
    if isinstance(ref, str):
        return service.upload(ref)
    if not isinstance(ref, Mapping) or "job_id" not in ref or not set(ref) <= {"job_id", "item"}:
        raise _unknown('an input image is an upload id, {"upload": ID} or {"job_id": ID, "item": N}')
    job_id, item = ref["job_id"], ref.get("item", 0)
    if not isinstance(job_id, str) or isinstance(item, bool) or not isinstance(item, int) or item < 0:
        raise _unknown("job_id is a job's id and item a number from 0")
    try:
        art = service.artifact(job_id, item)
    except JobNotFound:
        raise _unknown(f"job {cut(job_id, 80)} has no image {item}", job_id=cut(job_id, 80), item=item) from None
    return InputImage(art["sha256"], art["s3_key"], art["width"], art["height"], art["format"],
                      art.get("size_bytes"))


def check_mask(init: InputImage, mask: InputImage) -> None:
    """An inpainting mask covers its image exactly: the same width and height."""
    if (mask.width, mask.height) != (init.width, init.height):
        raise ImageRejected(f"the mask is {mask.width}×{mask.height} pixels and the image {init.width}×"
                            f"{init.height}; they must be the same size", code="mask_size_mismatch",
                            details={"image": [init.width, init.height], "mask": [mask.width, mask.height]})
