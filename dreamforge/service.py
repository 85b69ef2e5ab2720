"""The job service: the one core that the CLI and the HTTP API both call."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from dreamforge.errors import DreamForgeError, StorageError
from dreamforge.queue import JobQueue
from dreamforge.schemas import GenerateRequest, JobView
from dreamforge.settings import Settings
from dreamforge.spool import Spool
from dreamforge.storage import ArtifactStore, make_store
from dreamforge.store import JobStore

log = logging.getLogger("dreamforge.service")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Submitted:
    view: JobView
    created: bool


class JobService:
    def __init__(self, settings: Settings, store: JobStore, queue: JobQueue, storage: ArtifactStore):
        self.settings = settings
        self.store = store
        self.queue = queue
        self.storage = storage

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobService":
        store = JobStore(settings.database_url)
        store.create_schema()
        return cls(settings, store, JobQueue(settings.queue_url, settings.queue_name),
                   make_store(settings))

    def close(self) -> None:
        self.store.close()

    # -- commands -------------------------------------------------------------------------------
    def submit(self, request: GenerateRequest, *, correlation_id: str | None = None,
               idempotency_key: str | None = None) -> Submitted:
        """Record a queued job and ring the queue. Either both happen or neither does."""
        params = request.model_dump(mode="json")
        key_hash = _sha256(idempotency_key) if idempotency_key else None
        request_hash = _sha256(json.dumps(params, sort_keys=True)) if idempotency_key else None
        job, created = self.store.create(params, correlation_id=correlation_id,
                                         idempotency_key_hash=key_hash, request_hash=request_hash)
        if created:
            try:
                self.queue.enqueue(job["id"])
            except DreamForgeError:
                self.store.delete_unqueued(job["id"])
                raise
        return Submitted(self._view(job), created)

    # -- queries --------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobView:
        return self._view(self.store.job(job_id))

    def list_jobs(self, status: str | None = None, limit: int = 20) -> list[JobView]:
        return [self._view(j) for j in self.store.list(status, limit)]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        self.store.job(job_id)  # raises JobNotFound
        return self.store.events(job_id)

    def live_workers(self) -> list[dict[str, Any]]:
        return self.store.live_workers(self.settings.worker_timeout_s)

    def status(self) -> dict[str, Any]:
        return {"jobs": self.store.counts(), "queue_depth": self.queue.depth(),
                "workers": [{"id": w["id"], "hostname": w["hostname"], "pid": w["pid"],
                             "heartbeat_at": w["heartbeat_at"].isoformat()}
                            for w in self.live_workers()]}

    def readiness(self) -> dict[str, str]:
        """Each backend's state: "ok", or why it can't be reached."""
        checks: dict[str, str] = {}
        for name, probe in (("job_store", self.store.ping), ("queue", self.queue.ping),
                            ("artifact_store", self.storage.check)):
            try:
                probe()
                checks[name] = "ok"
            except DreamForgeError as exc:
                checks[name] = exc.message
        return checks

    def artifact_bytes(self, s3_key: str) -> bytes:
        return self.storage.get(s3_key)

    def retry_spooled(self) -> list[dict[str, Any]]:
        """Upload the images a failed upload left in the spool, and finish their jobs."""
        spool = Spool(self.settings.spool_dir)
        results = []
        for entry in spool.entries():
            try:
                self.storage.put(entry.key, entry.read(), entry.content_type, entry.artifact["sha256"])
            except StorageError as exc:
                results.append({"job_id": entry.job_id, "key": entry.key, "uploaded": False,
                                "error": exc.message})
                continue
            recovered = self.store.recover(entry.job_id, entry.artifact)
            spool.remove(entry)
            results.append({"job_id": entry.job_id, "key": entry.key, "uploaded": True,
                            "job_succeeded": recovered})
        return results

    def _view(self, job: dict[str, Any]) -> JobView:
        step_views = [{"name": s["name"], "status": s["status"], "seed": s["seed"],
                       "progress": {"current": s["progress_current"], "total": s["progress_total"]},
                       "started_at": s["started_at"], "finished_at": s["finished_at"]}
                      for s in job["steps"]]
        arts = []
        for a in job["artifacts"]:
            try:
                where = self.storage.locate(a["s3_key"])
            except StorageError:
                where = {}
            arts.append({k: a[k] for k in ("item_index", "seed", "width", "height", "format",
                                           "s3_key", "size_bytes", "sha256")} | where)
        error = None
        if job["error_code"]:
            error = {"code": job["error_code"], "message": job["error_message"],
                     "details": job["error_details"]}
        return JobView.model_validate({
            "id": job["id"], "type": job["type"], "status": job["status"], "params": job["params"],
            "steps": step_views, "summary": {"count": 1, "completed": len(arts)}, "artifacts": arts,
            "error": error, "attempts": job["attempts"], "correlation_id": job["correlation_id"],
            "created_at": job["created_at"], "started_at": job["started_at"],
            "finished_at": job["finished_at"]})
