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

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from dreamforge import moves
from dreamforge.errors import DreamForgeError, StorageError
from dreamforge.moves import Fence, JobFailure
from dreamforge.schemas import GenerateRequest, JobView
from dreamforge.settings import Settings

if TYPE_CHECKING:
    from dreamforge.artifact_store import ArtifactStore
    from dreamforge.job_store import JobStore
    from dreamforge.queue import JobQueue

log = logging.getLogger(__name__)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Submitted:
    view: JobView
    created: bool


@dataclass
class Claim:
    """What a worker gets when it wins a job: the fence for every later write, and the job."""

    fence: Fence
    params: dict[str, Any]
    correlation_id: str | None


class JobService:
    def __init__(self, settings: Settings, job_store: JobStore, queue: JobQueue | None = None,
                 artifact_store: ArtifactStore | None = None):
        self.settings = settings
        self.job_store = job_store
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
        job_store.create_schema()
        return cls(settings, job_store)

    @cached_property
    def queue(self) -> JobQueue:
        from dreamforge.queue import JobQueue

        return JobQueue(self.settings.queue_url, self.settings.queue_name)

    @cached_property
    def artifact_store(self) -> ArtifactStore:
        from dreamforge.artifact_store import make_artifact_store

        return make_artifact_store(self.settings)

    def close(self) -> None:
        self.job_store.close()

    # -- the doors' commands ----------------------------------------------------------------------
    def submit(self, request: GenerateRequest, *, correlation_id: str | None = None,
               idempotency_key: str | None = None) -> Submitted:
        """Record a queued job and ring the queue. Either both happen or neither does."""
        params = request.model_dump(mode="json")
        key_hash = _sha256(idempotency_key) if idempotency_key else None
        request_hash = _sha256(json.dumps(params, sort_keys=True)) if idempotency_key else None
        job, created = self.job_store.create(params, correlation_id=correlation_id,
                                             idempotency_key_hash=key_hash,
                                             request_hash=request_hash)
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

    def retry_spooled(self) -> list[dict[str, Any]]:
        """Upload the images a failed upload left in the spool, and finish their jobs."""
        from dreamforge.spool import Spool

        spool = Spool(self.settings.spool_dir)
        results = []
        for entry in spool.entries():
            try:
                self.artifact_store.put(entry.key, entry.read(), entry.content_type,
                                        entry.artifact["sha256"])
            except StorageError as exc:
                results.append({"job_id": entry.job_id, "key": entry.key, "uploaded": False,
                                "error": exc.message})
                continue
            recovered = self.job_store.apply(moves.recover(entry.job_id, entry.artifact)) is not None
            spool.remove(entry)
            results.append({"job_id": entry.job_id, "key": entry.key, "uploaded": True,
                            "job_succeeded": recovered})
        return results

    # -- the doors' queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobView:
        return self._view(self.job_store.job(job_id))

    def list_jobs(self, status: str | None = None, limit: int = 20) -> list[JobView]:
        return [self._view(j) for j in self.job_store.list_jobs(status, limit)]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        self.job_store.job(job_id)  # raises JobNotFound
        return self.job_store.events(job_id)

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

    # -- the holder's moves and writes (execution.py) ---------------------------------------------
    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        """queued → running for exactly one caller; None if the job is not queued (any more)."""
        row = self.job_store.apply(moves.claim(job_id, worker_id))
        if row is None:
            return None
        return Claim(Fence(job_id, worker_id, row["attempts"]), dict(row["params"]),
                     row["correlation_id"])

    def record_seed(self, fence: Fence, params: dict[str, Any]) -> bool:
        return self.job_store.record_seed(fence, params)

    def progress(self, fence: Fence, current: int, total: int) -> bool:
        return self.job_store.progress(fence, current, total)

    def begin_upload(self, fence: Fence, key: str) -> bool | None:
        return self.job_store.begin_upload(fence, key)

    def succeed(self, fence: Fence, artifact: dict[str, Any], timings: dict[str, float]) -> bool:
        return self.job_store.apply(moves.succeed(fence, artifact, timings)) is not None

    def fail_attempt(self, fence: Fence, failure: JobFailure, *,
                     unwritten_upload: str | None = None) -> str | None:
        """The holder's attempt failed: back to the queue or failed, by the one retry rule.
        Returns the job's new status, or None when the holder had lost the job already."""
        move = moves.after_failure(fence, failure, self.settings.max_attempts,
                                   settles_upload=unwritten_upload)
        return self._carry_out(move)

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
