"""RemoteService: the job service's verbs over HTTP, for a CLI whose jobs live behind a `df serve`
elsewhere (``DF_API_URL``, with ``DF_API_TOKEN`` as the bearer token).

It answers as ``JobService`` does, so the CLI's commands need not know which one they hold: the
same views (parsed from the API's JSON with the same pydantic models), the same errors (mapped
from the envelope's code: ``not_found`` is ``JobNotFound``, a 409 is ``JobStateError``, ...),
and the same events and log lines. A server that can't be reached is ``BackendUnavailable``
(``api_unreachable``), as a job store that can't be reached is locally.

Connection errors are retried, with backoff, for up to ``DF_API_RETRY_S``: reads always, and
writes because every POST carries an ``Idempotency-Key`` made once per call (one CLI command), so
a submit sent again after a lost reply gets the job the first one made, and never a second job.
httpx is imported on first use: ``df --help`` never pays for it.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections.abc import Generator
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from dreamforge import __version__
from dreamforge.errors import (
    BackendUnavailable,
    ConfigError,
    DreamForgeError,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    JobStateError,
    StorageError,
)
from dreamforge.schemas import EventView, GenerateRequest, JobView, LogLine
from dreamforge.service import JobPage, Submitted
from dreamforge.settings import Settings, mask_url
from dreamforge.status import is_job_id
from dreamforge.text import cut

if TYPE_CHECKING:
    import httpx

    from dreamforge.inputs import InputImage

M = TypeVar("M", bound=BaseModel)

# The envelope's codes, as the errors the job service raises for the same cases.
ERRORS: dict[str, type[DreamForgeError]] = {
    "not_found": JobNotFound,
    "artifact_not_found": JobNotFound,
    "validation_error": InvalidRequest,
    "invalid_json": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "idempotency_conflict": IdempotencyConflict,
    "service_unavailable": BackendUnavailable,
    "storage_unavailable": BackendUnavailable,
}
# Codes this table does not know (a newer server's), by their HTTP status.
ERRORS_BY_STATUS: dict[int, type[DreamForgeError]] = {
    404: JobNotFound, 409: JobStateError, 422: InvalidRequest, 503: BackendUnavailable}
# The errors whose message is the job service's own: shown as the local CLI shows them.
LOCAL_ALIKE = (JobNotFound, InvalidRequest, JobStateError, IdempotencyConflict)
PAGE = 1000  # the most events, log lines or jobs one request of the API returns
# An open event stream hears at least a keep-alive every 15 s (server/sse.py); a read that waits
# this long means the connection is dead, and it is opened again.
STREAM_READ_S = 45.0
MAX_BACKOFF_S = 2.0
# The last part of an artifact's key: `df artifacts get` names its file so. From a server, it must be
# a plain file name (no folder, no dot file), whatever the server says.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")


class WorkerView(BaseModel):
    id: str
    hostname: str
    pid: int
    heartbeat_at: str


class StatusView(BaseModel):
    """GET /v1/status, checked before the CLI prints it."""

    jobs: dict[str, int]
    queue_depth: int
    workers: list[WorkerView]


class _Patience:
    """Waits between tries after connection errors, longer each time (with jitter), until
    ``limit_s`` have passed since the first error after the last success."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.reset()

    def reset(self) -> None:
        self.since: float | None = None
        self.delay = 0.1

    def wait(self) -> bool:
        """Sleep before the next try; False when time is up (then don't try again)."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since + self.delay > self.limit_s:
            return False
        self.pause()
        return True

    def pause(self) -> None:
        time.sleep(self.delay * random.uniform(0.75, 1.0))  # noqa: S311 (jitter, not a secret)
        self.delay = min(self.delay * 2, MAX_BACKOFF_S)


class UploadView(BaseModel):
    """POST /v1/uploads' answer."""

    id: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str
    content_type: str


