"""The job service: the one core that the CLI, the HTTP API and the workers all call.

It is the only code that decides a job's moves and their policy (see ``moves.py``): the doors
submit and read through it, the code that runs a job asks it for every move and every write
(each fenced by the holder's worker id and attempt), and the workers' heartbeat and reaper threads
ask it to reclaim what silent holders left. The job store carries moves out and decides nothing;
the queue only rings the bell.

Backends are made on first use, so a command that only reads jobs never imports the queue's or
the artifact store's client libraries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from dreamforge import moves
from dreamforge.errors import (
    BackendUnavailable,
    DreamForgeError,
    InvalidRequest,
    JobNotFound,
    JobStateError,
    ModelNotFound,
    ModelRejected,
    StorageError,
)
from dreamforge.moves import Fence, JobFailure
from dreamforge.schemas import MAX_SEED, GenerateRequest, JobView, request_of
from dreamforge.settings import Settings
from dreamforge.status import JobStatus, is_job_id
from dreamforge.text import cut

if TYPE_CHECKING:
    from dreamforge.artifact_store import ArtifactStore
    from dreamforge.feed import EventFeed
    from dreamforge.inputs import InputImage
    from dreamforge.job_store import JobStore
    from dreamforge.queue import JobQueue
    from dreamforge.registry import ModelRegistry
    from dreamforge.registry.jobs import DownloadRequest
    from dreamforge.webhooks.deliverer import Deliverer
    from dreamforge.webhooks.store import DeliveryStore

log = logging.getLogger(__name__)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Submitted:
    view: JobView
    created: bool


@dataclass
class JobPage:
    jobs: list[JobView]
    next_cursor: str | None


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not is_job_id(job_id):
            raise ValueError("not a job id")
        return datetime.fromisoformat(created), job_id
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("cursor is not one this server gave out",
                             details=[{"field": "cursor", "message": "use next_cursor as given"}]) from exc


def log_line(event: dict[str, Any]) -> dict[str, Any] | None:
    """An event as a log line, or None for progress (the bar, not the log)."""
    payload, kind = event["payload"], event["kind"]
    if kind == "progress":
        return None
    if kind == "log":
        level = payload.get("level", "info")
        extra = {k: v for k, v in payload.items() if k not in ("level", "message")}
        message = payload.get("message", "") + "".join(f" {k}={v}" for k, v in extra.items())
    elif kind == "error":
        level, message = "error", f"{payload.get('code')}: {payload.get('message')}"
    else:
        level = "info"
        extra = {k: v for k, v in payload.items() if k not in ("status", "timings")}
        message = f"status {payload.get('status')}" + "".join(f" {k}={v}" for k, v in extra.items())
    return {"id": event["id"], "at": event["at"], "level": level, "message": message}


@dataclass
class Claim:
    """What a worker gets when it wins a job: the fence for every later write, and the job."""

    fence: Fence
    params: dict[str, Any]
    correlation_id: str | None
    # From the job's creation to this claim, on the job store's clock.
    queued_s: float | None = None


def _webhook_outbox(settings: Settings) -> Any:
    from dreamforge.webhooks.outbox import Outbox

    return Outbox.from_settings(settings)


def _schema_store(settings: Settings) -> JobStore:
    from dreamforge.job_store import JobStore

    return JobStore(settings.database_url, pool_size=1, max_overflow=0)


def upgrade_schema(settings: Settings) -> tuple[str | None, str]:
    """`df db upgrade`: migrate the job store to this version's head (under the schema lock)."""
    store = _schema_store(settings)
    try:
        return store.upgrade_schema()
    finally:
        store.close()


def schema_revision(settings: Settings) -> str | None:
    """`df db current`: the job store's revision, without upgrading it."""
    store = _schema_store(settings)
    try:
        return store.schema_revision()
    finally:
        store.close()


