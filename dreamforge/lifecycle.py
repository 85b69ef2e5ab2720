"""One job's life on a worker: claim, seed, generate, encode, store, record. The Huey task and
the CLI's in-process fallback both end up here."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import asdict
from collections.abc import Callable
from typing import Any, TypeVar

from dreamforge import imaging
from dreamforge.errors import BackendUnavailable, DreamForgeError, RunnerError, StorageError
from dreamforge.runners import Generation, Runner
from dreamforge.schemas import MAX_SEED, GenerateRequest
from dreamforge.spool import Spool
from dreamforge.storage import CONTENT_TYPES, ArtifactStore, artifact_key
from dreamforge.store import JobStore
from dreamforge.tables import utcnow

log = logging.getLogger("dreamforge.worker")


T = TypeVar("T")
# A dead or hung runner child says nothing about the job: it goes back to the queue while it has
# attempts left (DF_MAX_ATTEMPTS). Other runner errors are the job's own and final.
TRANSIENT_RUNNER_ERRORS = {"runner_crashed", "runner_timeout"}


class LostJob(Exception):
    """This worker no longer holds the job (it was reclaimed after a missed heartbeat)."""


class JobLogger(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[job={self.extra['job_id']} request_id={self.extra['correlation_id']}] {msg}", kwargs


class Executor:
    """Runs jobs for one worker identity. Thread-safe: ``active`` lists what it holds right now."""

    def __init__(self, store: JobStore, storage: ArtifactStore, runner: Runner, worker_id: str,
                 spool: Spool, *, requeue: Callable[[str], None] | None = None,
                 max_attempts: int = 1, store_wait_s: float = 300.0):
        self.store = store
        self.requeue = requeue
        self.max_attempts = max_attempts
        self.store_wait_s = store_wait_s
        self.spool = spool
        self.storage = storage
        self.runner = runner
        self.worker_id = worker_id
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def hand_back(self, job_id: str, reason: str) -> bool:
        """Put a job this worker holds back on the queue (running → queued, then the bell)."""
        if not self.store.release(job_id, self.worker_id, reason):
            return False
        if self.requeue is not None:
            self.requeue(job_id)
        return True

    def _patiently(self, what: str, call: Callable[[], T]) -> T:
        """Retry a job-store call while the store is away (up to store_wait_s): the message in hand
        or the finished image is worth waiting for, and nothing else can be done without the store."""
        deadline = time.monotonic() + self.store_wait_s
        delay = 0.2
        while True:
            try:
                return call()
            except BackendUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s; retrying in %.1f s", what, exc.message, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def execute(self, job_id: str) -> str | None:
        """Run the job if this worker wins it; returns the final status, or None when the job
        was not queued (a duplicate delivery, or a job another worker holds or finished)."""
        claim = self._patiently(f"[job={job_id}] claiming", lambda: self.store.claim(job_id, self.worker_id))
        if claim is None:
            log.info("[job=%s] not queued any more: duplicate delivery dropped", job_id)
            return None
        jlog = JobLogger(log, {"job_id": job_id, "correlation_id": claim.correlation_id or "-"})
        jlog.info("started (attempt %d) on %s", claim.attempts, self.worker_id)
        with self._lock:
            self._active.add(job_id)
        try:
            return self._run(claim.job_id, claim.params, claim.attempts, jlog)
        finally:
            with self._lock:
                self._active.discard(job_id)

    def _store_artifact(self, job_id: str, key: str, data: bytes, content_type: str, digest: str,
                        artifact: dict[str, Any]) -> None:
        try:
            self.storage.put(key, data, content_type, digest)
        except StorageError as exc:
            # The image exists only in this process now: put it on local disk before failing.
            kept = self.spool.keep(job_id, key, data, content_type, artifact)
            raise StorageError(f"{exc.message}; the image is kept at {kept} "
                               "(`df artifacts retry` uploads it)",
                               details={**(exc.details or {}), "spool_path": str(kept)}) from None

    def _run(self, job_id: str, params: dict[str, Any], attempt: int, jlog: JobLogger) -> str | None:
        try:
            request = GenerateRequest.model_validate(params)
            if request.seed is None:
                # Drawn just before sampling, and recorded before any pixel exists.
                params = {**params, "seed": secrets.randbelow(MAX_SEED + 1)}
                self.store.record_seed(job_id, self.worker_id, params)
                request = GenerateRequest.model_validate(params)
            generation = Generation(**{k: v for k, v in request.model_dump().items()
                                       if k in Generation.__dataclass_fields__})

            def on_progress(current: int, total: int) -> None:
                try:
                    owned = self.store.progress(job_id, self.worker_id, current, total)
                except BackendUnavailable as exc:
                    # Progress is best effort: the image is worth more than the bar.
                    jlog.warning("progress not recorded: %s", exc.message)
                    return
                if not owned:
                    raise LostJob(job_id)

            t0 = time.perf_counter()
            result = self.runner.generate(generation, on_progress)
            t1 = time.perf_counter()
            data = imaging.encode(result.image, request.format, {**asdict(generation),
                                                                 "format": request.format,
                                                                 "runner": self.runner.name})
            digest = hashlib.sha256(data).hexdigest()
            t2 = time.perf_counter()
            key = artifact_key(job_id, utcnow(), 0, result.image.width, result.image.height,
                               result.seed, request.format)
            artifact = {"item_index": 0, "seed": result.seed, "width": result.image.width,
                        "height": result.image.height, "format": request.format, "s3_key": key,
                        "size_bytes": len(data), "sha256": digest}
            self._store_artifact(job_id, key, data, CONTENT_TYPES[request.format], digest, artifact)
            timings = {"generate_s": round(t1 - t0, 4), "encode_s": round(t2 - t1, 4),
                       "store_s": round(time.perf_counter() - t2, 4)}
            if result.model_s is not None:
                timings["model_s"] = round(result.model_s, 4)
            if not self._patiently(f"[job={job_id}] recording success",
                                   lambda: self.store.succeed(job_id, self.worker_id, artifact, timings)):
                raise LostJob(job_id)
            jlog.info("succeeded: %s (%d bytes)", key, len(data))
            return "succeeded"
        except LostJob:
            jlog.warning("lost the job to another worker; dropping this run")
            return None
        except RunnerError as exc:
            if exc.code in TRANSIENT_RUNNER_ERRORS and attempt < self.max_attempts and self.requeue:
                # The runner died under this job, not because of it (most likely): try again.
                jlog.warning("attempt %d of %d ended with %s; back to the queue", attempt,
                             self.max_attempts, exc.code)
                self.hand_back(job_id, exc.code)
                return "queued"
            return self._fail(job_id, exc, jlog)
        except StorageError as exc:
            return self._fail(job_id, exc, jlog)
        except DreamForgeError:
            raise  # the job store itself is away: the job stays running and is reclaimed later
        except Exception as exc:
            jlog.exception("failed with an unexpected error")
            self.store.fail(job_id, self.worker_id, "internal_error", f"{type(exc).__name__}: {exc}")
            return "failed"

    def _fail(self, job_id: str, exc: DreamForgeError, jlog: JobLogger) -> str:
        jlog.error("failed: %s: %s", exc.code, exc.message)
        self._patiently(f"[job={job_id}] recording failure",
                        lambda: self.store.fail(job_id, self.worker_id, exc.code, exc.message, exc.details))
        return "failed"
