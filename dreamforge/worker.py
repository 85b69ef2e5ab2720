"""Worker runtimes: Huey's consumer (or a thread) around one Executor, with the heartbeat that
keeps jobs honest and the reaper that recovers what silent workers left.

Heartbeats serve two ends: ``df generate --wait`` asks whether any worker is alive, and every
worker's reaper reclaims jobs whose holder went silent (a SIGKILLed worker, a lost host),
putting them back on the queue through the job service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from huey import signals as huey_signals
from huey.consumer import Consumer
from huey.consumer import Worker as HueyWorker

from dreamforge import metrics
from dreamforge.errors import DreamForgeError
from dreamforge.execution import Executor
from dreamforge.runners import Runner

if TYPE_CHECKING:
    from dreamforge.service import JobService

log = logging.getLogger(__name__)


def new_worker_id(kind: str = "worker") -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class QuietHueyWorker(HueyWorker):
    """Huey's worker loop, but a queue that is away (Redis restarting) is logged once per outage
    and retried with backoff, instead of a traceback every poll interval."""

    _outage_since: float | None = None

    def loop(self, now: Any = None) -> None:
        try:
            task = self.huey.dequeue()
        except Exception as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                self._logger.warning("queue unreachable (%s: %s); retrying", type(exc).__name__, exc)
            self.stop_flag.wait(min(5.0, 0.25 * 2 ** min(6, int(time.monotonic() - self._outage_since))))
            return
        if self._outage_since is not None:
            self._logger.warning("queue reachable again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
        if task is not None:
            self.delay = self.default_delay
            try:
                self.huey.execute(task, now)
            except Exception:
                self._logger.exception("unhandled error in task %s", task.id)
        elif not self.huey.storage.blocking:
            self.sleep()


class QuietConsumer(Consumer):
    worker_class = QuietHueyWorker


class _Every(threading.Thread):
    """A daemon thread that calls ``tick`` every ``interval`` seconds until stopped; a failing
    tick is logged and tried again next time."""

    def __init__(self, name: str, interval: float, tick: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.interval, self.tick = interval, tick
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.tick()
            except DreamForgeError as exc:
                log.warning("%s failed (will retry): %s", self.name, exc.message)
            except Exception:
                log.exception("%s failed (will retry)", self.name)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class WorkerRuntime:
    """What every worker runtime shares (``df worker``, the CLI's in-process run, ``df serve``'s
    embedded worker): one worker identity and its executor, the queue handler, and two threads.

    The heartbeat thread only tells the store this worker and its jobs are alive. The reaper
    thread reclaims jobs whose holder went silent, re-enqueues orphaned queued jobs and removes
    objects no record confirms. They are apart so that a reaper held up by the store (a lock a
    frozen worker holds, until the store's lock timeout) never makes this worker look dead.

    ``register`` False is for the CLI's in-process run: it keeps its own job's heartbeat but is
    not a worker other CLIs may hand jobs to.
    """

    def __init__(self, service: JobService, runner: Runner, kind: str = "worker",
                 register: bool = True):
        settings = service.settings
        self.service = service
        self.runner = runner
        self.register = register
        self.executor = Executor(service, runner, new_worker_id(kind))
        self.worker_id = self.executor.worker_id
        self._heartbeat = _Every("df-heartbeat", settings.heartbeat_interval_s, self.beat)
        self._reaper = _Every("df-reaper", settings.heartbeat_interval_s, self.reap)
        self._next_sweep = 0.0
        # Webhook deliveries go out from a thread of their own (none without DF_WEBHOOK_SECRET).
        # The CLI's in-process run sends what is due once more as it stops: it exits next.
        self._deliverer = service.webhook_deliverer(flush_on_stop=not register)

    def start(self) -> None:
        self.service.queue.serve(self.executor.start)
        self.beat()
        self._heartbeat.start()
        self._reaper.start()
        if self._deliverer is not None:
            self._deliverer.start()

    def beat(self) -> None:
        self.service.worker_heartbeat(self.worker_id, socket.gethostname(), os.getpid(),
                                      self.executor.held(), register=self.register)

    def reap(self) -> None:
        for _job_id, status in self.service.reclaim_silent():
            metrics.finished(status, "worker_lost")
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.service.settings.orphan_sweep_interval_s
            self.service.requeue_orphans(self.worker_id)
            self.service.sweep_uploads()
            self.service.apply_retention(self.worker_id)

    def hand_back_held(self, reason: str) -> None:
        for fence in self.executor.held():
            if self.executor.hand_back(fence.job_id, reason):
                log.info("[job=%s] handed back to the queue", fence.job_id)

    def stop(self, grace_s: float | None = None, reason: str = "worker stopped") -> None:
        """Let the finishing stage store the images it holds (they exist: storing them is the
        quickest way to those jobs' end) for up to ``grace_s`` (DF_SHUTDOWN_GRACE_S), hand back
        what is still held, then stop. The heartbeat goes on until then."""
        grace_s = self.service.settings.shutdown_grace_s if grace_s is None else grace_s
        if not self.executor.drain(grace_s):
            log.warning("images still being stored after %.0f s", grace_s)
        self.hand_back_held(reason)
        self.executor.close()
        self._heartbeat.stop()
        self._reaper.stop()
        if self._deliverer is not None:
            self._deliverer.stop()
        self.service.queue.serve(None)
        if self.register:
            try:
                self.service.worker_stopped(self.worker_id)
            except DreamForgeError:
                pass
        self.runner.close()


def run_worker(service: JobService, runner: Runner, concurrency: int = 1) -> None:
    """Run until SIGTERM or SIGINT. SIGTERM (what ``docker stop`` sends) drains: no new jobs, the
    current ones finish within DF_SHUTDOWN_GRACE_S, and whatever is still running then is handed
    back to the queue. SIGINT stops at once and hands running jobs back."""
    settings = service.settings
    runtime = WorkerRuntime(service, runner)

    @service.queue.huey.signal(huey_signals.SIGNAL_INTERRUPTED)
    def _hand_back(_signal: str, task: object, *_: object) -> None:
        job_id = getattr(task, "args", (None,))[0]
        if job_id and runtime.executor.hand_back(job_id, "worker stopped"):
            log.info("[job=%s] handed back to the queue", job_id)

    consumer = QuietConsumer(
        service.queue.huey, workers=concurrency, worker_type="thread", periodic=False,
        # Constant short polling: Huey's default backs off to 10 s when idle, which is what a
        # user would see as "my job sat queued". Redis pops block, so this only affects SQLite.
        initial_delay=settings.poll_interval_s, backoff=1.0, max_delay=settings.poll_interval_s,
        graceful_signal="TERM", shutdown_timeout=settings.shutdown_grace_s)
    log.info("worker %s: queue %s, runner %s, concurrency %d", runtime.worker_id,
             service.queue.describe(), runner.name, concurrency)
    runner.warm()
    runtime.start()
    metrics.worker_started(runtime.worker_id, runner.name, concurrency)
    try:
        consumer.run()
    finally:
        metrics.worker_stopped(runtime.worker_id, runner.name)
        runtime.stop()
        log.info("worker %s stopped", runtime.worker_id)


class InlineWorker:
    """The CLI's stand-in when no worker is alive: a thread that works through the queue until
    one job has ended, exactly as a consumer would (so the queue entries it leaves are none)."""

    def __init__(self, service: JobService, runner: Runner, job_id: str):
        self.service = service
        self.job_id = job_id
        self.runtime = WorkerRuntime(service, runner, "cli", register=False)
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="df-inline", daemon=True)

    def start(self) -> None:
        self.runtime.start()
        self._thread.start()

    def interrupt(self, reason: str) -> None:
        """Stop taking work and give back what this run holds (the CLI was interrupted): the
        job is queued again, for a worker, instead of left running with a holder that is gone."""
        self._halt.set()
        self.runtime.hand_back_held(reason)
        self.runtime.stop()

    def join(self) -> None:
        self._thread.join()
        self.runtime.stop()

    def _target_settled(self) -> bool:
        return self.service.get(self.job_id).status.value != "queued"

    def _loop(self) -> None:
        huey = self.service.queue.huey
        try:
            while not self._halt.is_set() and not self._target_settled():
                task = huey.dequeue()
                if self._halt.is_set():
                    if task is not None:
                        huey.enqueue(task)  # not ours to run any more: back for a worker
                    return
                if task is None:
                    # Our message is gone but the job is still queued (a worker took the message
                    # and has not claimed yet, or the entry was lost): run it directly.
                    self.runtime.executor.execute(self.job_id)
                    continue
                huey.execute(task)
        except BaseException as exc:  # raised in the CLI by check(), which it calls while watching
            self.error = exc

    def check(self) -> None:
        """Raise what stopped the in-process run, so the CLI does not watch a job nobody runs.
        The runtime's threads stop first: nothing of this run outlives the command."""
        if self.error is not None:
            self.runtime.stop()
            raise self.error


class EmbeddedWorker:
    """Huey's own worker loop on a thread, for ``df serve`` in the embedded default. Huey's
    Consumer installs signal handlers and so wants the main thread, which uvicorn owns; the
    server's lifespan starts and drains this one instead."""

    def __init__(self, service: JobService, runner: Runner):
        settings = service.settings
        self.settings = settings
        self.runner = runner
        self.runtime = WorkerRuntime(service, runner)
        self._stop = threading.Event()
        self._huey_worker = QuietHueyWorker(service.queue.huey, self._stop, settings.poll_interval_s,
                                            settings.poll_interval_s, 1.0)
        self._thread = threading.Thread(target=self._loop, name="df-embedded-worker", daemon=True)

    def start(self) -> None:
        self.runtime.start()
        self._thread.start()
        metrics.worker_started(self.runtime.worker_id, self.runner.name, 1)
        log.info("embedded worker %s started", self.runtime.worker_id)

    def _loop(self) -> None:
        self.runner.warm()
        while not self._stop.is_set():
            self._huey_worker.loop()

    def stop(self) -> None:
        """Take no new job; let the current one finish within the grace period, else hand it back."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        self._stop.set()
        self._thread.join(timeout=self.settings.shutdown_grace_s)
        self.runtime.stop(max(0.0, deadline - time.monotonic()), "server stopped")
        metrics.worker_stopped(self.runtime.worker_id, self.runner.name)
