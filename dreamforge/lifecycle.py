"""One job's life on a worker: claim, seed, generate, encode, store, record. The Huey task and
the CLI's in-process fallback both end up here."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import asdict
from typing import Any

from dreamforge import imaging
from dreamforge.errors import DreamForgeError, RunnerError, StorageError
from dreamforge.runners import Generation, Runner
from dreamforge.schemas import MAX_SEED, GenerateRequest
from dreamforge.spool import Spool
from dreamforge.storage import CONTENT_TYPES, ArtifactStore, artifact_key
from dreamforge.store import JobStore
from dreamforge.tables import utcnow

log = logging.getLogger("dreamforge.worker")


class LostJob(Exception):
    """This worker no longer holds the job (it was reclaimed after a missed heartbeat)."""


class JobLogger(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[job={self.extra['job_id']} request_id={self.extra['correlation_id']}] {msg}", kwargs


class Executor:
    """Runs jobs for one worker identity. Thread-safe: ``active`` lists what it holds right now."""

    def __init__(self, store: JobStore, storage: ArtifactStore, runner: Runner, worker_id: str,
                 spool: Spool):
        self.store = store
        self.spool = spool
        self.storage = storage
        self.runner = runner
        self.worker_id = worker_id
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def execute(self, job_id: str) -> str | None:
        """Run the job if this worker wins it; returns the final status, or None when the job
        was not queued (a duplicate delivery, or a job another worker holds or finished)."""
        claim = self.store.claim(job_id, self.worker_id)
        if claim is None:
            log.info("[job=%s] not queued any more: duplicate delivery dropped", job_id)
            return None
        jlog = JobLogger(log, {"job_id": job_id, "correlation_id": claim.correlation_id or "-"})
        jlog.info("started (attempt %d) on %s", claim.attempts, self.worker_id)
        with self._lock:
            self._active.add(job_id)
        try:
            return self._run(claim.job_id, claim.params, jlog)
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

    def _run(self, job_id: str, params: dict[str, Any], jlog: JobLogger) -> str | None:
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
                if not self.store.progress(job_id, self.worker_id, current, total):
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
            if not self.store.succeed(job_id, self.worker_id, artifact, timings):
                raise LostJob(job_id)
            jlog.info("succeeded: %s (%d bytes)", key, len(data))
            return "succeeded"
        except LostJob:
            jlog.warning("lost the job to another worker; dropping this run")
            return None
        except (RunnerError, StorageError) as exc:
            jlog.error("failed: %s: %s", exc.code, exc.message)
            self.store.fail(job_id, self.worker_id, exc.code, exc.message, exc.details)
            return "failed"
        except DreamForgeError:
            raise  # the job store itself is away: the job stays running and is reclaimed later
        except Exception as exc:
            jlog.exception("failed with an unexpected error")
            self.store.fail(job_id, self.worker_id, "internal_error", f"{type(exc).__name__}: {exc}")
            return "failed"
