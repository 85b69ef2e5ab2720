"""The runner child's main loop: load once, then answer generate requests until told to stop.

Messages to the parent: ("ready", description) | ("progress", current, total) |
("result", [(mode, size, pixels, seed), …], model_s, gpu_memory, record) |
("error", code, message, details) | ("interrupted",).
From the parent: ("generate", request) | ("interrupt",) (stop the generation at its next step) |
("stop",).
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection
from typing import Any

from dreamforge.errors import RunnerError
from dreamforge.runners import ModelChoice


class Interrupted(Exception):
    """Raised from the pipeline's step-end callback: the generation stops at once."""


def main(conn: Connection, settings_data: dict[str, Any], choice: ModelChoice | None = None) -> None:
    from dreamforge.settings import Settings

    # Loading must never reach for a model hub, and the worker's log is no place for progress bars.
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
                      DIFFUSERS_VERBOSITY="error")
    settings = Settings(**settings_data)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s sdxl-child: %(message)s")
    if settings.compile:
        from dreamforge.runners.sdxl import prepare_compile_cache

        prepare_compile_cache(settings)  # before torch is imported
    from dreamforge.runners.sdxl import SDXL

    model = SDXL(settings, choice)
    try:
        model.load()
    except RunnerError as exc:
        conn.send(("error", exc.code, exc.message, exc.details))
        return
    conn.send(("ready", f"{model.describe()} (pid {os.getpid()})"))

    def on_step(current: int, total: int) -> None:
        conn.send(("progress", current, total))
        if conn.poll() and conn.recv()[0] == "interrupt":
            raise Interrupted

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message[0] == "stop":
            return
        if message[0] != "generate":
            continue  # an interrupt that came after its generation had ended
        request = message[1]
        try:
            batch = model.generate(request, on_step)
            items = [(i.image.mode, i.image.size, i.image.tobytes(), i.seed) for i in batch.images]
            conn.send(("result", items, batch.model_s, batch.gpu_memory, batch.record))
        except Interrupted:
            conn.send(("interrupted",))
        except RunnerError as exc:
            conn.send(("error", exc.code, exc.message, exc.details))
        except Exception as exc:  # keep the child alive for the next job
            conn.send(("error", "runner_error", f"{type(exc).__name__}: {str(exc)[:500]}"))
