"""The Starlette app: v1 routes over the job service, each a few lines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dreamforge.errors import InvalidRequest
from dreamforge.schemas import JobStatus, JobView, field_errors, parse_request
from dreamforge.server.body import read_json
from dreamforge.server.errors import EXCEPTION_HANDLERS, envelope
from dreamforge.server.metrics import make_registry, metrics_text
from dreamforge.server.middleware import VISIBLE, RequestContext
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.text import inert

log = logging.getLogger("dreamforge.server")


def _service(request: Request) -> JobService:
    return request.state.service


def public_view(view: JobView) -> dict[str, Any]:
    """The job view an HTTP client gets: nothing about the server's layout. A local artifact's
    file path and file:// URL mean nothing on the client's machine and tell it where the data
    folder is, so they are dropped; a presigned http(s) URL is kept."""
    data = view.model_dump(mode="json")
    for art in data["artifacts"]:
        art["path"] = None
        if not (art.get("url") or "").startswith(("https://", "http://")):
            art["url"] = None
    return data


def _view_response(view: JobView, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(public_view(view), status_code=status, headers=headers)


async def create_job(request: Request) -> Response:
    data = await read_json(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not VISIBLE.match(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters",
                             details=[{"field": "Idempotency-Key", "message": "1-255 visible characters"}])
    job_request = parse_request(data)  # strict: the model refuses `true` or "64" for an integer
    submitted = await run_in_threadpool(_service(request).submit, job_request,
                                        correlation_id=request.state.request_id, idempotency_key=key)
    headers = {"Location": f"/v1/jobs/{submitted.view.id}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    return _view_response(submitted.view, 202, headers)


def get_job(request: Request) -> Response:
    return _view_response(_service(request).get(request.path_params["job_id"]))


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: JobStatus | None = None
    limit: int = Field(default=20, ge=1, le=1000)


def list_jobs(request: Request) -> Response:
    try:
        query = ListQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        details = field_errors(exc)
        raise InvalidRequest(details[0]["message"], details=details) from None
    views = _service(request).list_jobs(query.status.value if query.status else None, query.limit)
    return JSONResponse({"jobs": [public_view(v) for v in views]})


def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(request: Request) -> Response:
    """Open to anyone who can reach the port, so it names the backend that is down and nothing
    more: the reason (a host, a path) goes to the server's log."""
    checks = _service(request).readiness()
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = [k for k, v in checks.items() if v != "ok"]
    for name in down:
        log.warning("[request_id=%s] not ready: %s: %s", request.state.request_id, name,
                    inert(checks[name], 500))
    return envelope(request, 503, "service_unavailable", f"not ready: {', '.join(down)} unreachable",
                    {k: "ok" if v == "ok" else "unreachable" for k, v in checks.items()})


def metrics(request: Request) -> Response:
    return Response(metrics_text(request.state.metrics),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def jobs(request: Request) -> Response:
    """One route for both methods, so a 405 on /v1/jobs names both in its Allow header."""
    if request.method == "POST":
        return await create_job(request)
    return await run_in_threadpool(list_jobs, request)


ROUTES = [
    Route("/v1/jobs", jobs, methods=["GET", "POST"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def create_app(settings: Settings, *, service: JobService | None = None,
               embedded_worker: bool = False) -> Starlette:
    """The API. ``embedded_worker`` also runs a worker thread in this process (the embedded
    default of ``df serve``, so that one command is a working system)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        svc = service or JobService.from_settings(settings)
        worker = None
        if embedded_worker:
            from dreamforge.runners import make_runner
            from dreamforge.worker import EmbeddedWorker

            worker = EmbeddedWorker(svc, make_runner(settings))
            worker.start()
        try:
            yield {"service": svc, "metrics": make_registry(svc)}
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop)
            if service is None:
                svc.close()

    token = settings.api_token.get_secret_value() if settings.api_token else None
    return Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS,
                     middleware=[Middleware(RequestContext, api_token=token)])
