"""``POST /v1/images/generations``: OpenAI's image API over ordinary DreamForge jobs.

A request becomes one job through the job service, as ``POST /v1/jobs`` makes one: it is listed,
its events stream, an ``Idempotency-Key`` is honoured the same way. The route then waits for the
job's end on the process's event feed (as the SSE streams do; no polling of the store) for at
most DF_OPENAI_WAIT_S, and answers in OpenAI's shape: ``{"created", "data": [{"url"} or
{"b64_json"}]}``. Errors on this route wear OpenAI's error shape, ``{"error": {"message", "type",
"param", "code"}}``, so OpenAI's clients raise their own error types (400 BadRequestError, 401
AuthenticationError, …); the rest of the API keeps DreamForge's envelope.

Mapping: ``prompt`` → prompt; ``size`` ``"WxH"`` → width and height (``auto`` or none: the
defaults); ``n`` → count; ``output_format`` → format; ``response_format`` picks the answer's
shape. ``model`` names a model of this server's registry where the server has one, and OpenAI's
own model names (dall-e-2, dall-e-3, gpt-image-1, …) mean the server's default. ``user`` and the
parameters DreamForge has no use for (IGNORED) are accepted and ignored. DreamForge's own
``negative_prompt``, ``steps``, ``guidance`` and ``seed`` may ride along (the OpenAI client's
``extra_body``). Anything else is refused, as OpenAI refuses an unknown argument.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dreamforge.errors import (
    BackendUnavailable,
    DreamForgeError,
    IdempotencyConflict,
    InvalidRequest,
    StorageError,
)
from dreamforge.schemas import GenerateRequest, JobView, parse_request
from dreamforge.server.body import read_json
from dreamforge.server.errors import ApiError
from dreamforge.server.sse import ends_job
from dreamforge.text import cut

PATH = "/v1/images/generations"
IGNORED = frozenset({"quality", "style", "background", "moderation", "output_compression",
                     "partial_images", "stream", "input_fidelity", "user"})
OWN = ("negative_prompt", "steps", "guidance", "seed")
KNOWN = frozenset({"prompt", "model", "n", "size", "response_format", "output_format", *OWN}) | IGNORED
OPENAI_MODELS = re.compile(r"^(dall-e-\d|gpt-image-[\w.-]+|chatgpt-image[\w.-]*)$")
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# How a DreamForge field is named in OpenAI's request, for the error's ``param``.
PARAM_FOR = {"width": "size", "height": "size", "count": "n", "format": "output_format"}
# Between the feed's wake-ups the job is read again at least this often (a lost wake-up costs
# at most this much).
RECHECK_S = 5.0


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": cut(message, 500), "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _to_job_request(data: Any) -> tuple[GenerateRequest, str]:
    """The job request, and the response format, from OpenAI's request (OpenAIError if bad)."""
    if not isinstance(data, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for name in data:
        if name not in KNOWN:
            raise OpenAIError(400, f"Unrecognized request argument supplied: {cut(str(name), 100)}",
                              param=cut(str(name), 100), code="unknown_parameter")
    if "prompt" not in data:
        raise OpenAIError(400, "prompt is required", param="prompt", code="missing_required_parameter")
    response_format = "url" if data.get("response_format") is None else data["response_format"]
    if response_format not in ("url", "b64_json"):
        raise OpenAIError(400, "response_format must be url or b64_json", param="response_format")
    fields: dict[str, Any] = {"prompt": data["prompt"], **{k: data[k] for k in OWN if k in data}}
    size = data.get("size")
    if size not in (None, "auto"):
        found = SIZE.match(size) if isinstance(size, str) else None
        if found is None:
            raise OpenAIError(400, "size must be WIDTHxHEIGHT, such as 1024x1024, or auto", param="size")
        fields["width"], fields["height"] = int(found[1]), int(found[2])
    if data.get("n") is not None:
        fields["count"] = data["n"]
    if data.get("output_format") is not None:
        fields["format"] = data["output_format"]
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIError(400, "model must be a string", param="model")
    if model and "model" in GenerateRequest.model_fields and not OPENAI_MODELS.match(model):
        fields["model"] = model  # a model of this server's registry
    try:
        return parse_request(fields), response_format
    except InvalidRequest as exc:
        field = str((exc.details or [{}])[0].get("field", ""))
        param = PARAM_FOR.get(field, field or None)
        message = exc.message
        if field == "count":
            message = f"n={data.get('n')!r} is not possible here: {message.replace('count', 'n')}"
        elif param == "size":
            message = f"size {cut(str(size), 20)}: {message}"
        raise OpenAIError(400, message, param=param) from None


async def _wait_for_end(request: Request, view: JobView, mark: int, wait_s: float) -> JobView | None:
    """The job once it has ended; None if the client went away first (the job goes on)."""
    service, feed = request.state.service, request.state.feed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not view.status.is_terminal():
        left = deadline - loop.time()
        if left <= 0:
            raise OpenAIError(504, f"job {view.id} did not end within {wait_s:g} s; it goes on: "
                                   f"GET /v1/jobs/{view.id}", kind="server_error", code="timeout")
        batch = feed.since(mark)
        if batch is None or any(e["job_id"] == view.id and ends_job(e) for e in batch or ()):
            mark = feed.last_id
            view = await run_in_threadpool(service.get, view.id)
            continue
        if batch:
            mark = batch[-1]["id"]
            continue
        if not await feed.wait(mark, min(left, RECHECK_S)):
            if await request.is_disconnected():
                return None
            view = await run_in_threadpool(service.get, view.id)
    return view


async def _item(request: Request, view: JobView, index: int, response_format: str) -> dict[str, str]:
    art = view.artifacts[index]
    if response_format == "b64_json":
        try:
            data = await run_in_threadpool(request.state.service.artifact_bytes, art.s3_key)
        except StorageError as exc:
            raise OpenAIError(503, "the artifact store could not be read; try again", kind="server_error",
                              code="storage_unavailable") from exc
        return {"b64_json": base64.b64encode(data).decode()}
    if art.url and art.url.startswith(("https://", "http://")):
        return {"url": art.url}  # presigned (S3)
    return {"url": str(request.base_url).rstrip("/") + (art.content_url or "")}


async def _generate(request: Request) -> Response:
    from dreamforge.server.app import idempotency_scope
    from dreamforge.server.middleware import VISIBLE

    try:
        data = await read_json(request)
    except ApiError as exc:
        raise OpenAIError(exc.status if exc.status in (413, 415) else 400, exc.message) from None
    key = request.headers.get("idempotency-key")
    if key is not None and not VISIBLE.match(key):
        raise OpenAIError(400, "Idempotency-Key must be 1-255 visible ASCII characters", param="Idempotency-Key")
    job_request, response_format = _to_job_request(data)
    service, feed = request.state.service, request.state.feed
    mark = await feed.position()  # before the submit: the feed then carries every event of the job
    submitted = await request.state.submit_lane.submit(job_request, correlation_id=request.state.request_id,
                                                       idempotency_key=key,
                                                       idempotency_scope=idempotency_scope(request))
    job_id = submitted.view.id
    view = await _wait_for_end(request, submitted.view, mark, service.settings.openai_wait_s)
    if view is None:
        return Response(status_code=499)  # nobody to answer; the job goes on
    if view.status.value != "succeeded":
        error = view.error
        reason = f"{error.code}: {error.message}" if error else view.status.value
        raise OpenAIError(500, f"job {job_id} {view.status.value}: {reason}", kind="server_error",
                          code=error.code if error else f"job_{view.status.value}")
    items = [await _item(request, view, i, response_format) for i in range(len(view.artifacts))]
    headers = {"X-DreamForge-Job-ID": job_id, **({} if submitted.created else {"Idempotent-Replayed": "true"})}
    return JSONResponse({"created": int(view.created_at.timestamp()), "data": items}, headers=headers)


async def generations(request: Request) -> Response:
    try:
        return await _generate(request)
    except OpenAIError as exc:
        return openai_error(exc.status, exc.message, kind=exc.kind, param=exc.param, code=exc.code)
    except InvalidRequest as exc:  # the service's own checks (a webhook's target, say)
        return openai_error(400, exc.message, code=exc.code)
    except IdempotencyConflict as exc:
        return openai_error(409, exc.message, code=exc.code)
    except (BackendUnavailable, StorageError) as exc:
        return openai_error(503, exc.message, kind="server_error", code=exc.code)
    except DreamForgeError:
        return openai_error(500, "internal error", kind="server_error", code="internal_error")


# -- the OpenAPI description (dreamforge/server/openapi.py merges it) ----------------------------

def _openai_error(description: str, message: str, param: str | None = None, code: str | None = None,
                  kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/OpenAIErrorEnvelope"},
        "example": {"error": {"message": message, "type": kind, "param": param, "code": code}}}}}


