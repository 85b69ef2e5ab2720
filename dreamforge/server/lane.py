"""Where a POST's submit runs: on SQLite, on one thread of its own.

SQLite takes one writer at a time. With the submits of concurrent POSTs spread over Starlette's
shared thread pool, each thread took the store's write lock in turn, and the threads spent more
CPU handing the lock and the GIL to one another than on the inserts (8 concurrent POSTs, timed in
process: 0.97 ms of CPU a POST in the shared pool, 0.75 ms on one thread, 0.83 ms for the bare
app of benchmarks/bare.py). On PostgreSQL a commit waits on the server's flush, and concurrent
submits overlap those waits, so they stay in the shared pool.

A job with a webhook stays in the shared pool on SQLite too: its check resolves the target's
name, which may wait on DNS, and one slow lookup must not hold up every other POST.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.concurrency import run_in_threadpool

from dreamforge.schemas import GenerateRequest
from dreamforge.service import JobService, Submitted


class SubmitLane:
    def __init__(self, service: JobService):
        self._service = service
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="df-submit") \
            if service.job_store.one_writer_at_a_time else None

    async def submit(self, request: GenerateRequest, **options: Any) -> Submitted:
        """``JobService.submit(request, **options)``, off the event loop."""
        if self._thread is None or getattr(request, "webhook", None) is not None:
            return await run_in_threadpool(self._service.submit, request, **options)
        call = functools.partial(contextvars.copy_context().run, self._service.submit, request, **options)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def close(self) -> None:
        """Waits for a submit in progress: its job is recorded and queued, or neither."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