class RemoteService:
    """The verbs of ``JobService`` that the CLI's doors use, answered by a `df serve` over HTTP.

    ``transport`` replaces httpx's own (tests put one in that drops replies)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0,
                 retry_s: float = 30.0, transport: httpx.BaseTransport | None = None):
        import httpx

        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or parsed.query \
                or parsed.fragment:
            raise ConfigError(f"DF_API_URL must be an http:// or https:// URL such as http://gpu-box:8001, "
                              f"not {cut(mask_url(url), 100)!r}")
        self.url = url.strip().rstrip("/")
        self.shown_url = mask_url(self.url)
        self.token = token
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.transport = transport
        # One key per POST this object makes, the same on each of its tries (see the module's doc).
        self._key_prefix = f"df-cli-{uuid.uuid4().hex}"
        self._posts = 0
        # What artifact_bytes needs to fetch a key: from the views this object returned.
        self._artifacts: dict[str, tuple[str, int, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> RemoteService:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(url or settings.api_url or "", token=token, timeout_s=settings.api_timeout_s,
                   retry_s=settings.api_retry_s)

    @cached_property
    def http(self) -> httpx.Client:
        import httpx

        headers = {"User-Agent": f"dreamforge-cli/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout_s,
                            transport=self.transport)

    def close(self) -> None:
        if "http" in self.__dict__:
            self.http.close()

    # -- the doors' commands ----------------------------------------------------------------------
    def submit(self, request: GenerateRequest) -> Submitted:
        body = request.model_dump(mode="json", exclude_none=True)
        if request.type != "generate":  # unset, the server takes the input image's size
            for name in {"width", "height"} - request.model_fields_set:
                del body[name]
        response = self._post("/v1/jobs", json=body)
        return Submitted(self._job(response), response.headers.get("idempotent-replayed") != "true")

    def cancel(self, job_id: str) -> JobView:
        return self._job(self._post(self._job_path(job_id, "cancel")))

    def retry(self, job_id: str) -> JobView:
        return self._job(self._post(self._job_path(job_id, "retry")))

    def rerun(self, job_id: str, *, new_seed: bool = False) -> Submitted:
        """POST /v1/jobs/{id}/rerun (a server with reruns: `df jobs rerun`)."""
        response = self._post(self._job_path(job_id, "rerun"), json={"new_seed": new_seed})
        return Submitted(self._job(response), response.headers.get("idempotent-replayed") != "true")

    def retry_failed(self, *, error_code: str | None = None, since: datetime | None = None,
                     limit: int = 1000) -> list[JobView]:
        """As the job service does it: the failed jobs that match, each retried."""
        page = self.page_jobs(["failed"], error_code=error_code, created_after=since, limit=limit)
        return [self.retry(view.id) for view in page.jobs]

    # -- the doors' queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobView:
        return self._job(self._get(self._job_path(job_id)))

    def page_jobs(self, statuses: str | list[str] | None = None, job_type: str | None = None, *,
                  created_after: datetime | None = None, created_before: datetime | None = None,
                  error_code: str | None = None, cursor: str | None = None, limit: int = 20) -> JobPage:
        """One page of GET /v1/jobs; --all follows its cursors, one page per call, as locally."""
        params: dict[str, Any] = {"limit": limit}
        if statuses:
            params["status"] = [statuses] if isinstance(statuses, str) else list(statuses)
        optional = {"type": job_type, "code": error_code, "cursor": cursor,
                    "created_after": created_after.isoformat() if created_after else None,
                    "created_before": created_before.isoformat() if created_before else None}
        params |= {k: v for k, v in optional.items() if v is not None}
        data = self._json(self._get("/v1/jobs", params=params))
        jobs = [self._record(self._parse(JobView, v)) for v in data.get("jobs", [])]
        return JobPage(jobs, data.get("next_cursor"))

    def events(self, job_id: str, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's history after event ``after_id``, oldest first (every page of it)."""
        found: list[dict[str, Any]] = []
        while limit is None or len(found) < limit:
            ask = PAGE if limit is None else min(PAGE, limit - len(found))
            data = self._json(self._get(self._job_path(job_id, "events"),
                                        params={"after": after_id, "limit": ask}))
            page = [self._event(e) for e in data.get("events", [])]
            found += page
            if len(page) < ask:
                break
            after_id = page[-1]["id"]
        return found

    def follow_events(self, job_id: str, after_id: int = 0, poll_s: float = 0.1
                      ) -> Generator[list[dict[str, Any]], None, None]:
        """The job's events after ``after_id`` as they come, one at a time, from its event stream
        (SSE). A dropped stream (the server restarting, a proxy's timeout) is opened again with
        Last-Event-ID, so no event is lost or seen twice. Never ends by itself, as the job
        service's doesn't. ``poll_s`` is unused: the server pushes."""
        import httpx
        from httpx_sse import SSEError, connect_sse

        path = self._job_path(job_id, "events")
        timeout = httpx.Timeout(self.timeout_s, read=max(self.timeout_s, STREAM_READ_S))
        patience = _Patience(self.retry_s)
        while True:
            try:
                with connect_sse(self.http, "GET", path, headers={"Last-Event-ID": str(after_id)},
                                 timeout=timeout) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                        self._raise_for(source.response)
                    patience.reset()
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue
                        event = self._event(self._loads(sse.data))
                        if event["job_id"] != job_id or event["id"] <= after_id:
                            continue  # not this job's, or seen already: nothing to show
                        after_id = event["id"]
                        yield [event]
            except httpx.TransportError as exc:
                if not patience.wait():
                    self._unreachable(exc)
                continue
            except SSEError:
                self._bad_answer("an event stream")
            # The server ended the stream before the job ended (it is stopping, say): what it had
            # not sent yet, then a new stream, after a pause that grows while this repeats.
            batch = self.events(job_id, after_id)
            if batch:
                after_id = batch[-1]["id"]
            yield batch
            patience.pause()

    def logs(self, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        """The job's log lines after event ``after_id`` (every page of them)."""
        found: list[dict[str, Any]] = []
        while True:
            data = self._json(self._get(self._job_path(job_id, "logs"),
                                        params={"after": after_id, "limit": PAGE}))
            page = [self._parse(LogLine, line).model_dump() for line in data.get("lines", [])]
            found += page
            if len(page) < PAGE:
                return found
            after_id = page[-1]["id"]

    def artifact_bytes(self, s3_key: str) -> bytes:
        """An artifact's bytes, through the API's content endpoint (whatever store holds it),
        checked against its sha256. ``s3_key`` is one of a view this object returned."""
        if s3_key not in self._artifacts:
            raise JobNotFound(f"no artifact {cut(s3_key, 200)!r} among the jobs read from {self.shown_url}",
                              code="artifact_not_found")
        job_id, item, sha256 = self._artifacts[s3_key]
        # Through the API rather than to a presigned URL: the object store may not be reachable
        # from where this client runs.
        data = self._get(self._job_path(job_id, "artifacts", str(item), "content"),
                         params={"redirect": "false"}).content
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"artifact {item} of job {job_id} arrived damaged: its sha256 is not "
                               "the one the job recorded; try again")
        return data

    def upload_image(self, data: bytes, content_type: str | None = None) -> InputImage:
        """Store an input image on the server (POST /v1/uploads), as JobService.upload_image."""
        from dreamforge.inputs import EXTENSIONS, InputImage, upload_key

        sent = content_type or "application/octet-stream"
        view = self._parse(UploadView, self._json(self._post("/v1/uploads", files={"file": ("image", data, sent)})))
        if view.sha256 != hashlib.sha256(data).hexdigest() or view.format not in EXTENSIONS:
            self._bad_answer("with the upload's own sha256 and format")
        return InputImage(view.sha256, upload_key(view.sha256, view.format), view.width, view.height,
                          view.format, view.size_bytes)

    def live_workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.status()["workers"]
        return workers

    def status(self) -> dict[str, Any]:
        return self._parse(StatusView, self._json(self._get("/v1/status"))).model_dump()

    # -- HTTP ---------------------------------------------------------------------------------------
    def _job_path(self, job_id: str, *rest: str) -> str:
        # A job id is a canonical UUID: anything else names no job (the store's own answer), and
        # never reaches a URL.
        if not is_job_id(job_id):
            raise JobNotFound(f"no job with id {cut(job_id, 80)!r}")
        return "/".join(("/v1/jobs", job_id, *rest))

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("GET", path, **kwargs)

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        self._posts += 1
        return self._send("POST", path, headers={"Idempotency-Key": f"{self._key_prefix}-{self._posts}"},
                          **kwargs)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, sent again after a connection error (every request this object sends
        may be: GETs, and POSTs with their Idempotency-Key) until ``retry_s`` is up."""
        import httpx

        patience = _Patience(self.retry_s)
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if patience.wait():
                    continue
                self._unreachable(exc)
            except httpx.HTTPError:  # a body that does not decode, say
                self._bad_answer(f"{method} {path}")
            if not 200 <= response.status_code < 300:  # redirects are not followed: an error too
                self._raise_for(response)
            return response

    def _raise_for(self, response: httpx.Response) -> NoReturn:
        """The envelope as the job service's error; anything else as what it is."""
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            raise DreamForgeError(f"HTTP {response.status_code} from {self.shown_url}{cut(response.url.path, 100)}"
                                  ", which is not an answer of the DreamForge API",
                                  code=f"http_{response.status_code}") from None
        message = cut(message, 300)
        if response.status_code == 401:
            hint = ("the server refused DF_API_TOKEN" if self.token
                    else "set DF_API_TOKEN to the server's token")
            raise ConfigError(f"{code}: {message} ({hint})", code=code)
        kind = ERRORS.get(code) or ERRORS_BY_STATUS.get(response.status_code, DreamForgeError)
        if not issubclass(kind, LOCAL_ALIKE):
            message = f"{code}: {message}"
            if response.status_code >= 500 and error.get("correlation_id"):
                message += f" (request id {cut(str(error['correlation_id']), 100)})"
        raise kind(message, code=code, details=error.get("details"))

    def _unreachable(self, exc: Exception) -> NoReturn:
        reason = cut(str(exc) or type(exc).__name__, 200)
        raise BackendUnavailable(f"can't reach the DreamForge API at {self.shown_url} ({reason}); "
                                 "is `df serve` running there?", code="api_unreachable") from None

    def _bad_answer(self, what: str) -> NoReturn:
        raise DreamForgeError(f"the server at {self.shown_url} did not answer {what} as the DreamForge "
                              "API does: is DF_API_URL its address?", code="bad_response")

    def _loads(self, text: str) -> Any:
        import json

        try:
            return json.loads(text)
        except ValueError:
            self._bad_answer("with JSON")

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        data = self._loads(response.text)
        if not isinstance(data, dict):
            self._bad_answer("with a JSON object")
        return data

    def _parse(self, model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError:
            self._bad_answer(f"with a {model.__name__}")

    def _job(self, response: httpx.Response) -> JobView:
        return self._record(self._parse(JobView, self._json(response)))

    def _record(self, view: JobView) -> JobView:
        for art in view.artifacts:
            if not FILE_NAME.match(art.s3_key.rpartition("/")[2]):
                self._bad_answer(f"with an artifact key that ends in a plain file name ({cut(art.s3_key, 100)!r})")
            self._artifacts[art.s3_key] = (view.id, art.item_index, art.sha256)
        return view

    def _event(self, data: Any) -> dict[str, Any]:
        """An event as the job service gives it (``at`` a datetime; no ``job_type``)."""
        return self._parse(EventView, data).model_dump(exclude={"job_type"})

