"""A running job's progress, written to the job store from another thread, so the thread that
drives the runner (and, for an in-process runner, the model itself) never waits on a write.

One writer thread per process serves every reporter: a thread started per job cost a 1-step job
about 0.25 ms of Python time (a sampling profile under benchmarks/queue_overhead.py), and the
writes of one process's jobs go to the same store one at a time anyway.

At most one write per PROGRESS_EVERY_S and always the last value; between writes, a cheap read
every CANCEL_CHECK_S notices a cancel or a reclaim. Once a write is refused or the read says the
job is not held any more, ``report`` raises LostJob in the runner's thread, which stops the run."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from dreamforge.errors import BackendUnavailable

if TYPE_CHECKING:
    from dreamforge.moves import Fence
    from dreamforge.service import JobService

log = logging.getLogger(__name__)

# A 150-step job on a fast GPU would otherwise write 30 progress rows a second.
PROGRESS_EVERY_S = 0.25
CANCEL_CHECK_S = 0.1


class LostJob(Exception):
    """This worker no longer holds the job (canceled, or reclaimed after a missed heartbeat)."""


class ProgressReporter:
    """``report(current, total)`` from the runner's thread; ``close()`` when the run is over, then
    ``wait()`` before recording the job's end, so its last progress comes before it."""

    def __init__(self, service: JobService, fence: Fence, warn: Callable[[str], object] | None = None):
        # The message is data (a store's error text): an argument of the log line, never its format.
        self.service, self.fence = service, fence
        self.warn = warn or functools.partial(log.warning, "[job=%s] %s", fence.job_id)
        self.lost = False
        self._latest: tuple[int, int] | None = None
        self._recorded: tuple[int, int] | None = None
        # The claim has just shown the job held, and a bar that fills in its first quarter second
        # tells nobody anything: the first write and check wait that long (a short job writes once).
        self._written = self._checked = time.monotonic()
        self._closing = self._discard = False
        self._done = threading.Event()
        self._writer = _writer()
        self._writer.add(self)

    def report(self, current: int, total: int) -> None:
        if self.lost:
            raise LostJob(self.fence.job_id)
        with self._writer.cond:
            if self._latest != (current, total):
                self._latest = (current, total)
                # A wake-up costs a context switch: only when this value is due before the
                # writer wakes anyway.
                self._writer.wake_by(self._written + PROGRESS_EVERY_S if current < total else 0.0)

    def close(self, discard: bool = False) -> None:
        """No more reports: the last one is written at once (none, with ``discard``)."""
        with self._writer.cond:
            self._closing, self._discard = True, discard
            self._writer.cond.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the last write; False when the job was found lost meanwhile."""
        self.close()
        self._done.wait(timeout)
        return not self.lost

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self.close(discard=kind is not None)

    def _due(self, now: float) -> tuple[int, int] | Literal["check", "stop"] | float:
        """What is due now (a value to write, a check that the job is still held, or stop), or
        the time something will be. Called by the writer with its lock held."""
        pending = self._latest if self._latest != self._recorded and not self._discard else None
        if pending is not None:
            last = pending[0] >= pending[1]
            if last or self._closing or now - self._written >= PROGRESS_EVERY_S:
                return pending
        if self._closing:
            return "stop"
        if now - self._checked >= CANCEL_CHECK_S:
            return "check"
        wake = self._checked + CANCEL_CHECK_S
        if pending is not None:
            wake = min(wake, self._written + PROGRESS_EVERY_S)
        return wake

    def _carry_out(self, task: tuple[int, int] | Literal["check"]) -> None:
        """Write a value or check the job is held (on the writer's thread, its lock not held)."""
        value = task if isinstance(task, tuple) else None
        try:
            held = self.service.progress(self.fence, *value) if value else self.service.holds(self.fence)
        except BackendUnavailable as exc:
            # Progress is best effort: the image is worth more than the bar.
            self.warn(f"progress not recorded: {exc.message}")
            held = True
        except Exception:
            log.exception("[job=%s] progress not recorded", self.fence.job_id)
            held = True
        if value:
            self._recorded, self._written = value, time.monotonic()
        self._checked = time.monotonic()
        if not held:
            self.lost = True


class _Writer:
    """The thread that carries out every reporter's writes and checks, each when it is due. A
    lost reporter stops at once; one closed stops after its last write."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._reporters: list[ProgressReporter] = []
        # When the waiting writer wakes up by itself (None: not before a notify; 0: it is not
        # waiting, and looks at every reporter before it does).
        self._wake_at: float | None = 0.0
        self._last_stop = 0.0  # when the last reporter let go
        self._thread = threading.Thread(target=self._loop, name="df-progress", daemon=True)
        self._thread.start()

    def add(self, reporter: ProgressReporter) -> None:
        with self.cond:
            self._reporters.append(reporter)
            self.wake_by(reporter._checked + CANCEL_CHECK_S)

    def wake_by(self, due: float) -> None:
        """Something is due at ``due``: wake the writer if it would sleep past that. With the lock held."""
        if self._wake_at is None or self._wake_at > due:
            self._wake_at = 0.0
            self.cond.notify()

    def _next(self) -> tuple[ProgressReporter, tuple[int, int] | Literal["check"]]:
        """The next reporter with something due, and what; reporters that stop are let go here."""
        with self.cond:
            while True:
                now = time.monotonic()
                wake: float | None = None
                for reporter in list(self._reporters):
                    task = reporter._due(now) if not reporter.lost else "stop"
                    if task == "stop":
                        self._reporters.remove(reporter)
                        reporter._done.set()
                        self._last_stop = now
                    elif isinstance(task, float):
                        wake = task if wake is None else min(wake, task)
                    else:
                        # The reporter goes to the back, so a busy one can't starve the rest.
                        self._reporters.remove(reporter)
                        self._reporters.append(reporter)
                        return reporter, task
                if wake is None and now - self._last_stop < CANCEL_CHECK_S:
                    # Jobs back to back: the next one's reporter comes within moments, and its
                    # first check is due CANCEL_CHECK_S after that; a writer that wakes by then
                    # anyway needs no notify (a context switch) for it.
                    wake = self._last_stop + CANCEL_CHECK_S
                self._wake_at = wake
                self.cond.wait(None if wake is None else max(0.0, wake - now))
                self._wake_at = 0.0

    def _loop(self) -> None:
        while True:
            reporter, task = self._next()
            reporter._carry_out(task)


_lock = threading.Lock()
_the_writer: _Writer | None = None


def _writer() -> _Writer:
    """This process's writer, started on first use (and again in a forked child, where the
    parent's thread does not run)."""
    global _the_writer
    with _lock:
        if _the_writer is None or not _the_writer._thread.is_alive():
            _the_writer = _Writer()
        return _the_writer
