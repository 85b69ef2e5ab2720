"""What a worker measures, as Prometheus metrics (prometheus-client), and the calls that record it.

Observations are made where the work happens: in ``df worker`` (served on its own port, see
``serve``) or in ``df serve``'s embedded worker (served by the API's ``/metrics``). What the job
store knows (jobs by status, queue depth, live workers) is read at scrape time by the API instead:
see ``server/metrics.py``.

With PROMETHEUS_MULTIPROC_DIR set before this module is first imported, prometheus-client keeps
the values in files there, and ``registry()`` adds up every process's files: the way to run the
API in several processes. Gauges say how to combine processes (``multiprocess_mode``); the
``live*`` modes drop a process once ``prometheus_client.multiprocess.mark_process_dead`` is called
for it (gunicorn's ``child_exit`` hook).

Nothing here imports torch: GPU memory comes from the SDXL child, as numbers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.multiprocess import MultiProcessCollector

# The text format shows each counter's and histogram's creation time as one more series (`_created`),
# which nothing here graphs: half again the series for no question answered.
disable_created_metrics()

# Seconds per denoising step: ~0.02 s (small image, H100, compiled) to a few s (1024², CPU).
STEP_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0)
# A job from claim to its end: seconds (small, fast GPU) to many minutes (150 steps, 2048²).
RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600)
# Waiting in the queue: next to nothing on an idle fleet, up to hours behind a backlog.
QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Loading SDXL: ~5 s from a warm page cache to minutes from a network volume, or compiling.
LOAD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
# Encoding (PNG of 1024² ~0.1–0.5 s) and uploading (local disk ms, S3 up to seconds).
IO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

QUEUED = Histogram("dreamforge_job_queued_seconds",
                   "From a job's creation to the claim that started this attempt (store clock)",
                   buckets=QUEUE_BUCKETS)
RUNNING = Histogram("dreamforge_job_running_seconds",
                    "From claim to the end of the attempt on this worker, by how it ended "
                    "(succeeded, failed, requeued, canceled, lost, error)",
                    ["outcome"], buckets=RUN_BUCKETS)
MODEL_LOAD = Histogram("dreamforge_model_load_seconds", "Loading the model into a runner",
                       buckets=LOAD_BUCKETS)
STEP = Histogram("dreamforge_step_seconds",
                 "Seconds per denoising step, averaged over one successful generation",
                 buckets=STEP_BUCKETS)
ENCODE = Histogram("dreamforge_encode_seconds", "Encoding the image, by format", ["format"],
                   buckets=IO_BUCKETS)
UPLOAD = Histogram("dreamforge_upload_seconds", "Writing the image to the artifact store",
                   buckets=IO_BUCKETS)
FINISHED = Counter("dreamforge_jobs_finished_total",
                   "Jobs this worker saw end, by terminal status and error code (none when not "
                   "failed); failures decided by a reaper (worker_lost) count where it ran",
                   ["status", "code"])
RETRIES = Counter("dreamforge_job_retries_total",
                  "Failed attempts that sent the job back to the queue, by error code", ["code"])
BUSY = Gauge("dreamforge_worker_busy_slots", "Job slots running a job now",
             multiprocess_mode="livesum")
IDLE = Gauge("dreamforge_worker_idle_slots", "Job slots waiting for a job",
             multiprocess_mode="livesum")
FINISHING = Gauge("dreamforge_worker_finishing_jobs",
                  "Generated jobs whose images are being encoded and stored, their slot free for the next",
                  multiprocess_mode="livesum")
MODELS_LOADED = Gauge("dreamforge_models_loaded", "Models loaded in this worker's runner",
                      multiprocess_mode="livesum")
GPU_ALLOCATED = Gauge("dreamforge_gpu_memory_allocated_bytes",
                      "GPU memory allocated by the runner after its last job (CUDA only)",
                      ["device"], multiprocess_mode="livemax")
GPU_PEAK = Gauge("dreamforge_gpu_memory_peak_bytes",
                 "Peak GPU memory allocated by the runner during its last job (CUDA only)",
                 ["device"], multiprocess_mode="livemax")
WORKER_INFO = Gauge("dreamforge_worker_info", "1 per running worker, naming it and its runner",
                    ["worker_id", "runner"], multiprocess_mode="livesum")


class _Slots:
    """Busy and idle job slots of this process's worker, kept consistent under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = self.busy = 0

    def update(self, total: int | None = None, busy: int = 0) -> None:
        with self._lock:
            if total is not None:
                self.total = total
            self.busy += busy
            BUSY.set(self.busy)
            IDLE.set(max(0, self.total - self.busy))


