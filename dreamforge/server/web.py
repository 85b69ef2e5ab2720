"""The web page at ``/``: static files shipped in the package, one more client of the v1 API.

Nothing here reads the job store: the page fetches /v1 like any HTTP client. The server only
says, in the page itself, whether a token is needed, so that a page without one shows the sign-in
prompt at once instead of learning it from a 401."""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dreamforge.server.errors import CODE_FOR_STATUS, envelope_response
from dreamforge.text import cut

STATIC = Path(__file__).resolve().parent / "static"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Revalidated each load (ETag), so a new release's files are never mixed with old ones.
    "Cache-Control": "no-cache",
}


class StrictHeaders:
    """Adds PAGE_HEADERS to every response of the wrapped app, its errors included (a missing
    file is the API's 404 envelope, answered here so that it wears the headers too)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_strict(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_strict)
        except HTTPException as exc:
            request_id = scope.get("state", {}).get("request_id")
            response = envelope_response(exc.status_code, CODE_FOR_STATUS.get(exc.status_code, "error"),
                                         f"no file {cut(scope['path'], 100)}", correlation_id=request_id,
                                         headers={**PAGE_HEADERS, **(exc.headers or {})})
            await response(scope, receive, send)


def page_routes(token_required: bool) -> list[Route | Mount]:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    body = html.replace('data-auth="none"', 'data-auth="token"') if token_required else html

    def index(request: Request) -> Response:
        return Response(body, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    return [Route("/", index, methods=["GET", "HEAD"]),
            Mount("/static", app=StrictHeaders(StaticFiles(directory=STATIC)), name="static")]
