"""One job's run on a worker: claim, seed, generate, encode, store, record. Every worker runtime
(``df worker``, the CLI's in-process run, ``df serve``'s embedded worker) ends up here.

This code asks the job service for every move and every write, each fenced by the claim it won;
it decides no status itself. When a write comes back refused, the job was taken from this worker
(reclaimed while it was frozen, say): the run stops and touches nothing more, and an object it
wrote that no record confirms is removed (or left to the upload sweep, if this process dies).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from dreamforge import __version__, imaging, metrics
from dreamforge.artifact_store import CONTENT_TYPES, artifact_key
from dreamforge.errors import (
    BackendUnavailable,
    DreamForgeError,
    InvalidRequest,
    ModelNotFound,
    ModelRejected,
    RunnerError,
    StorageError,
)
from dreamforge.moves import Fence, JobFailure
from dreamforge.progress import LostJob, ProgressReporter
from dreamforge.runners import GeneratedBatch, GeneratedImage, Generation, LoraChoice, ModelChoice, Runner
from dreamforge.schemas import GenerateRequest, request_of
from dreamforge.service import JobService
from dreamforge.spool import Spool
from dreamforge.tables import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_record(runner_record: dict[str, Any], generation: Generation,
               inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job's record: what the runner knows of the run (model, scheduler, dtype, device,
    library versions, batches), the DreamForge version and every item's seed; for img2img and
    inpaint the input images' sha256 and the strength, and the LoRAs applied (name, sha256,
    weight). Nothing that changes from one run to the next on the same machine and model, so it
    can go into the images and a rerun still writes the same bytes."""
    record = {**runner_record, "dreamforge": __version__, "seeds": generation.seeds()}
    if inputs:
        record["inputs"] = {name: {"sha256": image["sha256"]} for name, image in inputs.items()}
        record["strength"] = generation.strength
        record["denoising_steps"] = generation.denoising_steps()
    if generation.loras:
        record["loras"] = lora_list(generation)
    return record


def lora_list(generation: Generation) -> list[dict[str, Any]]:
    return [{"name": lora.name, "sha256": lora.sha256, "weight": lora.weight} for lora in generation.loras]


class JobLogger(logging.LoggerAdapter):
    """Prefixes each line with the job and its request id. Both are data from outside: they are
    escaped for %-formatting, so a ``%`` in a request id can't become a format directive.

    Warnings and errors also go into the job's own log (``GET /v1/jobs/{id}/logs``) through
    ``record``, a fenced write: a worker that lost the job adds nothing to it. Info lines need
    no copy there: each is a status move the job's events already hold."""

    def __init__(self, logger: logging.Logger, extra: dict[str, Any],
                 record: Callable[[str, str], object] | None = None):
        super().__init__(logger, extra)
        self.record = record

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        prefix = f"[job={extra.get('job_id')} request_id={extra.get('correlation_id')}] "
        return prefix.replace("%", "%%") + str(msg), kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().log(level, msg, *args, **kwargs)
        if self.record is not None and level >= logging.WARNING:
            try:
                self.record(logging.getLevelName(level).lower(), str(msg) % args if args else str(msg))
            except DreamForgeError:
                pass  # the worker's own log has the line; the job's is best effort


@dataclass
class Generated:
    """A job whose images exist in this process and are not stored yet: what storing them needs."""

    request: GenerateRequest
    generation: Generation
    batch: GeneratedBatch
    inputs: dict[str, Any]
    generate_s: float
    progress: ProgressReporter


Finish = Callable[[], "str | None"]


