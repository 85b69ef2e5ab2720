"""One table from errors to HTTP statuses, and the envelope every 4xx and 5xx wears."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from dreamforge.errors import (
    BackendUnavailable,
    DreamForgeError,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    JobStateError,
    ModelConflict,
    ModelNotFound,
    StorageError,
)
from dreamforge.text import cut, inert

log = logging.getLogger("dreamforge.server")

STATUS_FOR = {
    InvalidRequest: 422,
    JobNotFound: 404,
    IdempotencyConflict: 409,
    JobStateError: 409,
    BackendUnavailable: 503,
    StorageError: 503,
    ModelNotFound: 404,
    ModelConflict: 409,
}
CODE_FOR_STATUS = {
    400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    409: "idempotency_conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error", 503: "service_unavailable", 500: "internal_error",
}


class ApiError(Exception):
    """An error the API raises itself (bad JSON, wrong content type, auth)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, details: Any = None,
                 headers: dict[str, str] | None = None):
        self.status = status
        self.code = code or CODE_FOR_STATUS.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers


# Values a client sent can come back in an error (an id, a field name, a content type): cut, so a
# 100 KB id is not echoed 100 KB long.
MAX_MESSAGE = 300
MAX_DETAIL = 200


def _cut_all(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return cut(value, MAX_DETAIL)
    if depth > 4:
        return None
    if isinstance(value, dict):
        return {cut(str(k), MAX_DETAIL): _cut_all(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list | tuple):
        return [_cut_all(v, depth + 1) for v in value[:20]]
    return value


def envelope_response(status: int, code: str, message: str, details: Any = None,
                      correlation_id: str | None = None,
                      headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": cut(message, MAX_MESSAGE), "details": _cut_all(details),
                      "correlation_id": correlation_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def envelope(request: Request, status: int, code: str, message: str, details: Any = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    return envelope_response(status, code, message, details,
                             getattr(request.state, "request_id", None), headers)


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):
        raise exc
    return envelope(request, exc.status, exc.code, exc.message, exc.details, exc.headers)


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, DreamForgeError):
        raise exc
    status = next((s for cls, s in STATUS_FOR.items() if isinstance(exc, cls)), 500)
    if status == 500:
        log.error("[request_id=%s] unhandled domain error: %s: %s", getattr(request.state, "request_id", "-"),
                  inert(exc.code, 100), inert(exc.message, 1000))
        return envelope(request, 500, "internal_error", "internal error")
    return envelope(request, status, exc.code, exc.message, exc.details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 and 405 pages, in the envelope."""
    if not isinstance(exc, HTTPException):
        raise exc
    code = CODE_FOR_STATUS.get(exc.status_code, "error")
    path = cut(request.url.path, 100)
    messages = {404: f"no route for {path}",
                405: f"method {cut(request.method, 20)} is not allowed on {path}"}
    return envelope(request, exc.status_code, code, messages.get(exc.status_code, str(exc.detail)),
                    headers=dict(exc.headers) if exc.headers else None)


EXCEPTION_HANDLERS = {ApiError: api_error, DreamForgeError: domain_error, HTTPException: http_error}
