"""The SDXL runner's parent side: a warm child process that holds the pipeline across jobs.

The model lives in a spawned child so that a segfault or a CUDA crash takes down only the child:
the job fails with ``runner_crashed`` and the next job gets a fresh child (which loads the model
again). The child speaks over a pipe: ``ready``, ``progress`` after every step, ``result`` or
``error``. Silence longer than DF_STEP_TIMEOUT_S means a hung child; it is killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamforge import metrics
from dreamforge.errors import RunnerError
from dreamforge.runners import GeneratedBatch, GeneratedImage, Generation, ModelChoice, ProgressCallback

if TYPE_CHECKING:
    from dreamforge.settings import Settings

log = logging.getLogger("dreamforge.runner")
TICK_S = 0.05


def model_not_found(settings: Settings, choice: ModelChoice | None = None) -> RunnerError | None:
    path, chosen_by = ((Path(choice.path), f"the model registry ({choice.name})") if choice
                       else settings.model_path())
    if path.exists():
        return None
    return RunnerError(
        f"no SDXL checkpoint at {path} (chosen by {chosen_by}); put a .safetensors file or a "
        "Diffusers folder there, point DF_GENERATE_MODEL_PATH (or DF_MODELS_ROOT + "
        "DF_DEFAULT_MODEL_DIR) at one, or set DF_FAKE_RUNNER=1 for the Pillow runner",
        code="model_not_found", details={"path": str(path), "chosen_by": chosen_by})


class ChildRunner:
    name = "sdxl"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        # The model the live child holds: None for the one the settings name. A job that names
        # another gets a fresh child with it (one model in memory at a time).
        self._model: ModelChoice | None = None

    # -- child management -----------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self, choice: ModelChoice | None = None) -> None:
        missing = model_not_found(self.settings, choice)
        if missing:
            raise missing
        from dreamforge.runners import sdxl_child

        started = time.monotonic()
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=sdxl_child.main,
                                       args=(child, self.settings.model_dump(mode="json"), choice),
                                       name="df-sdxl", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        message = self._receive(self.settings.load_timeout_s, "loading the model")
        if message[0] == "error":
            self._reap()
            raise RunnerError(message[2], code=message[1], details=message[3] if len(message) > 3 else None)
        self._model = choice
        metrics.model_loaded(time.monotonic() - started)
        log.info("SDXL child %d ready: %s", self._proc.pid, message[1])

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
        metrics.model_loaded(None, loaded=0)

    def _receive(self, timeout_s: float, doing: str,
                 tick: Callable[[], None] | None = None) -> tuple[Any, ...]:
        """The child's next message; ``tick`` runs every TICK_S while waiting (and may raise)."""
        assert self._conn is not None and self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if tick is not None:
                tick()
            wait = TICK_S if tick is not None else 1.0
            if self._conn.poll(min(wait, max(0.0, deadline - time.monotonic()))):
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    pass  # the child closed its end: it died; report below
            if not self._proc.is_alive() or self._conn.closed:
                code = self._proc.exitcode
                self._reap()
                raise RunnerError(f"the runner process died while {doing} (exit code {code}); "
                                  "the next job starts a fresh one", code="runner_crashed",
                                  details={"exit_code": code})
            if time.monotonic() >= deadline:
                self._reap()
                raise RunnerError(f"the runner process said nothing for {timeout_s:.0f} s while "
                                  f"{doing}; it was stopped", code="runner_timeout")

    # -- the Runner interface -------------------------------------------------------------------
    def warm(self) -> None:
        with self._lock:
            try:
                if not self._alive():
                    self._start()
            except RunnerError as exc:
                # The worker still starts: each job will report the problem on its own.
                log.error("runner not ready: %s: %s", exc.code, exc.message)

    def generate(self, request: Generation, on_progress: ProgressCallback) -> GeneratedBatch:
        with self._lock:
            if self._alive() and request.model != self._model:
                log.info("switching the SDXL child to model %s",
                         request.model.name if request.model else "the default")
                self._reap()
            if not self._alive():
                self._start(request.model)
            assert self._conn is not None
            self._conn.send(("generate", request))
            last: tuple[int, int] | None = None

            def still_wanted() -> None:
                # Between steps too, so a cancel reaches the child within a step plus the
                # caller's check interval, not two steps.
                if last is not None:
                    on_progress(*last)

            while True:
                try:
                    message = self._receive(self.settings.step_timeout_s, "generating", still_wanted)
                except RunnerError:
                    raise
                except BaseException:
                    self._interrupt()
                    raise
                kind = message[0]
                if kind == "progress":
                    last = (message[1], message[2])
                    try:
                        on_progress(message[1], message[2])
                    except BaseException:
                        # Nobody wants this image any more (canceled, or the job was lost):
                        # the child stops at its next step and stays warm for the next job.
                        self._interrupt()
                        raise
                elif kind == "result":
                    from PIL import Image

                    items, model_s, gpu_memory, record = message[1:]
                    images = [GeneratedImage(Image.frombytes(mode, size, data), seed)
                              for mode, size, data, seed in items]
                    return GeneratedBatch(images, model_s, gpu_memory, record)
                elif kind == "error":
                    raise RunnerError(message[2], code=message[1], details=message[3] if len(message) > 3 else None)

    def _interrupt(self) -> None:
        """Ask the child to stop the generation in progress; a child that doesn't answer within
        a step's timeout is stopped the hard way (the next job starts a fresh one)."""
        assert self._conn is not None
        try:
            self._conn.send(("interrupt",))
            while True:
                kind = self._receive(self.settings.step_timeout_s, "stopping a generation")[0]
                if kind in ("interrupted", "result", "error"):
                    return
        except (RunnerError, OSError):
            self._reap()

    def close(self) -> None:
        if not self._lock.acquire(timeout=5):
            # A job is still generating (a worker stopping past its grace): don't wait for it.
            self._reap()
            return
        try:
            if self._alive():
                assert self._conn is not None
                try:
                    self._conn.send(("stop",))
                    self._proc.join(timeout=10)
                except (OSError, BrokenPipeError):
                    pass
            self._reap()
        finally:
            self._lock.release()