SPEC_SCHEMAS: dict[str, Any] = {
    "OpenAIImageRequest": {
        "type": "object", "required": ["prompt"], "additionalProperties": False,
        "description": "OpenAI's image request. quality, style, background, moderation, output_compression, "
                       "partial_images, stream, input_fidelity and user are accepted and ignored; "
                       "negative_prompt, steps, guidance and seed are DreamForge's own (GenerateRequest).",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
            "model": {"type": ["string", "null"], "description": "OpenAI's model names mean the server's "
                                                                 "default model."},
            "n": {"type": ["integer", "null"], "minimum": 1, "description": "Images: GenerateRequest.count."},
            "size": {"type": ["string", "null"], "pattern": "^(auto|[0-9]{1,5}x[0-9]{1,5})$",
                     "description": "WIDTHxHEIGHT, each 64-2048 and a multiple of 8; auto: the defaults."},
            "response_format": {"type": ["string", "null"], "enum": ["url", "b64_json", None]},
            "output_format": {"type": ["string", "null"], "enum": ["png", "jpeg", "webp", None]},
            "user": {"type": ["string", "null"]},
            **{name: {"description": "Accepted and ignored."} for name in sorted(IGNORED - {"user"})},
            "negative_prompt": {"type": ["string", "null"], "maxLength": 2000},
            "steps": {"type": "integer", "minimum": 1, "maximum": 150},
            "guidance": {"type": "number", "minimum": 0, "maximum": 30},
            "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 4294967295},
        }},
    "OpenAIImagesResponse": {
        "type": "object", "required": ["created", "data"],
        "properties": {"created": {"type": "integer"}, "data": {"type": "array", "items": {
            "type": "object", "properties": {"url": {"type": "string"}, "b64_json": {"type": "string"}}}}}},
    "OpenAIErrorEnvelope": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                                 "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                                "param": {"type": ["string", "null"]},
                                                "code": {"type": ["string", "null"]}}}}},
}


