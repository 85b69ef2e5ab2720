"""The worker: Huey's consumer around one Executor, plus the heartbeat that keeps jobs honest.

Heartbeats serve two ends: ``df generate --wait`` asks whether any worker is alive, and every
worker's heartbeat loop also reclaims jobs whose holder went silent (a SIGKILLed worker, a lost
host), putting them back on the queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from huey import signals as huey_signals
from huey.consumer import Consumer
from huey.consumer import Worker as HueyWorker

from dreamforge.errors import DreamForgeError
from dreamforge.lifecycle import Executor
from dreamforge.queue import JobQueue, set_task_handler
from dreamforge.runners import Runner
from dreamforge.settings import Settings
from dreamforge.spool import Spool
from dreamforge.storage import ArtifactStore
from dreamforge.store import JobStore

if TYPE_CHECKING:
    from dreamforge.service import JobService

log = logging.getLogger("dreamforge.worker")


def new_worker_id(kind: str = "worker") -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def make_executor(settings: Settings, store: JobStore, queue: JobQueue, storage: ArtifactStore,
                  runner: Runner, kind: str = "worker") -> Executor:
    return Executor(store, storage, runner, new_worker_id(kind), Spool(settings.spool_dir),
                    requeue=queue.enqueue, max_attempts=settings.max_attempts,
                    store_wait_s=settings.store_wait_s)


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


class Heartbeat:
    """A daemon thread: every interval, tell the store we are alive and reclaim stale jobs.

    ``register`` False is for the CLI's in-process run: it keeps its own job's heartbeat but is
    not a worker other CLIs may hand jobs to.
    """

    def __init__(self, settings: Settings, store: JobStore, queue: JobQueue, executor: Executor,
                 register: bool = True):
        self.settings = settings
        self.store = store
        self.queue = queue
        self.executor = executor
        self.register = register
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="df-heartbeat", daemon=True)
        self._next_sweep = time.monotonic() + settings.orphan_sweep_interval_s

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        active = self.executor.active()
        if self.register:
            self.store.worker_heartbeat(self.executor.worker_id, socket.gethostname(), os.getpid(),
                                        active)
        else:
            for job_id in active:
                self.store.job_heartbeat(job_id, self.executor.worker_id)
        for job_id, status in self.store.reclaim_stale(self.settings.worker_timeout_s,
                                                       self.settings.max_attempts):
            log.warning("[job=%s] its worker went silent: now %s", job_id, status)
            if status == "queued":
                self.queue.enqueue(job_id)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.settings.orphan_sweep_interval_s
            self.requeue_orphans()

    def requeue_orphans(self) -> list[str]:
        """Queued jobs whose queue message is gone (taken by a worker that died before claiming,
        or lost with a queue that kept nothing): ring the bell again. A duplicate is harmless,
        since only one claim can win."""
        stale = self.store.queued_before(self.settings.worker_timeout_s)
        if not stale:
            return []
        pending = set(self.queue.pending_job_ids())
        orphans = [job_id for job_id in stale if job_id not in pending]
        for job_id in orphans:
            log.warning("[job=%s] queued without a queue entry: enqueued again", job_id)
            self.queue.enqueue(job_id)
        return orphans

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
            except DreamForgeError as exc:
                log.warning("heartbeat failed (will retry): %s", exc.message)
            except Exception:
                log.exception("heartbeat failed (will retry)")


def run_worker(service: "JobService", runner: Runner, concurrency: int = 1) -> None:
    """Run until SIGTERM or SIGINT. SIGTERM (what ``docker stop`` sends) drains: no new jobs, the
    current ones finish within DF_SHUTDOWN_GRACE_S, and whatever is still running then is handed
    back to the queue. SIGINT stops at once and hands running jobs back."""
    settings, store, queue, storage = service.settings, service.store, service.queue, service.storage
    executor = make_executor(settings, store, queue, storage, runner)
    heartbeat = Heartbeat(settings, store, queue, executor)

    @queue.huey.signal(huey_signals.SIGNAL_INTERRUPTED)
    def _hand_back(_signal: str, task: object, *_: object) -> None:
        job_id = getattr(task, "args", (None,))[0]
        if job_id and executor.hand_back(job_id, "worker stopped"):
            log.info("[job=%s] handed back to the queue", job_id)

    set_task_handler(executor.execute)
    consumer = QuietConsumer(
        queue.huey, workers=concurrency, worker_type="thread", periodic=False,
        # Constant short polling: Huey's default backs off to 10 s when idle, which is what a
        # user would see as "my job sat queued". Redis pops block, so this only affects SQLite.
        initial_delay=settings.poll_interval_s, backoff=1.0, max_delay=settings.poll_interval_s,
        graceful_signal="TERM", shutdown_timeout=settings.shutdown_grace_s)
    log.info("worker %s: queue %s, runner %s, concurrency %d", executor.worker_id,
             queue.describe(), runner.name, concurrency)
    runner.warm()
    heartbeat.start()
    try:
        consumer.run()
    finally:
        heartbeat.stop()
        set_task_handler(None)
        try:
            store.worker_stopped(executor.worker_id)
        except DreamForgeError:
            pass
        runner.close()
        log.info("worker %s stopped", executor.worker_id)


class InlineWorker:
    """The CLI's stand-in when no worker is alive: a thread that works through the queue until
    one job has ended, exactly as a consumer would (so the queue entries it leaves are none)."""

    def __init__(self, service: "JobService", runner: Runner, job_id: str):
        settings, store, queue, storage = service.settings, service.store, service.queue, service.storage
        self.settings = settings
        self.queue = queue
        self.store = store
        self.runner = runner
        self.job_id = job_id
        self.executor = make_executor(settings, store, queue, storage, runner, "cli")
        self.heartbeat = Heartbeat(settings, store, queue, self.executor, register=False)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="df-inline", daemon=True)

    def start(self) -> None:
        set_task_handler(self.executor.execute)
        self.heartbeat.start()
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        self.heartbeat.stop()
        set_task_handler(None)
        self.runner.close()

    def _target_settled(self) -> bool:
        job = self.store.job(self.job_id)
        return job["status"] != "queued"

    def _loop(self) -> None:
        try:
            while not self._target_settled():
                task = self.queue.huey.dequeue()
                if task is None:
                    # Our message is gone but the job is still queued (a worker took the message
                    # and has not claimed yet, or the entry was lost): run it directly.
                    self.executor.execute(self.job_id)
                    continue
                self.queue.huey.execute(task)
        except BaseException as exc:  # raised in the CLI by check(), which it calls while watching
            self.error = exc

    def check(self) -> None:
        """Raise what stopped the in-process run, so the CLI does not watch a job nobody runs."""
        if self.error is not None:
            raise self.error


class EmbeddedWorker:
    """Huey's own worker loop on a thread, for ``df serve`` in the embedded default. Huey's
    Consumer installs signal handlers and so wants the main thread, which uvicorn owns; the
    server's lifespan starts and drains this one instead."""

    def __init__(self, service: "JobService", runner: Runner):
        settings, store, queue, storage = service.settings, service.store, service.queue, service.storage
        self.settings = settings
        self.queue = queue
        self.runner = runner
        self.executor = make_executor(settings, store, queue, storage, runner)
        self.heartbeat = Heartbeat(settings, store, queue, self.executor)
        self.store = store
        self._stop = threading.Event()
        self._huey_worker = QuietHueyWorker(queue.huey, self._stop, settings.poll_interval_s,
                                            settings.poll_interval_s, 1.0)
        self._thread = threading.Thread(target=self._loop, name="df-embedded-worker", daemon=True)

    def start(self) -> None:
        set_task_handler(self.executor.execute)
        self.heartbeat.start()
        self._thread.start()
        log.info("embedded worker %s started", self.executor.worker_id)

    def _loop(self) -> None:
        self.runner.warm()
        while not self._stop.is_set():
            self._huey_worker.loop()

    def stop(self) -> None:
        """Take no new job; let the current one finish within the grace period, else hand it back."""
        self._stop.set()
        self._thread.join(timeout=self.settings.shutdown_grace_s)
        for job_id in self.executor.active():
            self.executor.hand_back(job_id, "server stopped")
        self.heartbeat.stop()
        self.store.worker_stopped(self.executor.worker_id)
        set_task_handler(None)
        self.runner.close()
