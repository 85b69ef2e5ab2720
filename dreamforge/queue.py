"""The queue: a doorbell that carries job ids. Huey on a SQLite file or on Redis, chosen by URL.

Huey does not acknowledge tasks: a worker killed mid-task loses its message. That is fine here,
because the job store is the truth and a job left running by a dead worker is found there
(see JobService.reclaim_silent) and enqueued again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from dreamforge.errors import BackendUnavailable, ConfigError

TASK_NAME = "jobs.generate"

class WalSqliteStorage(SqliteStorage):
    """Huey's SQLite storage with synchronous=NORMAL: in WAL mode that is still safe from
    corruption, and it spares an fsync on every enqueue (SQLite's default, FULL, does one)."""

    def _create_connection(self) -> sqlite3.Connection:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


def make_huey(url: str, name: str = "dreamforge") -> Huey:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(name=name, filename=str(path), results=False, timeout=30,
                          storage_class=WalSqliteStorage)
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Blocking pops: an idle worker wakes the moment a job is pushed, no polling delay.
        from redis import ConnectionPool

        pool = ConnectionPool.from_url(url, socket_connect_timeout=3, socket_timeout=10,
                                       health_check_interval=15)
        return RedisHuey(name=name, connection_pool=pool, results=False, blocking=True,
                         read_timeout=1)
    raise ConfigError(f"unsupported DF_QUEUE_URL scheme: {url.split(':', 1)[0]!r} "
                     "(use sqlite:///PATH or redis://HOST:PORT/DB)")


class JobQueue:
    """Job ids in, job ids out. Producers only enqueue; a worker runtime installs the handler
    that its consumer runs for each message (``serve``)."""

    def __init__(self, url: str, name: str = "dreamforge"):
        self.url = url
        self.huey = make_huey(url, name)
        self._handler: Callable[[str], Any] | None = None

        def generate(job_id: str) -> None:
            if self._handler is None:
                raise RuntimeError("no worker runtime is installed on this queue")
            self._handler(job_id)

        self.generate_task = self.huey.task(name=TASK_NAME)(generate)

    def serve(self, handler: Callable[[str], Any] | None) -> None:
        """Run ``handler(job_id)`` for each message this process's consumer takes."""
        self._handler = handler

    def enqueue(self, job_id: str) -> None:
        try:
            self.generate_task(job_id)
        except Exception as exc:  # redis.ConnectionError, sqlite3.OperationalError, …
            raise BackendUnavailable(f"queue unreachable: {type(exc).__name__}") from exc

    def depth(self) -> int:
        try:
            return self.huey.pending_count()
        except Exception as exc:
            raise BackendUnavailable(f"queue unreachable: {type(exc).__name__}") from exc

    def ping(self) -> None:
        self.depth()

    def pending_job_ids(self) -> list[str]:
        return [task.args[0] for task in self.huey.pending() if task.args]

    def describe(self) -> str:
        from dreamforge.settings import mask_url

        return mask_url(self.url)

    def flush(self) -> None:
        self.huey.storage.flush_queue()