def spec_paths() -> dict[str, Any]:
    return {PATH: {"post": {
        "operationId": "createImage",
        "summary": "OpenAI-compatible image generation: one job, answered when it ends",
        "description": "Runs an ordinary job (listed, streamed, Idempotency-Key honoured as on POST /v1/jobs) "
                       "and answers when it ends, or 504 after DF_OPENAI_WAIT_S (the job goes on). Errors use "
                       "OpenAI's error shape. The url answer is the content endpoint (it wants the bearer "
                       "token), or a presigned URL with S3.",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/OpenAIImageRequest"},
            "example": {"model": "gpt-image-1", "prompt": "an old-growth forest at dawn", "size": "1024x1024",
                        "n": 1, "response_format": "b64_json"}}}},
        "responses": {
            "200": {"description": "The job succeeded", "headers": {
                "X-DreamForge-Job-ID": {"schema": {"type": "string"}, "description": "The job made"}},
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/OpenAIImagesResponse"},
                    "example": {"created": 1767268800, "data": [{"b64_json": "iVBORw0KGgo…"}]}}}},
            "400": _openai_error("A bad argument, or a body that is not JSON", "size must be WIDTHxHEIGHT, such "
                                 "as 1024x1024, or auto", "size"),
            "401": _openai_error("Missing or wrong bearer token (the API key)", "a valid bearer token (the API "
                                 "key) is required", code="invalid_api_key"),
            "409": _openai_error("Idempotency-Key reused with another body", "this Idempotency-Key was already "
                                 "used with a different request body", code="idempotency_conflict"),
            "413": _openai_error("Body over 64 KiB", "request body is over 65536 bytes"),
            "415": _openai_error("Not application/json", "Content-Type must be application/json"),
            "500": _openai_error("The job failed or was canceled", "job 8b0f… failed: runner_crashed: …",
                                 code="runner_crashed", kind="server_error"),
            "503": _openai_error("A backend is unreachable", "job store unreachable", code="service_unavailable",
                                 kind="server_error"),
            "504": _openai_error("The job did not end within DF_OPENAI_WAIT_S", "job 8b0f… did not end within "
                                 "600 s; it goes on: GET /v1/jobs/8b0f…", code="timeout", kind="server_error"),
        }}}}
