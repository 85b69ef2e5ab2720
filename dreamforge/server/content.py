"""A job's artifacts over HTTP: the list, and each image's bytes from whichever store holds it
(a presigned redirect for S3 unless ``?redirect=false``), with the validators and ranges a
browser or a download manager uses. An artifact never changes once stored, so its sha256 is its
ETag and it may be cached for good."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from dreamforge.errors import StorageError
from dreamforge.server.errors import ApiError
from dreamforge.server.query import ContentQuery, parse_query
from dreamforge.service import JobService
from dreamforge.text import inert

log = logging.getLogger("dreamforge.server")

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CACHE = "private, max-age=31536000, immutable"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def artifacts(request: Request) -> Response:
    from dreamforge.server.app import public_view

    view = request.state.service.get(request.path_params["job_id"])
    return JSONResponse({"artifacts": public_view(view)["artifacts"]})


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags or etag.strip('"') in tags


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single ``bytes=`` range; None for the whole body (no header, several
    ranges, or a header this parser does not know, which RFC 9110 says to ignore). Raises 416
    when the range lies outside the body."""
    if header is None:
        return None
    found = _RANGE.match(header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first_s, last_s = found.groups()
    if first_s == "":  # the last n bytes
        first, last = max(size - int(last_s), 0), size - 1
        if int(last_s) == 0 or size == 0:
            first = size
    else:
        first = int(first_s)
        last = min(int(last_s), size - 1) if last_s else size - 1
        if last_s and int(last_s) < first:
            return None  # syntactically invalid: ignored
    if first >= size:
        raise ApiError(416, f"range {inert(header, 60)} is outside the {size} bytes",
                       code="range_not_satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return first, last


def _read(request: Request, call: Callable[..., bytes], *args: object) -> bytes:
    """Read through the service; a store error's reason (a path, an endpoint) goes to the log,
    never to the client."""
    try:
        return call(*args)
    except StorageError as exc:
        log.warning("[request_id=%s] artifact unreadable: %s", request.state.request_id,
                    inert(exc.message, 500))
        raise ApiError(503, "the artifact store could not be read; try again",
                       code="storage_unavailable") from None


def content(request: Request) -> Response:
    query = parse_query(ContentQuery, request)
    service: JobService = request.state.service
    job_id, item = request.path_params["job_id"], request.path_params["item"]
    art = service.artifact(job_id, item)
    key, thumb = art["s3_key"], query.thumb
    etag = f'"{art["sha256"]}-thumb{thumb}"' if thumb else f'"{art["sha256"]}"'
    headers = {"ETag": etag, "Cache-Control": CACHE}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if thumb:
        data = _read(request, service.thumbnail, key, thumb)
        media_type, ext = "image/webp", "webp"
    else:
        if query.redirect and (url := service.presigned_url(key)):
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "private, no-store"})
        data = _read(request, service.artifact_bytes, key)
        media_type = MEDIA_TYPES.get(art["format"], "application/octet-stream")
        ext = EXTENSIONS.get(art["format"], "bin")
    name = f"{job_id}_{item}{'_thumb' if thumb else ''}.{ext}"
    headers |= {"Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{name}"'}
    span = byte_range(request.headers.get("range"), len(data))
    if span is None:
        return Response(data, media_type=media_type, headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(data[first:last + 1], status_code=206, media_type=media_type, headers=headers)
