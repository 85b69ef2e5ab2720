"""A running job's progress, written to the job store from a thread of its own, so the thread that
drives the runner (and, for an in-process runner, the model itself) never waits on a write.

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
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"df-progress-{fence.job_id[:8]}", daemon=True)
        self._thread.start()

    def report(self, current: int, total: int) -> None:
        if self.lost:
            raise LostJob(self.fence.job_id)
        with self._cond:
            if self._latest != (current, total):
                self._latest = (current, total)
                self._cond.notify()

    def close(self, discard: bool = False) -> None:
        """No more reports: the last one is written at once (none, with ``discard``)."""
        with self._cond:
            self._closing, self._discard = True, discard
            self._cond.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the last write; False when the job was found lost meanwhile."""
        self.close()
        self._thread.join(timeout)
        return not self.lost

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self.close(discard=kind is not None)

    def _next(self) -> tuple[int, int] | Literal["check", "stop"]:
        """What to do next, waiting until it is due: a value to write, a check that the job is
        still held, or stop."""
        with self._cond:
            while True:
                now = time.monotonic()
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
                self._cond.wait(max(0.0, wake - now))

    def _loop(self) -> None:
        while (task := self._next()) != "stop":
            value = task if isinstance(task, tuple) else None
            try:
                held = self.service.progress(self.fence, *value) if value else self.service.holds(self.fence)
            except BackendUnavailable as exc:
                # Progress is best effort: the image is worth more than the bar.
                self.warn(f"progress not recorded: {exc.message}")
                held = True
            if value:
                self._recorded, self._written = value, time.monotonic()
            self._checked = time.monotonic()
            if not held:
                self.lost = True
                return