class FinishingStage:
    """Where a generated job's images are encoded, checksummed, uploaded and its success recorded,
    on a thread of its own, while the runner makes the next job's images: the GPU never waits on
    that CPU work. At most ``depth`` jobs are here at once; a runner that gets further ahead
    waits, so memory holds at most that many finished batches. A job here is still held by this
    worker (its heartbeat goes on), so a crash in this window leaves it running under a silent
    holder, and it is reclaimed and run again like any other."""

    def __init__(self, depth: int):
        self._slots = threading.BoundedSemaphore(depth)
        self._work: queue.SimpleQueue[tuple[Future[str | None], Finish] | None] = queue.SimpleQueue()
        self._pending: set[Future[str | None]] = set()
        self._lock = threading.Lock()
        # A daemon: a process that must exit (a second Ctrl-C) is not held by a store that is away;
        # what this thread held is then reclaimed like a crashed worker's job.
        self._thread = threading.Thread(target=self._loop, name="df-finishing", daemon=True)

    def submit(self, finish: Finish) -> Future[str | None]:
        self._slots.acquire()
        future: Future[str | None] = Future()
        with self._lock:
            if self._thread.ident is None:
                self._thread.start()
            self._pending.add(future)
        self._work.put((future, finish))
        return future

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            future, finish = item
            status: str | None = None
            error: BaseException | None = None
            try:
                status = finish()
            except BaseException as exc:
                error = exc
            # The slot and the pending set are freed before the future's callbacks run, so a
            # worker waiting to submit is not held up by them.
            with self._lock:
                self._pending.discard(future)
            self._slots.release()
            if error is None:
                future.set_result(status)
            else:
                future.set_exception(error)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the jobs here to be stored; True when none is left."""
        with self._lock:
            pending = set(self._pending)
        return not wait_futures(pending, timeout).not_done

    def close(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)


def _settled(status: str | None) -> Future[str | None]:
    future: Future[str | None] = Future()
    future.set_result(status)
    return future


class Executor:
    """Runs jobs for one worker identity. Thread-safe: ``held`` lists the claims it holds now.

    ``execute`` runs a job to its end. ``start`` (what a worker's queue handler calls) returns
    once the runner is done with the job, leaving the storing of its images to the finishing
    stage (DF_FINISHING_JOBS deep) so the next job can start."""

    def __init__(self, service: JobService, runner: Runner, worker_id: str):
        self.service = service
        self.runner = runner
        self.worker_id = worker_id
        self.store_wait_s = service.settings.store_wait_s
        self.spool = Spool(service.settings.spool_dir)
        self._held: dict[str, Fence] = {}
        self._lock = threading.Lock()
        depth = service.settings.finishing_jobs
        self.finishing = FinishingStage(depth) if depth else None

    def held(self) -> list[Fence]:
        with self._lock:
            return list(self._held.values())

    def hand_back(self, job_id: str, reason: str) -> bool:
        """Give back a job this worker holds (graceful stop past the grace period)."""
        with self._lock:
            fence = self._held.get(job_id)
        return fence is not None and self.service.hand_back(fence, reason)

    def _patiently(self, what: str, call: Callable[[], T]) -> T:
        """Retry a job-store call while the store is away (up to DF_STORE_WAIT_S): the message in
        hand or the finished image is worth waiting for, and nothing else can be done without it."""
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
        """Run the job if this worker wins it; returns the status it ended in, or None when the
        job was not queued (a duplicate delivery, or a job another worker holds or finished) or
        was lost to another worker midway."""
        return self._start(job_id, None).result()

    def start(self, job_id: str) -> Future[str | None]:
        """``execute``, but returning as soon as the runner is free for the next job: the job's
        images are stored in the finishing stage, and the future settles when they are."""
        return self._start(job_id, self.finishing)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the finishing stage to store what it holds; True when it holds nothing."""
        return self.finishing is None or self.finishing.drain(timeout)

    def close(self) -> None:
        if self.finishing is not None:
            self.finishing.close()

    def _start(self, job_id: str, stage: FinishingStage | None) -> Future[str | None]:
        claim = self._patiently(f"[job={job_id}] claiming",
                                lambda: self.service.claim(job_id, self.worker_id))
        if claim is None:
            log.info("[job=%s] not queued any more: duplicate delivery dropped", job_id)
            return _settled(None)
        fence = claim.fence
        jlog = JobLogger(log, {"job_id": job_id, "correlation_id": claim.correlation_id or "-"},
                         record=lambda level, message: self.service.job_log(fence, level, message))
        jlog.info("started (attempt %d) on %s", claim.fence.attempt, self.worker_id)
        with self._lock:
            self._held[job_id] = claim.fence
        # The attempt (a busy slot, its running time) ends when the job does, maybe on the
        # finishing stage's thread.
        ending = ExitStack()
        attempt = ending.enter_context(metrics.attempt(claim.queued_s))

        def end(status: str | None) -> None:
            attempt.ended(status)
            with self._lock:
                self._held.pop(job_id, None)
            ending.close()

        try:
            outcome = self._guarded(fence, jlog, lambda: self._run(fence, claim.params, jlog))
            if not callable(outcome):
                end(outcome)
                return _settled(outcome)
            finish = functools.partial(self._guarded, fence, jlog, outcome)
            if stage is None:
                status = finish()
                end(status)
                return _settled(status)
            attempt.finishing_in_background()  # before the stage can end it
            future = stage.submit(finish)
        except BaseException:
            end(None)
            raise

        def finished(done: Future[str | None]) -> None:
            error = done.exception()
            if error is not None:
                # As when the store is away mid-run: the job stays running under this worker
                # until it is reclaimed, and runs again.
                log.error("[job=%s] storing the images failed: %s: %s", job_id, type(error).__name__, error)
            end(None if error else done.result())

        future.add_done_callback(finished)
        return future

    def _run(self, fence: Fence, params: dict[str, Any], jlog: JobLogger) -> str | Finish | None:
        if params.get("type") == "download":
            return self._download(fence, params, jlog)
        generated = self._generate(fence, params, jlog)
        return functools.partial(self._store, fence, generated, jlog)

    def _guarded(self, fence: Fence, jlog: JobLogger, work: Callable[[], T]) -> T | str | None:
        """Run part of a job, turning what ends it early into the status it ended in."""
        try:
            return work()
        except LostJob:
            if self.service.job_store.job_state(fence.job_id) == "canceled":
                log.info("[job=%s] canceled: the run stopped and stored nothing", fence.job_id)
                metrics.finished("canceled")
                return "canceled"
            jlog.warning("lost the job to another worker; dropping this run")
            return None
        except RunnerError as exc:
            return self._fail(fence, JobFailure(exc.code, exc.message, exc.details), jlog)
        except DreamForgeError:
            raise  # the job store itself is away: the job stays running and is reclaimed later
        except Exception as exc:
            jlog.exception("failed with an unexpected error")
            return self._fail(fence, JobFailure("internal_error", f"{type(exc).__name__}: {exc}"), jlog)

    def _generate(self, fence: Fence, params: dict[str, Any], jlog: JobLogger) -> Generated:
        service = self.service
        request = request_of(params)
        if request.seed is None:
            # The claim draws the seed of a job that names none and records it with the move
            # (JobService.claim): the params a run gets always carry one.
            raise RunnerError("the job has no seed: its claim did not record one", code="internal_error")
        inputs: dict[str, Any] = params.get("inputs") or {}
        generation = Generation(**{k: v for k, v in request.model_dump().items()
                                   if k in Generation.__dataclass_fields__
                                   and k not in ("model", "init_image", "mask_image", "loras")},
                                model=self._model_choice(request.model), mode=request.type,
                                loras=self._lora_choices(request),
                                init_image=self._input_bytes(inputs.get("init_image")),
                                mask_image=self._input_bytes(inputs.get("mask_image")))

        t0 = time.perf_counter()
        with ProgressReporter(service, fence, functools.partial(jlog.warning, "%s")) as progress:
            batch = self.runner.generate(generation, progress.report)
        return Generated(request, generation, batch, inputs, time.perf_counter() - t0, progress)

    def _store(self, fence: Fence, generated: Generated, jlog: JobLogger) -> str | None:
        """Encode, upload and record a generated job's images (on the finishing stage, when
        the job went through ``start``)."""
        service = self.service
        if not generated.progress.wait():  # its last progress first, so events come in order
            raise LostJob(fence.job_id)
        request, generation, batch, inputs = (generated.request, generated.generation, generated.batch,
                                              generated.inputs)
        record = run_record(batch.record, generation, inputs)
        meta = {**asdict(generation), "format": request.format}
        # The images' own bytes stay out of their metadata: their sha256 names them.
        for name in ("init_image", "mask_image"):
            meta[name] = inputs[name]["sha256"] if name in inputs else None
        if generation.loras:
            meta["loras"] = lora_list(generation)
        else:
            del meta["loras"]
        if request.type == "generate":
            for name in ("mode", "init_image", "mask_image", "strength"):
                del meta[name]  # so a generate job's images are the bytes they were before
        stored: list[dict[str, Any]] = []
        unstored: list[tuple[dict[str, Any], StorageError, bool]] = []
        encode_s = store_s = 0.0
        try:
            for item, made in enumerate(batch.images):
                te = time.perf_counter()
                data = imaging.encode(made.image, request.format,
                                      imaging.item_metadata(meta, item, made.seed, self.runner.name, record),
                                      service.settings.png_compress_level, service.settings.png_encoder)
                ts = time.perf_counter()
                encode_s += ts - te
                key = self._begin_upload(fence, item, made, request.format, request.type)
                artifact: dict[str, Any] = {"item_index": item, "seed": made.seed, "width": made.image.width,
                            "height": made.image.height, "format": request.format, "s3_key": key,
                            "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                try:
                    service.artifact_store.put(key, data, CONTENT_TYPES[request.format],
                                               str(artifact["sha256"]))
                    stored.append(artifact)
                except StorageError as exc:
                    # The other items may still store (a hiccup, or one image too large for a
                    # nearly full disk): try them all, and keep this one on the worker.
                    unstored.append((artifact, exc, self._keep(fence, artifact, data, exc, jlog)))
                store_s += time.perf_counter() - ts
        except LostJob:
            for artifact in stored:
                self._remove_unconfirmed(artifact["s3_key"], jlog)
            raise
        if unstored:
            return self._storage_failed(fence, stored, unstored, record, jlog)
        timings = {"generate_s": round(generated.generate_s, 4), "encode_s": round(encode_s, 4),
                   "store_s": round(store_s, 4)}
        if batch.model_s is not None:
            timings["model_s"] = round(batch.model_s, 4)
        # The GPU memory the job really took at its peak, beside what was predicted for it, so
        # the prediction can be checked against reality job by job.
        for name, key in (("gpu_peak_bytes", "peak_allocated_bytes"), ("gpu_predicted_bytes", "predicted_peak_bytes")):
            if batch.gpu_memory and batch.gpu_memory.get(key) is not None:
                timings[name] = int(batch.gpu_memory[key])
        if not self._patiently(f"[job={fence.job_id}] recording success",
                               lambda: service.succeed(fence, stored, timings, record)):
            for artifact in stored:
                self._remove_unconfirmed(artifact["s3_key"], jlog)
            raise LostJob(fence.job_id)
        jlog.info("succeeded: %d image(s), %s (%d bytes)", len(stored), stored[0]["s3_key"],
                  sum(a["size_bytes"] for a in stored))
        # Per item-step, as progress counts: a batch's step makes `count` images at once.
        metrics.succeeded(timings, request.denoising_steps() * request.count, request.format)
        metrics.gpu_memory(batch.gpu_memory)
        return "succeeded"

    def _download(self, fence: Fence, params: dict[str, Any], jlog: JobLogger) -> str | None:
        """A model download (POST /v1/models): the model is registered; no artifact is stored."""
        from dreamforge.errors import DownloadFailed, InvalidRequest, ModelConflict
        from dreamforge.registry.jobs import run_download

        t0 = time.perf_counter()
        try:
            record = run_download(self.service, fence, params)
        except (DownloadFailed, ModelConflict, InvalidRequest) as exc:  # InvalidRequest: not_sdxl too
            return self._fail(fence, JobFailure(exc.code, exc.message, exc.details), jlog)
        note = {"model": record.name, "sha256": record.sha256, "size_bytes": record.size_bytes,
                "timings": {"download_s": round(time.perf_counter() - t0, 4)}}
        if not self._patiently(f"[job={fence.job_id}] recording success",
                               lambda: self.service.complete(fence, note)):
            # Canceled (or reclaimed) between the last check and now: the model was registered
            # for a job that no longer wants it.
            try:
                self.service.models.remove(record.name)
            except Exception:  # the job is lost either way; say what is left behind
                jlog.exception("model %s registered by a job it no longer holds, not removed", record.name)
            raise LostJob(fence.job_id)
        jlog.info("succeeded: model %s registered (%d bytes)", record.name, record.size_bytes or 0)
        metrics.finished("succeeded")
        return "succeeded"

    def _model_choice(self, name: str | None) -> ModelChoice | None:
        """The registered model the job names, or the registry's default; None leaves the runner
        on the model the settings name. A model removed since the job was queued fails the job."""
        try:
            record = self.service.models.resolve_recent(name)
        except ModelNotFound as exc:
            raise RunnerError(f"{exc.message} (removed after the job was queued?)",
                              code="unknown_model") from None
        except ModelRejected as exc:  # the name was given to a LoRA after the job was queued
            raise RunnerError(exc.message, code="model_invalid") from None
        if not record.registered:
            return None
        self.service.model_used(record.name)
        return ModelChoice(record.name, str(record.location), record.sha256)

    def _lora_choices(self, request: GenerateRequest) -> tuple[LoraChoice, ...]:
        """The registered LoRAs the job names; one removed since it was queued fails the job."""
        choices = []
        for lora in request.loras or []:
            try:
                record = self.service.models.resolve_lora(lora.name)
            except (ModelNotFound, InvalidRequest) as exc:
                raise RunnerError(f"{exc.message} (removed after the job was queued?)",
                                  code="unknown_model") from None
            self.service.model_used(record.name)
            choices.append(LoraChoice(record.name, str(record.location), record.sha256, lora.weight))
        return tuple(choices)

    def _input_bytes(self, image: dict[str, Any] | None) -> bytes | None:
        """An input image's bytes from the artifact store, checked against the sha256 the job
        was submitted with."""
        if image is None:
            return None
        try:
            data = self.service.artifact_store.get(image["key"])
        except StorageError as exc:
            raise RunnerError(f"the input image {image['sha256']} could not be read: {exc.message}",
                              code="input_unavailable") from None
        if hashlib.sha256(data).hexdigest() != image["sha256"]:
            raise RunnerError(f"the input image at {image['key']} is not the one the job was submitted "
                              f"with (sha256 {image['sha256']})", code="input_unavailable")
        return data

    def _begin_upload(self, fence: Fence, item: int, made: GeneratedImage, fmt: str,
                      step: str = "generate") -> str:
        """Record the key this attempt is about to write (fenced), before writing it. Keys carry
        the second they were made in; one an earlier attempt already used is never reused, so
        sweeping that attempt's leftovers can't remove this one's image."""
        while True:
            key = artifact_key(fence.job_id, utcnow(), item, made.image.width, made.image.height,
                               made.seed, fmt, step)
            began = self._patiently(f"[job={fence.job_id}] recording the upload",
                                    functools.partial(self.service.begin_upload, fence, key))
            if began is False:
                raise LostJob(fence.job_id)
            if began:
                return key
            time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def _remove_unconfirmed(self, key: str, jlog: JobLogger) -> None:
        try:
            self.service.artifact_store.delete(key)
        except StorageError as exc:
            jlog.warning("could not remove %s (the upload sweep will): %s", key, exc.message)

    def _keep(self, fence: Fence, artifact: dict[str, Any], data: bytes, exc: StorageError,
              jlog: JobLogger) -> bool:
        """The image exists only in this process now: keep it on local disk. True if kept."""
        key = artifact["s3_key"]
        jlog.error("storing %s failed: %s", key, exc.message)
        try:
            kept = self.spool.keep(fence.job_id, key, data, CONTENT_TYPES[artifact["format"]], artifact)
        except StorageError as spool_exc:
            jlog.error("the image is lost: %s", spool_exc.message)
            if spool_exc.details and spool_exc.details.get("out_of_space"):
                exc.details = {**(exc.details or {}), "out_of_space": True}
            return False
        jlog.warning("the image is kept at %s (`df artifacts retry` uploads it)", kept)
        return True

    def _storage_failed(self, fence: Fence, stored: list[dict[str, Any]],
                        unstored: list[tuple[dict[str, Any], StorageError, bool]],
                        record: dict[str, Any], jlog: JobLogger) -> str | None:
        """Some items did not store. The job fails with storage_error, keeping the items that
        did (their rows are written with the failure: summary.completed counts them), and says
        which did not and whether the worker kept them (`df artifacts retry` uploads those and
        the job succeeds once every item is stored). The record says what happened without
        naming the server's paths or endpoints; the worker's log has those."""
        first = unstored[0][1]
        all_kept = all(kept for _, _, kept in unstored)
        full = any((exc.details or {}).get("out_of_space") for _, exc, _ in unstored)
        lost_reason = "the artifact store and the worker's spool are out of disk space" if full \
            else "the artifact store failed, and so did keeping the image on the worker"
        details = {**(first.details or {}), "kept": all_kept}
        if not stored and len(unstored) == 1:  # one image: as before batches
            message = f"{first.message}; the image is kept on the worker and `df artifacts retry` there " \
                      "uploads it" if all_kept else \
                f"{lost_reason}; the image was not kept. Its seed is recorded: run the job again for the same image"
        else:
            missing = [a["item_index"] for a, _, _ in unstored]
            lost = [a["item_index"] for a, _, kept in unstored if not kept]
            kept = [i for i in missing if i not in lost]
            details.update(stored=[a["item_index"] for a in stored], not_stored=missing, not_kept=lost)
            items = ", ".join(map(str, missing))
            message = (f"item {items} of {len(stored) + len(unstored)} was not stored" if len(missing) == 1 else
                       f"items {items} of {len(stored) + len(unstored)} were not stored") + f": {first.message}"
            if kept:
                message += f"; kept on the worker: item {', '.join(map(str, kept))} (`df artifacts retry` there " \
                           "uploads it, and the job succeeds once every item is stored)"
            if lost:
                message += f"; lost: item {', '.join(map(str, lost))} ({lost_reason}); its seed is recorded: " \
                           "`df jobs rerun` makes the same images again"
        failure = JobFailure("storage_error", message, details)
        status = self._patiently(f"[job={fence.job_id}] recording failure",
                                 lambda: self.service.fail_storing(
                                     fence, failure, stored, [a["s3_key"] for a, _, _ in unstored], record))
        if status is None:
            jlog.warning("lost the job to another worker before recording storage_error")
            return None
        metrics.finished(status, failure.code)
        jlog.error("failed: %s: %s", failure.code, failure.message)
        return status

    def _fail(self, fence: Fence, failure: JobFailure, jlog: JobLogger) -> str | None:
        status = self._patiently(f"[job={fence.job_id}] recording failure",
                                 lambda: self.service.fail_attempt(fence, failure))
        if status is not None:
            metrics.finished(status, failure.code)
        if status == "queued":
            jlog.warning("attempt %d of %d ended with %s; back to the queue", fence.attempt,
                         self.service.settings.max_attempts, failure.code)
        elif status == "failed":
            jlog.error("failed: %s: %s", failure.code, failure.message)
        else:
            jlog.warning("lost the job to another worker before recording %s", failure.code)
        return status
