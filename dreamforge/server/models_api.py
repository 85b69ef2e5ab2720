"""/v1/models: the registry over HTTP, in the shape OpenAI's ``client.models.list()`` parses
(``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}, …]}``), each
entry carrying the registry's own fields besides; and POST, which queues a download job."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dreamforge.errors import InvalidRequest
from dreamforge.registry.download import check_public_source
from dreamforge.registry.jobs import DownloadRequest, parse_download
from dreamforge.registry.views import model_object
from dreamforge.server.body import read_json
from dreamforge.server.middleware import VISIBLE
from dreamforge.server.query import NoQuery, parse_query


def _listing(request: Request) -> dict[str, Any]:
    registry = request.state.service.models
    records = registry.all()
    if not any(r.is_default for r in records):
        records.insert(0, registry.settings_default())
    return {"object": "list", "data": [model_object(r) for r in records]}


async def models(request: Request) -> Response:
    """GET: every model; POST: queue a download (202, the job's view, Location of the job)."""
    if request.method == "POST":
        return await create_download(request)
    parse_query(NoQuery, request)
    return JSONResponse(await run_in_threadpool(_listing, request))


def get_model(request: Request) -> Response:
    parse_query(NoQuery, request)
    record = request.state.service.models.find(request.path_params["name"])
    return JSONResponse(model_object(record))


async def create_download(request: Request) -> Response:
    from dreamforge.server.app import idempotency_scope, public_view

    data = await read_json(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not VISIBLE.match(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters",
                             details=[{"field": "Idempotency-Key", "message": "1-255 visible characters"}])
    download: DownloadRequest = parse_download(data)
    # Here, not in the job service: the rule is for URLs from API clients; `df models add` is an
    # operator's own (the worker checks every hop again, as a name may resolve elsewhere by then).
    await run_in_threadpool(check_public_source, download.source, request.state.service.settings)
    submitted = await run_in_threadpool(request.state.service.submit_download, download,
                                        correlation_id=request.state.request_id, idempotency_key=key,
                                        idempotency_scope=idempotency_scope(request))
    headers = {"Location": f"/v1/jobs/{submitted.view.id}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(public_view(submitted.view), status_code=202, headers=headers)