class JobService:
    def __init__(self, settings: Settings, job_store: JobStore, queue: JobQueue | None = None,
                 artifact_store: ArtifactStore | None = None):
        self.settings = settings
        self.job_store = job_store
        self._touched: dict[str, float] = {}  # model name → when this process last recorded its use
        job_store.outbox = _webhook_outbox(settings)
        if queue is not None:
            self.__dict__["queue"] = queue
        if artifact_store is not None:
            self.__dict__["artifact_store"] = artifact_store

    @classmethod
    def from_settings(cls, settings: Settings) -> JobService:
        from dreamforge.job_store import JobStore

        job_store = JobStore(settings.database_url, pool_size=settings.db_pool_size,
                             max_overflow=settings.db_max_overflow,
                             pre_ping=settings.db_pool_pre_ping)
        if settings.db_auto_upgrade:
            job_store.upgrade_schema()
        else:
            job_store.require_current_schema()
        return cls(settings, job_store)

    @cached_property
    def queue(self) -> JobQueue:
        from dreamforge.queue import JobQueue

        return JobQueue(self.settings.queue_url, self.settings.queue_name)

    @cached_property
    def artifact_store(self) -> ArtifactStore:
        from dreamforge.artifact_store import make_artifact_store

        return make_artifact_store(self.settings)

    @cached_property
    def models(self) -> ModelRegistry:
        """The model registry (dreamforge/registry): list, add, resolve a job's model."""
        from dreamforge.registry import ModelRegistry

        return ModelRegistry(self.settings, self.job_store)

    def close(self) -> None:
        self.job_store.close()

    # -- the doors' commands ----------------------------------------------------------------------
    def submit(self, request: GenerateRequest, *, correlation_id: str | None = None,
               idempotency_key: str | None = None, idempotency_scope: str = "",
               retry_of: str | None = None, rerun_of: str | None = None) -> Submitted:
        """Record a queued job and ring the queue. Either both happen or neither does.

        An idempotency key names one job within its scope (the API token, or the client without
        one) for DF_IDEMPOTENCY_TTL; the same key in another scope is another key. A rerun's
        request is its parameters and the job it reruns."""
        self._check_webhook(request)
        self._check_model(request.model)
        self._check_loras(request)
        request, inputs = self._resolve_inputs(request)
        params = request.model_dump(mode="json")
        if inputs:
            params["inputs"] = inputs
        return self._queue_job(params, request.type, correlation_id=correlation_id,
                               idempotency_key=idempotency_key, idempotency_scope=idempotency_scope,
                               retry_of=retry_of, rerun_of=rerun_of)

    def _queue_job(self, params: dict[str, Any], job_type: str, *, correlation_id: str | None,
                   idempotency_key: str | None, idempotency_scope: str, retry_of: str | None,
                   rerun_of: str | None = None) -> Submitted:
        """Record a queued job and ring the queue: both happen or neither does. The idempotency
        key's request is the parameters (and the job a rerun repeats)."""
        key_hash = _sha256(f"{_sha256(idempotency_scope)}:{idempotency_key}") if idempotency_key else None
        hashed: Any = params if rerun_of is None else {"params": params, "rerun_of": rerun_of}
        request_hash = _sha256(json.dumps(hashed, sort_keys=True)) if idempotency_key else None
        job, created = self.job_store.create(params, correlation_id=correlation_id,
                                             idempotency_key_hash=key_hash,
                                             request_hash=request_hash, retry_of=retry_of,
                                             rerun_of=rerun_of, job_type=job_type,
                                             idempotency_ttl_s=self.settings.idempotency_ttl.total_seconds())
        if created:
            try:
                self.queue.enqueue(job["id"])
            except DreamForgeError:
                # The push may have landed with its reply lost: then a worker may hold the job
                # already, and it stays (and runs). Otherwise nothing is left behind.
                if not self.job_store.delete_if_queued(job["id"]):
                    log.warning("[job=%s] the queue failed but a worker already took the job",
                                job["id"])
                raise
        return Submitted(self._view(job), created)

    def _check_model(self, name: str | None) -> None:
        """A job names a model the registry has (and a checkpoint, not a LoRA): refused at
        submit, before anything is queued."""
        if name is None:
            return
        try:
            self.models.resolve(name)  # a LoRA's name: ModelRejected (not_a_checkpoint)
        except (ModelNotFound, ModelRejected) as exc:
            code = exc.code if isinstance(exc, ModelRejected) else None
            raise InvalidRequest(exc.message, code=code,
                                 details=[{"field": "model", "message": exc.message}]) from None

    def _check_loras(self, request: GenerateRequest) -> None:
        """Every LoRA a job names is registered (and a LoRA): refused at submit otherwise."""
        for index, lora in enumerate(request.loras or []):
            try:
                self.models.resolve_lora(lora.name)
            except (ModelNotFound, ModelRejected) as exc:  # a checkpoint's name: not_a_lora
                code = exc.code if isinstance(exc, ModelRejected) else None
                raise InvalidRequest(exc.message, code=code, details=[{"field": f"loras.{index}.name",
                                                                       "message": exc.message}]) from None

    def _resolve_inputs(self, request: GenerateRequest) -> tuple[GenerateRequest, dict[str, Any]]:
        """An img2img or inpaint job's images, resolved now (an unknown one, or a mask of another
        size than its image: 422, nothing queued): the job keeps their sha256 and key under
        ``inputs``. Without width and height, the job's size is the init image's, scaled down to
        fit 2048 and rounded down to a multiple of 8."""
        from dreamforge.inputs import check_mask, resolve_input

        if request.type == "generate":
            return request, {}
        assert request.init_image is not None  # the request's validator requires it
        found = {"init_image": resolve_input(self, _ref(request.init_image))}
        if request.mask_image is not None:
            found["mask_image"] = resolve_input(self, _ref(request.mask_image))
            check_mask(found["init_image"], found["mask_image"])
        inputs = {name: {"sha256": image.sha256, "key": image.key, "width": image.width,
                         "height": image.height, "format": image.format} for name, image in found.items()}
        if not {"width", "height"} & request.model_fields_set:
            width, height = fitted_size(found["init_image"].width, found["init_image"].height)
            request = request.model_copy(update={"width": width, "height": height})
        return request, inputs

    def submit_download(self, request: DownloadRequest, *, correlation_id: str | None = None,
                        idempotency_key: str | None = None, idempotency_scope: str = "",
                        retry_of: str | None = None) -> Submitted:
        """Queue a model download (a job of type ``download``), after the checks that need no
        network: the URL's scheme, the name (made from the URL when absent) free, no credential
        in the URL (the job keeps its URL; a hub's token belongs in DF_MODELS_DOWNLOAD_TOKEN)."""
        from urllib.parse import urlsplit

        from dreamforge.registry.records import has_credentials

        try:
            urlsplit(request.source)
        except ValueError as exc:  # e.g. an unclosed [ in the host: "Invalid IPv6 URL"
            raise InvalidRequest(f"source is not a URL that can be read: {exc}",
                                 details=[{"field": "source", "message": str(exc)}]) from None
        if has_credentials(request.source):
            raise InvalidRequest("the URL carries a credential (a password or a token parameter), which the "
                                 "job would keep: set DF_MODELS_DOWNLOAD_TOKEN on the workers instead",
                                 details=[{"field": "source", "message": "no credentials in the URL"}])
        name, _ = self.models.plan_download(request.source, request.name)
        params = request.model_copy(update={"name": name}).model_dump(mode="json")
        return self._queue_job(params, "download", correlation_id=correlation_id,
                               idempotency_key=idempotency_key, idempotency_scope=idempotency_scope,
                               retry_of=retry_of)

    def cancel(self, job_id: str) -> JobView:
        """queued → canceled at once (no worker will run it); running → canceled, and its holder
        stops at its next step, storing nothing. A job canceled already gives the same answer
        again; one that succeeded or failed can't be canceled (JobStateError)."""
        for _ in range(3):  # the job may move between the read and the move: read it again
            state = self.job_store.job_state(job_id) if is_job_id(job_id) else None
            if state is None:
                raise JobNotFound(f"no job with id {cut(job_id, 80)!r}")
            source = JobStatus(state)
            if source is JobStatus.canceled:
                return self.get(job_id)
            if source.is_terminal():
                raise JobStateError(f"job {job_id} has {source.value} and can't be canceled",
                                    code="job_not_cancelable", details={"status": source.value})
            if self.job_store.apply(moves.cancel(job_id, source)) is not None:
                log.info("[job=%s] canceled while %s", job_id, source.value)
                return self.get(job_id)
        raise BackendUnavailable("the job kept changing state; try again")

    def retry(self, job_id: str, *, correlation_id: str | None = None, idempotency_key: str | None = None,
              idempotency_scope: str = "") -> JobView:
        """A failed or canceled job, run again: a new job with the same parameters (its recorded
        seed included, so the same image) that names the one it retries. A new job rather than a
        new attempt of the old one: the old record stays as it ended (its error, its events), and
        the new one has a history of its own. Succeeded, queued and running jobs: JobStateError.
        An idempotency key names one retry of this job (see ``submit``)."""
        job = self.job_store.job(job_id)
        if job["status"] not in (JobStatus.failed, JobStatus.canceled):
            raise JobStateError(f"job {job_id} has {job['status']}; only failed or canceled jobs are retried",
                                code="job_not_retryable", details={"status": job["status"]})
        if job["type"] == "download":
            from dreamforge.registry.jobs import DownloadRequest

            return self.submit_download(DownloadRequest.model_validate(job["params"]),
                                        correlation_id=correlation_id, retry_of=job_id).view
        request = request_of(job["params"])
        return self.submit(request, correlation_id=correlation_id, retry_of=job_id,
                           idempotency_key=idempotency_key,
                           idempotency_scope=f"{idempotency_scope}\nretry:{job_id}").view

    def rerun(self, job_id: str, *, new_seed: bool = False, correlation_id: str | None = None,
              idempotency_key: str | None = None, idempotency_scope: str = "") -> Submitted:
        """Any job's recorded parameters (its seed and scheduler included), submitted again as a new
        job that names it (``rerun_of``): on the same machine and model, the same images, byte for
        byte. ``new_seed``: the same request with a seed drawn afresh (as for a new job). A job
        whose seed is not drawn yet (still queued) has nothing recorded to repeat: JobStateError,
        unless ``new_seed``."""
        job = self.job_store.job(job_id)
        if job["type"] == "download":
            raise JobStateError(f"job {job_id} is a model download, which has no images to make again "
                                "(POST /v1/models downloads again)", code="job_not_rerunnable",
                                details={"type": "download"})
        params = dict(job["params"])
        if new_seed:
            params["seed"] = None
        elif params.get("seed") is None:
            raise JobStateError(f"job {job_id} has no seed yet ({job['status']}): rerun it once it has "
                                "run, or with new_seed", code="job_not_rerunnable",
                                details={"status": job["status"]})
        if params.get("model") is None:
            params["model"] = self._recorded_model(job)
        request = request_of(params)
        return self.submit(request, correlation_id=correlation_id, idempotency_key=idempotency_key,
                           idempotency_scope=idempotency_scope, rerun_of=job_id)

    def _recorded_model(self, job: dict[str, Any]) -> str | None:
        """The registered model a job ran on when it named none (the default then): a rerun
        pins it, so changing the default later doesn't change what the rerun makes."""
        used = (job.get("record") or {}).get("model") or {}
        try:
            record = self.models.resolve(used.get("name")) if used.get("name") else None
        except (ModelNotFound, ModelRejected):  # gone, or the name is a LoRA's now
            return None
        if record is None or not record.registered or record.sha256 != used.get("sha256"):
            return None
        return record.name

    def retry_failed(self, *, error_code: str | None = None, since: datetime | None = None,
                     limit: int = 1000) -> list[JobView]:
        """Retry every failed job (with this error code, created since then), up to ``limit``."""
        page = self.page_jobs(["failed"], error_code=error_code, created_after=since, limit=limit)
        return [self.retry(view.id) for view in page.jobs]

    def prune(self, older_than_s: float, statuses: list[str] | None = None, *, dry_run: bool = False,
              batch: int = 200) -> dict[str, int]:
        """Remove jobs that ended longer ago than ``older_than_s``, with their rows and their images,
        in batches. Only finished jobs (succeeded, failed, canceled) are ever removed, so this is
        safe while workers run. Images go first: a crash midway leaves rows the next prune
        finishes, never an image nobody points to."""
        finished = {s.value for s in JobStatus if s.is_terminal()}
        chosen = [s for s in (statuses or sorted(finished)) if s in finished]
        if not chosen:
            raise InvalidRequest("only succeeded, failed and canceled jobs can be pruned")
        removed = {"jobs": 0, "artifacts": 0}
        while True:
            found = self.job_store.finished_before(older_than_s, chosen, batch)
            if dry_run:
                return {"jobs": len(found), "artifacts": sum(len(j["keys"]) for j in found)}
            if not found:
                return removed
            for job in found:
                for key in job["keys"]:
                    self.artifact_store.delete(key)
                    self.artifact_store.delete(f"{key}.thumb-256.webp")
            removed["jobs"] += self.job_store.delete_jobs([j["id"] for j in found], chosen)
            removed["artifacts"] += sum(len(j["keys"]) for j in found)
            if len(found) < batch:
                return removed

    def retry_spooled(self) -> list[dict[str, Any]]:
        """Upload the images a failed upload left in the spool, and record them. A job succeeds
        once every one of its items is stored; until then it stays failed (storage_error) with
        the items stored so far."""
        from dreamforge.spool import Spool

        spool = Spool(self.settings.spool_dir)
        by_job: dict[str, list[Any]] = {}
        for entry in spool.entries():
            by_job.setdefault(entry.job_id, []).append(entry)
        results = []
        for job_id, entries in by_job.items():
            uploaded = []
            for entry in entries:
                try:
                    self.artifact_store.put(entry.key, entry.read(), entry.content_type,
                                            entry.artifact["sha256"])
                except StorageError as exc:
                    results.append({"job_id": job_id, "key": entry.key, "uploaded": False,
                                    "error": exc.message})
                    continue
                uploaded.append(entry)
            if not uploaded:
                continue
            succeeded, recorded = self._record_recovered(job_id, [e.artifact for e in uploaded])
            for entry in uploaded:
                if entry.key not in recorded:
                    # The job went on without it (pruned, or another attempt stored that item):
                    # no object outlives its record.
                    self.artifact_store.delete(entry.key)
                spool.remove(entry)
                results.append({"job_id": job_id, "key": entry.key, "uploaded": True,
                                "job_succeeded": succeeded})
        return results

    def _record_recovered(self, job_id: str, rows: list[dict[str, Any]]) -> tuple[bool, set[str]]:
        """Artifact rows for uploaded spool entries of a storage_error job: the job succeeds if
        that completes it. Returns (the job succeeded, the keys recorded)."""
        try:
            job = self.job_store.job(job_id)
        except JobNotFound:
            return False, set()
        have = {a["item_index"] for a in job["artifacts"]}
        rows = [r for r in rows if r["item_index"] not in have]
        keys = {r["s3_key"] for r in rows}
        if not rows:
            return job["status"] == JobStatus.succeeded, set()
        if have | {r["item_index"] for r in rows} >= set(range(job["params"].get("count", 1))):
            done = self.job_store.apply(moves.recover(job_id, rows)) is not None
            return done, keys if done else set()
        return False, keys if self.job_store.add_recovered_artifacts(job_id, rows) else set()

    # -- the doors' queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobView:
        return self._view(self.job_store.job(job_id))

    def list_jobs(self, status: str | list[str] | None = None, limit: int = 20) -> list[JobView]:
        return self.page_jobs(status, limit=limit).jobs

    def page_jobs(self, statuses: str | list[str] | None = None, job_type: str | None = None, *,
                  created_after: datetime | None = None, created_before: datetime | None = None,
                  error_code: str | None = None, cursor: str | None = None, limit: int = 20) -> JobPage:
        """One page of jobs, newest first, and the cursor of the next page (None at the end)."""
        if isinstance(statuses, str):
            statuses = [statuses]
        rows = self.job_store.list_jobs(statuses, job_type, created_after=created_after,
                                        created_before=created_before, error_code=error_code,
                                        before=decode_cursor(cursor) if cursor else None,
                                        limit=limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return JobPage([self._view(j) for j in rows], next_cursor)

    def events(self, job_id: str, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's history after event ``after_id``, oldest first."""
        self.job_store.job(job_id)  # raises JobNotFound
        return self.job_store.events(job_id, after_id, limit)

    def follow_events(self, job_id: str, after_id: int = 0, poll_s: float = 0.1
                      ) -> Generator[list[dict[str, Any]], None, None]:
        """The job's events after ``after_id`` as they come: its history at once, then what is new
        every ``poll_s`` (an empty list when nothing is). Never ends by itself: the caller stops
        once it has seen what it waits for (the job's terminal event, say)."""
        while True:
            batch = self.events(job_id, after_id)
            if batch:
                after_id = batch[-1]["id"]
            yield batch
            time.sleep(poll_s)

    def events_after(self, after_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Every job's events after ``after_id`` (with ``job_type``), oldest first."""
        return self.job_store.events_after(after_id, limit)

    def logs(self, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        """The job's own log lines: what its workers logged about it, its errors, its moves."""
        return [line for e in self.events(job_id, after_id) if (line := log_line(e)) is not None]

    def artifact(self, job_id: str, item: int) -> dict[str, Any]:
        """One stored artifact of the job (its row); JobNotFound if the job or item isn't there."""
        job = self.job_store.job(job_id)
        for art in job["artifacts"]:
            if art["item_index"] == item:
                return art
        raise JobNotFound(f"job {job_id} has no artifact {item}", code="artifact_not_found")

    def event_feed(self) -> EventFeed:
        """A tail of every job's events for this process's streams (start it in the event loop)."""
        from dreamforge.feed import EventFeed

        return EventFeed(self.job_store, poll_s=self.settings.event_poll_s)

    def presigned_url(self, s3_key: str) -> str | None:
        """A URL a client can fetch the object from directly (S3), or None (a local folder)."""
        url = self.artifact_store.locate(s3_key).get("url", "")
        return url if url.startswith(("http://", "https://")) else None

    def thumbnail(self, s3_key: str, size: int) -> bytes:
        """A WebP at most ``size`` pixels on its longer side, made once and kept beside the artifact."""
        from dreamforge.imaging import thumbnail

        key = f"{s3_key}.thumb-{size}.webp"
        try:
            return self.artifact_store.get(key)
        except StorageError:
            pass
        data = thumbnail(self.artifact_store.get(s3_key), size)
        try:
            self.artifact_store.put(key, data, "image/webp", hashlib.sha256(data).hexdigest())
        except StorageError as exc:
            log.warning("thumbnail of %s not kept: %s", s3_key, exc.message)
        return data

    def live_workers(self) -> list[dict[str, Any]]:
        return self.job_store.live_workers(self.settings.worker_timeout_s)

    def status(self) -> dict[str, Any]:
        return {"jobs": self.job_store.counts(), "queue_depth": self.queue.depth(),
                "workers": [{"id": w["id"], "hostname": w["hostname"], "pid": w["pid"],
                             "heartbeat_at": w["heartbeat_at"].isoformat()}
                            for w in self.live_workers()]}

    def readiness(self) -> dict[str, str]:
        """Each backend's state: "ok", or why it can't be reached."""
        checks: dict[str, str] = {}
        probes = (("job_store", self.job_store.ping), ("queue", lambda: self.queue.ping()),
                  ("artifact_store", lambda: self.artifact_store.check()))
        for name, probe in probes:
            try:
                probe()
                checks[name] = "ok"
            except DreamForgeError as exc:
                checks[name] = exc.message
        return checks

    def artifact_bytes(self, s3_key: str) -> bytes:
        return self.artifact_store.get(s3_key)

    def _view(self, job: dict[str, Any]) -> JobView:
        step_views = [{"name": s["name"], "status": s["status"], "seed": s["seed"],
                       "progress": {"current": s["progress_current"], "total": s["progress_total"]},
                       "started_at": s["started_at"], "finished_at": s["finished_at"]}
                      for s in job["steps"]]
        arts = []
        for a in job["artifacts"]:
            try:
                where = self.artifact_store.locate(a["s3_key"])
            except StorageError:
                where = {}
            content = f"/v1/jobs/{job['id']}/artifacts/{a['item_index']}/content"
            arts.append({k: a[k] for k in ("item_index", "seed", "width", "height", "format",
                                           "s3_key", "size_bytes", "sha256")} | where
                        | {"content_url": content, "thumbnail_url": f"{content}?thumb=256"})
        error = None
        if job["error_code"]:
            error = {"code": job["error_code"], "message": job["error_message"],
                     "details": job["error_details"]}
        return JobView.model_validate({
            "id": job["id"], "type": job["type"], "status": job["status"], "params": job["params"],
            "steps": step_views, "summary": {"count": job["params"].get("count", 1), "completed": len(arts)},
            "artifacts": arts, "error": error, "attempts": job["attempts"],
            "correlation_id": job["correlation_id"], "retry_of": job.get("retry_of"),
            "rerun_of": job.get("rerun_of"), "record": job.get("record"),
            "created_at": job["created_at"], "started_at": job["started_at"],
            "finished_at": job["finished_at"]})

    # -- the holder's moves and writes (execution.py) ---------------------------------------------
    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        """queued → running for exactly one caller; None if the job is not queued (any more).
        A job that names no seed gets one drawn here, recorded with the move: the claim's params
        carry it, so the image's metadata and the job agree, and a retry keeps it."""
        row = self.job_store.apply(moves.claim(job_id, worker_id, secrets.randbelow(MAX_SEED + 1)))
        if row is None:
            return None
        # Both times come from the same driver, naive (SQLite) or aware (PostgreSQL) alike.
        queued = (row["updated_at"] - row["created_at"]).total_seconds()
        return Claim(Fence(job_id, worker_id, row["attempts"]), dict(row["params"]),
                     row["correlation_id"], queued)

    def progress(self, fence: Fence, current: int, total: int) -> bool:
        return self.job_store.progress(fence, current, total)

    # A model's last_used_at is for people deciding what to remove (`df models list`): to the
    # minute is plenty, and a write per job is not.
    TOUCH_EVERY_S = 60.0

    def model_used(self, name: str) -> None:
        """A job of this process uses the registered model ``name``: recorded at most once a
        minute per model."""
        now = time.monotonic()
        if now - self._touched.get(name, -self.TOUCH_EVERY_S) >= self.TOUCH_EVERY_S:
            self.models.touch(name)
            self._touched[name] = now

    def holds(self, fence: Fence) -> bool:
        return self.job_store.holds(fence)

    def job_log(self, fence: Fence, level: str, message: str) -> bool:
        return self.job_store.job_log(fence, level, message)

    def begin_upload(self, fence: Fence, key: str) -> bool | None:
        return self.job_store.begin_upload(fence, key)

    def succeed(self, fence: Fence, artifacts: list[dict[str, Any]], timings: dict[str, float],
                record: dict[str, Any] | None = None) -> bool:
        """Every item stored: the artifact rows, the record and the move, in one transaction."""
        return self.job_store.apply(moves.succeed(fence, artifacts, timings, record)) is not None

    def complete(self, fence: Fence, note: dict[str, Any]) -> bool:
        """The holder finished a job that stores no artifact (a model download)."""
        return self.job_store.apply(moves.complete(fence, note)) is not None

    def fail_attempt(self, fence: Fence, failure: JobFailure) -> str | None:
        """The holder's attempt failed: back to the queue or failed, by the one retry rule.
        Returns the job's new status, or None when the holder had lost the job already."""
        return self._carry_out(moves.after_failure(fence, failure, self.settings.max_attempts))

    def fail_storing(self, fence: Fence, failure: JobFailure, stored: list[dict[str, Any]],
                     unwritten: list[str], record: dict[str, Any] | None) -> str | None:
        """Some items did not store: failed, keeping the stored ones (see moves.fail_storing)."""
        return self._carry_out(moves.fail_storing(fence, failure, stored, unwritten, record))

    def hand_back(self, fence: Fence, reason: str) -> bool:
        """running → queued by its holder (a graceful stop past its grace period)."""
        return self._carry_out(moves.hand_back(fence, reason)) is not None

    def _carry_out(self, move: moves.Move) -> str | None:
        if self.job_store.apply(move) is None:
            return None
        if move.target is moves.QUEUED:
            self.queue.enqueue(move.job_id)
        return move.target.value

    # -- recovery (the workers' reaper thread) -----------------------------------------------------
    def worker_heartbeat(self, worker_id: str, hostname: str, pid: int, held: list[Fence],
                         register: bool = True) -> None:
        self.job_store.worker_heartbeat(worker_id, hostname, pid, held, register)

    def worker_stopped(self, worker_id: str) -> None:
        self.job_store.worker_stopped(worker_id)

    def reclaim_silent(self) -> list[tuple[str, str]]:
        """Running jobs whose holder went silent (a SIGKILLed worker, a lost host): back to the
        queue, or failed with worker_lost on the last attempt. Each move holds only if the holder
        is still silent when it is carried out."""
        timeout = self.settings.worker_timeout_s
        moved = []
        for fence in self.job_store.silent_holders(timeout):
            failure = JobFailure("worker_lost",
                                 f"the worker running this job went silent ({fence.attempt} attempts)",
                                 {"worker_id": fence.worker_id, "attempts": fence.attempt})
            status = self._carry_out(moves.after_failure(fence, failure, self.settings.max_attempts,
                                                         silent_for_s=timeout))
            if status is not None:
                log.warning("[job=%s] its worker went silent: now %s", fence.job_id, status)
                moved.append((fence.job_id, status))
        return moved

    def requeue_orphans(self, holder: str) -> list[str]:
        """Queued jobs whose queue message is gone (taken by a worker that died before claiming,
        or lost with a queue that kept nothing): ring the bell again. A duplicate is harmless,
        since only one claim can win. One process of the fleet does this per interval."""
        interval = self.settings.orphan_sweep_interval_s
        if not self.job_store.take_lease("orphan-sweep", holder, interval):
            return []
        stale = self.job_store.queued_before(self.settings.worker_timeout_s)
        if not stale:
            return []
        pending = set(self.queue.pending_job_ids())
        orphans = [job_id for job_id in stale if job_id not in pending]
        for job_id in orphans:
            log.warning("[job=%s] queued without a queue entry: enqueued again", job_id)
            self.queue.enqueue(job_id)
        return orphans

    def apply_retention(self, holder: str) -> dict[str, int] | None:
        """DF_RETENTION_DAYS: prune what ended before then; one process of the fleet an hour."""
        days = self.settings.retention_days
        if not days or not self.job_store.take_lease("retention", holder, 3600):
            return None
        removed = self.prune(days * 86400)
        if removed["jobs"]:
            log.info("retention: removed %d jobs and %d images older than %g days", removed["jobs"],
                     removed["artifacts"], days)
        return removed

    def sweep_uploads(self) -> list[str]:
        """Remove objects that a worker wrote (or may have written) for an attempt that no longer
        holds its job, so no object outlives its job's record. Returns the keys removed."""
        removed = []
        for upload in self.job_store.unsettled_uploads(self.settings.worker_timeout_s):
            if not upload["recorded"]:
                try:
                    self.artifact_store.delete(upload["s3_key"])
                except StorageError as exc:
                    log.warning("stray object %s not removed yet: %s", upload["s3_key"], exc.message)
                    continue
                removed.append(upload["s3_key"])
            self.job_store.forget_upload(upload["id"])
        return removed

    # -- webhooks (dreamforge/webhooks) ------------------------------------------------------------
    def _check_webhook(self, request: GenerateRequest) -> None:
        """A job's webhook must be one this server can sign and may send to (checked again at
        each delivery, after resolving the name again)."""
        url = getattr(request, "webhook", None)
        if url is None:
            return
        from dreamforge.webhooks.targets import TargetRefused, check_target

        if self.settings.webhook_secret is None:
            raise InvalidRequest("this server sends no webhooks: DF_WEBHOOK_SECRET is not set",
                                 details=[{"field": "webhook", "message": "webhooks are off on this server"}])
        try:
            check_target(url, self.settings.webhook_allow_private)
        except TargetRefused as exc:
            raise InvalidRequest(str(exc), details=[{"field": "webhook", "message": str(exc)}]) from None

    @cached_property
    def deliveries(self) -> DeliveryStore:
        from dreamforge.webhooks.store import DeliveryStore

        return DeliveryStore(self.job_store)

    def webhook_deliveries(self, job_id: str | None = None, status: str | None = None,
                           limit: int = 50) -> list[dict[str, Any]]:
        """Deliveries, newest first (without their bodies)."""
        if job_id is not None:
            self.job_store.job(job_id)  # raises JobNotFound
        return self.deliveries.list(job_id, status, limit)

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        """Send a delivery again now, whatever became of it, with a fresh retry schedule."""
        return self.deliveries.redeliver(delivery_id)

    def webhook_deliverer(self, *, flush_on_stop: bool = False) -> Deliverer | None:
        """The thread that sends this fleet's deliveries; None where no secret is set (then no
        delivery can be signed, and submit refuses webhooks)."""
        if self.settings.webhook_secret is None:
            return None
        from dreamforge.webhooks.deliverer import Deliverer

        return Deliverer(self, flush_on_stop=flush_on_stop)

    def claim_deliveries(self, limit: int, lease_s: float) -> list[dict[str, Any]]:
        return self.deliveries.claim(limit, lease_s)

    def delivery_body(self, delivery: dict[str, Any]) -> str:
        """The body a delivery sends: made at its first attempt from its event and the job's
        public view then, and kept, so every retry signs and sends the same bytes."""
        if delivery["body"] is not None:
            return str(delivery["body"])
        from dreamforge.server.app import public_view
        from dreamforge.webhooks.deliverer import build_body

        event = self.deliveries.event(delivery["event_id"])
        if event is None:
            raise JobNotFound(f"event {delivery['event_id']} is gone")
        body = build_body(delivery["event_type"], event, public_view(self.get(delivery["job_id"])))
        return self.deliveries.fix_body(delivery["id"], body)

    def finish_delivery(self, delivery_id: str, claim_token: str, status: str, **outcome: Any) -> bool:
        return self.deliveries.finish(delivery_id, claim_token, status, **outcome)

    # -- input images (dreamforge/inputs.py) -------------------------------------------------------
    def upload_image(self, data: bytes, content_type: str | None = None) -> InputImage:
        """Check an image (PNG, JPEG or WebP) and store it as sent; the same bytes twice are one
        object. ``content_type``, when the sender gave one, must match. ImageRejected otherwise."""
        from dreamforge.inputs import store_upload

        return store_upload(self.artifact_store, data, content_type, max_bytes=self.settings.upload_max_bytes,
                            max_side=self.settings.upload_max_side)

    def upload(self, upload_id: str) -> InputImage:
        """A stored upload's description; ImageRejected (unknown_input) when there is none."""
        return self.upload_content(upload_id)[0]

    def upload_content(self, upload_id: str) -> tuple[InputImage, bytes]:
        from dreamforge.inputs import find_upload

        return find_upload(self.artifact_store, upload_id)


def _ref(ref: Any) -> Any:
    """A request's input reference as resolve_input takes it (a string or a mapping)."""
    return ref if isinstance(ref, str) else ref.model_dump()


def fitted_size(width: int, height: int, largest: int = 2048, smallest: int = 64) -> tuple[int, int]:
    """An input image's size as a job's: scaled down to fit ``largest``, each side rounded down
    to a multiple of 8 and at least ``smallest``."""
    scale = min(1.0, largest / max(width, height))
    return tuple(max(smallest, int(side * scale) // 8 * 8) for side in (width, height))  # type: ignore[return-value]