_slots = _Slots()


def worker_started(worker_id: str, runner: str, slots: int) -> None:
    WORKER_INFO.labels(worker_id, runner).set(1)
    _slots.update(total=slots)


def worker_stopped(worker_id: str, runner: str) -> None:
    with contextlib.suppress(KeyError):
        WORKER_INFO.remove(worker_id, runner)
    _slots.update(total=0)


class Attempt:
    """One claimed attempt while it runs; ``outcome`` is what it ended as ("error" when the run
    raised: the job store was away, and the job stays running until it is reclaimed)."""

    outcome = "error"
    finishing = False

    def finishing_in_background(self) -> None:
        """The runner is done with the job; its images are stored in the background (the
        finishing stage), so its slot is free for the next job."""
        if not self.finishing:
            self.finishing = True
            _slots.update(busy=-1)
            FINISHING.inc()

    def ended(self, status: str | None) -> None:
        """The status the attempt left the job in; None when the job was lost to another worker."""
        self.outcome = {None: "lost", "queued": "requeued"}.get(status, status or "lost")


@contextlib.contextmanager
def attempt(queued_s: float | None) -> Iterator[Attempt]:
    """Around one claimed attempt: its wait in the queue, a busy slot while it runs, and its
    running time by outcome. Terminal counts are recorded by ``finished``."""
    if queued_s is not None:
        QUEUED.observe(max(0.0, queued_s))
    run = Attempt()
    started = time.perf_counter()
    _slots.update(busy=1)
    try:
        yield run
    finally:
        if run.finishing:
            FINISHING.dec()
        else:
            _slots.update(busy=-1)
        RUNNING.labels(run.outcome).observe(time.perf_counter() - started)


def finished(status: str, code: str | None = None) -> None:
    """A job ended (succeeded, failed, canceled), or a failed attempt went back (queued)."""
    if status == "queued":
        RETRIES.labels(code or "unknown").inc()
    elif status in ("succeeded", "failed", "canceled"):
        FINISHED.labels(status, code or "none").inc()


def succeeded(timings: dict[str, float], steps: int, fmt: str) -> None:
    """A successful generation's phases, from the timings the job record keeps."""
    model_s = timings.get("model_s", timings.get("generate_s"))
    if model_s is not None and steps > 0:
        STEP.observe(model_s / steps)
    if "encode_s" in timings:
        ENCODE.labels(fmt).observe(timings["encode_s"])
    if "store_s" in timings:
        UPLOAD.observe(timings["store_s"])
    finished("succeeded")


def model_loaded(seconds: float | None, loaded: int = 1) -> None:
    """The runner loaded (or, with loaded 0, dropped) its model. For runners/."""
    if seconds is not None:
        MODEL_LOAD.observe(seconds)
    MODELS_LOADED.set(loaded)


def gpu_memory(report: dict[str, Any] | None) -> None:
    """``{"device": "cuda:0", "allocated": bytes, "peak": bytes}`` from a CUDA runner, or None."""
    if not report:
        return
    device = str(report.get("device", "cuda"))
    GPU_ALLOCATED.labels(device).set(float(report["allocated"]))
    GPU_PEAK.labels(device).set(float(report["peak"]))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """What this process exposes of the metrics above: its own values, or, in multi-process mode,
    the sum over every process writing into PROMETHEUS_MULTIPROC_DIR."""
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    combined = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(combined, path=folder)
    return combined


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on host:port from a daemon thread (``df worker --metrics-port``); returns
    the server, whose ``shutdown()`` stops it. Raises OSError when the port is taken."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry())
    return server
