"""Request ids, the bearer token, and the last line of defence against stack traces."""

from __future__ import annotations

import hmac
import logging
import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dreamforge.server.errors import envelope_response
from dreamforge.text import inert

log = logging.getLogger("dreamforge.server")

VISIBLE = re.compile(r"^[\x21-\x7e]{1,255}\Z")
# Orchestrators probe these without credentials. /metrics is not among them: Prometheus scrapes
# with `authorization: {credentials: …}` when DF_API_TOKEN is set.
OPEN_PATHS = ("/healthz", "/readyz")


def guarded(path: str) -> bool:
    return path.startswith("/v1") or path == "/metrics"


class RequestContext:
    """Takes X-Request-ID (or makes one), echoes it on every response, checks the bearer token on
    /v1 routes and /metrics when DF_API_TOKEN is set, and turns any unhandled exception into a 500
    envelope.

    A request id is data: one that is not 1-255 visible ASCII characters (the OpenAPI document
    says so) is replaced by a made one, which the response's X-Request-ID carries back."""

    def __init__(self, app: ASGIApp, api_token: str | None = None):
        self.app = app
        self.api_token = api_token.encode() if api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        sent = headers.get("x-request-id")
        request_id = sent if sent is not None and VISIBLE.match(sent) else uuid.uuid4().hex
        if sent is not None and sent != request_id:
            log.info("[request_id=%s] X-Request-ID of %d characters is not 1-255 visible ASCII: replaced",
                     request_id, len(sent))
        scope.setdefault("state", {})["request_id"] = request_id

        if self.api_token and guarded(scope["path"]):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                      self.api_token):
                response = envelope_response(401, "unauthorized", "a valid bearer token is required",
                                             correlation_id=request_id,
                                             headers={"WWW-Authenticate": "Bearer",
                                                      "X-Request-ID": request_id})
                if scope["path"].startswith("/v1/images/"):  # OpenAI's route speaks OpenAI's errors
                    from dreamforge.server.openai_images import openai_error

                    response = openai_error(401, "a valid bearer token (the API key) is required",
                                            code="invalid_api_key",
                                            headers={"WWW-Authenticate": "Bearer", "X-Request-ID": request_id})
                await response(scope, receive, send)
                return

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("[request_id=%s] unhandled error on %s %s", request_id, inert(scope["method"], 20),
                          inert(scope["path"], 200))
            if started:
                raise
            response = envelope_response(500, "internal_error", "internal error",
                                         correlation_id=request_id, headers={"X-Request-ID": request_id})
            await response(scope, receive, send)

