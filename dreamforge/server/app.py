"""The Starlette app: v1 routes over the job service, each a few lines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dreamforge.errors import InvalidRequest
from dreamforge.schemas import JobView, parse_request, parse_rerun
from dreamforge.server import content, models_api, openai_images, uploads_api, watch, web
from dreamforge.server.body import read_json
from dreamforge.server.errors import EXCEPTION_HANDLERS, envelope
from dreamforge.server.lane import SubmitLane
from dreamforge.server.metrics import make_registry, metrics_text
from dreamforge.server.middleware import VISIBLE, RequestContext
from dreamforge.server.query import ListQuery, NoQuery, parse_query
from dreamforge.server.sse import HEARTBEAT_S
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.text import inert

log = logging.getLogger("dreamforge.server")


def _service(request: Request) -> JobService:
    return request.state.service


def public_model(view: JobView) -> JobView:
    """The job view an HTTP client gets: nothing about the server's layout. A local artifact's
    file path and file:// URL mean nothing on the client's machine and tell it where the data
    folder is, so they are dropped; a presigned http(s) URL is kept."""
    if all(a.path is None and (a.url or "").startswith(("https://", "http://")) for a in view.artifacts):
        return view
    return view.model_copy(update={"artifacts": [
        a.model_copy(update={"path": None, "url": a.url if (a.url or "").startswith(("https://", "http://"))
                             else None}) for a in view.artifacts]})


def public_view(view: JobView) -> dict[str, Any]:
    """``public_model`` as JSON-ready data (for a list, or a body with more in it)."""
    return public_model(view).model_dump(mode="json")


def public_json(view: JobView) -> bytes:
    """``public_model`` as a response body, serialized by pydantic's own encoder: through dicts
    and the json module it took 21 us, this way 7 us (timed in process, issue 18's second pass)."""
    return public_model(view).model_dump_json().encode()


def _view_response(view: JobView, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(public_json(view), status_code=status, headers=headers, media_type="application/json")


def idempotency_scope(request: Request) -> str:
    """Whose keys an Idempotency-Key lives among: the API token's holder, or, with no token,
    the client's address (two clients that pick the same key never get each other's job)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "token:" + token.strip()
    return "client:" + (request.client.host if request.client else "")


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not VISIBLE.match(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters",
                             details=[{"field": "Idempotency-Key", "message": "1-255 visible characters"}])
    return key


async def create_job(request: Request) -> Response:
    data = await read_json(request)
    key = idempotency_key(request)
    job_request = parse_request(data)  # strict: the model refuses `true` or "64" for an integer
    submitted = await request.state.submit_lane.submit(job_request, correlation_id=request.state.request_id,
                                                       idempotency_key=key,
                                                       idempotency_scope=idempotency_scope(request))
    headers = {"Location": f"/v1/jobs/{submitted.view.id}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    return _view_response(submitted.view, 202, headers)


def get_job(request: Request) -> Response:
    parse_query(NoQuery, request)
    return _view_response(_service(request).get(request.path_params["job_id"]))


def list_jobs(request: Request) -> Response:
    q = parse_query(ListQuery, request)
    page = _service(request).page_jobs([s.value for s in q.status] if q.status else None, q.type,
                                       created_after=q.created_after, created_before=q.created_before,
                                       error_code=q.code, cursor=q.cursor, limit=q.limit)
    return JSONResponse({"jobs": [public_view(v) for v in page.jobs], "next_cursor": page.next_cursor})


def cancel_job(request: Request) -> Response:
    """Idempotent: a job canceled already gives the same view again."""
    parse_query(NoQuery, request)
    return _view_response(_service(request).cancel(request.path_params["job_id"]))


def retry_job(request: Request) -> Response:
    """A failed or canceled job, run again as a new job (202, Location of the new job). With an
    Idempotency-Key, a repeated request (a client retrying after a lost reply) gets the same new job."""
    parse_query(NoQuery, request)
    view = _service(request).retry(request.path_params["job_id"], correlation_id=request.state.request_id,
                                   idempotency_key=idempotency_key(request),
                                   idempotency_scope=idempotency_scope(request))
    return _view_response(view, 202, {"Location": f"/v1/jobs/{view.id}"})


def status(request: Request) -> Response:
    """What `df status` shows: job counts by status, queue depth, live workers."""
    parse_query(NoQuery, request)
    return JSONResponse(_service(request).status())


async def rerun_job(request: Request) -> Response:
    """Any job's recorded parameters as a new job (202, Location of the new job). The body is
    optional: {"new_seed": true} draws a new seed. Idempotency-Key as for POST /v1/jobs."""
    parse_query(NoQuery, request)
    key = idempotency_key(request)
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    options = parse_rerun(await read_json(request)) if has_body else parse_rerun({})
    submitted = await run_in_threadpool(_service(request).rerun, request.path_params["job_id"],
                                        new_seed=options.new_seed, correlation_id=request.state.request_id,
                                        idempotency_key=key, idempotency_scope=idempotency_scope(request))
    headers = {"Location": f"/v1/jobs/{submitted.view.id}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    return _view_response(submitted.view, 202, headers)


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
    Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}/rerun", rerun_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}/events", watch.job_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/logs", watch.job_logs, methods=["GET"]),
    Route("/v1/jobs/{job_id}/artifacts", content.artifacts, methods=["GET"]),
    Route("/v1/jobs/{job_id}/artifacts/{item:int}/content", content.content, methods=["GET"]),
    Route("/v1/events", watch.all_events, methods=["GET"]),
    Route("/v1/models", models_api.models, methods=["GET", "POST"]),
    Route("/v1/models/{name}", models_api.get_model, methods=["GET"]),
    Route("/v1/uploads", uploads_api.create_upload, methods=["POST"]),
    Route("/v1/uploads/{upload_id}", uploads_api.get_upload, methods=["GET"]),
    Route("/v1/uploads/{upload_id}/content", uploads_api.upload_content, methods=["GET"]),
    Route("/v1/status", status, methods=["GET"]),
    Route(openai_images.PATH, openai_images.generations, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def create_app(settings: Settings, *, service: JobService | None = None,
               embedded_worker: bool = False, heartbeat_s: float = HEARTBEAT_S) -> Starlette:
    """The API. ``embedded_worker`` also runs a worker thread in this process (the embedded
    default of ``df serve``, so that one command is a working system). ``heartbeat_s``: the
    quiet after which an event stream sends a keep-alive comment."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        svc = service or JobService.from_settings(settings)
        worker = None
        if embedded_worker:
            from dreamforge.runners import make_runner
            from dreamforge.worker import EmbeddedWorker

            worker = EmbeddedWorker(svc, make_runner(settings))
            worker.start()
        # The embedded worker sends webhooks itself; a server without one sends them here.
        deliverer = None if embedded_worker else svc.webhook_deliverer()
        if deliverer is not None:
            deliverer.start()
        feed = svc.event_feed()  # one per process, awake while someone watches: every stream waits on it
        lane = SubmitLane(svc)
        try:
            yield {"service": svc, "metrics": make_registry(svc), "feed": feed, "submit_lane": lane,
                   "heartbeat_s": heartbeat_s}
        finally:
            await run_in_threadpool(lane.close)
            await feed.stop()
            if deliverer is not None:
                await run_in_threadpool(deliverer.stop)
            if worker is not None:
                await run_in_threadpool(worker.stop)
            if service is None:
                svc.close()

    token = settings.api_token.get_secret_value() if settings.api_token else None
    return Starlette(routes=[*ROUTES, *web.page_routes(token is not None)], lifespan=lifespan,
                     exception_handlers=EXCEPTION_HANDLERS, middleware=[Middleware(RequestContext, api_token=token)])
