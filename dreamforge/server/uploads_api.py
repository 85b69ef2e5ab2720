"""/v1/uploads: images a job starts from. POST takes ``multipart/form-data`` (the image in the
``file`` field) or the raw image with its own Content-Type; the body is read in chunks and given up
as soon as it passes DF_UPLOAD_MAX_BYTES, so no client makes the server hold more than that."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dreamforge.errors import ImageRejected, StorageError
from dreamforge.inputs import CONTENT_TYPES
from dreamforge.server.content import CACHE, _etag_matches
from dreamforge.server.errors import ApiError
from dreamforge.server.query import NoQuery, parse_query
from dreamforge.service import JobService
from dreamforge.text import cut

RAW_TYPES = frozenset(CONTENT_TYPES.values())
# Room for a multipart body's boundaries and part headers around the image itself.
MULTIPART_SLACK = 64 * 1024
STATUS_FOR_CODE = {"unsupported_media_type": 415, "payload_too_large": 413}
T = TypeVar("T")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the upload is over {limit} bytes (DF_UPLOAD_MAX_BYTES)")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 12 or int(declared) > limit):
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


async def _multipart_file(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The ``file`` part's bytes and content type."""
    body = await read_body(request, max_bytes + MULTIPART_SLACK)

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=16, max_part_size=MULTIPART_SLACK)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"the multipart body is malformed: {cut(exc.message, 120)}",
                       code="invalid_multipart") from None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ApiError(422, 'the multipart body has no file field named "file"',
                           details=[{"field": "file", "message": "required"}])
        data = await part.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        declared = (part.content_type or "").split(";")[0].strip().lower()
        # curl and browsers say application/octet-stream for what they don't know: no claim then.
        return data, declared if declared in RAW_TYPES else None
    finally:
        await form.close()


async def _refusals(call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """ImageRejected with its HTTP status (413, 415, else 422); a store's trouble as a 503 that
    names no host or path."""
    try:
        return await call(*args)
    except ImageRejected as exc:
        raise ApiError(STATUS_FOR_CODE.get(exc.code, 422), exc.message, code=exc.code, details=exc.details) from None
    except StorageError:
        raise ApiError(503, "the artifact store could not be reached; try again", code="storage_unavailable") from None


async def create_upload(request: Request) -> Response:
    """201 with the upload's description; the same bytes again give the same id (and 201)."""
    parse_query(NoQuery, request)
    service: JobService = request.state.service
    max_bytes = service.settings.upload_max_bytes
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        data, declared = await _multipart_file(request, max_bytes)
    elif media_type in RAW_TYPES:
        data, declared = await read_body(request, max_bytes), media_type
    else:
        raise ApiError(415, "send multipart/form-data with a file field, or the image itself as image/png, "
                            f"image/jpeg or image/webp; not {cut(media_type, 100) or 'no Content-Type'!r}")
    image = await _refusals(run_in_threadpool, service.upload_image, data, declared)
    return JSONResponse(image.upload_view(), status_code=201,
                        headers={"Location": f"/v1/uploads/{image.sha256}"})


async def get_upload(request: Request) -> Response:
    parse_query(NoQuery, request)
    image = await _refusals(run_in_threadpool, request.state.service.upload, request.path_params["upload_id"])
    return JSONResponse(image.upload_view())


async def upload_content(request: Request) -> Response:
    """The bytes as uploaded. Their sha256 is the id, so they never change: cached for good."""
    parse_query(NoQuery, request)
    upload_id = request.path_params["upload_id"]
    etag = f'"{cut(upload_id, 64)}"'
    headers = {"ETag": etag, "Cache-Control": CACHE}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        service: JobService = request.state.service
        await _refusals(run_in_threadpool, service.upload, upload_id)  # a 304 only for an upload that exists
        return Response(status_code=304, headers=headers)
    image, data = await _refusals(run_in_threadpool, request.state.service.upload_content, upload_id)
    ext = {"jpeg": "jpg"}.get(image.format, image.format)
    headers["Content-Disposition"] = f'inline; filename="{image.sha256}.{ext}"'
    return Response(data, media_type=image.content_type, headers=headers)
