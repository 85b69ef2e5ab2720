"""Scratch backends for the benchmarks: a PostgreSQL schema (and a Redis queue name) that exist
for one run and are dropped after it, and a counting loopback proxy in front of PostgreSQL.

    with scratch_schema() as (url, schema): ...          # DF_DATABASE_URL for that schema
    with backend_env("postgres_redis", data_dir) as env: ...  # DF_* variables for a df process
    with RoundTripProxy() as proxy: proxy.url(url) ...   # the same URL, through the proxy
"""

from __future__ import annotations

import os
import select
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

PG = os.environ.get("DF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used (Linux /proc). On a shared, busy machine a rate
    moves with everyone else's load; the CPU a server spends per request moves far less."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def scratch_schema(prefix: str = "dfbench") -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema: yields (a URL whose search_path is that schema, its name), and
    drops the schema with everything in it afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}", schema
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def drop_redis_queue(name: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"*{name}*"):
        client.delete(key)
    client.close()


@contextmanager
def backend_env(name: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """The DF_* variables of a df process on the backend pair ``name``: ``sqlite`` (job store and
    queue in files under ``data_dir``) or ``postgres_redis`` (a scratch schema, and a Redis queue
    of the same name, both removed afterwards). Fake runner, no step delay."""
    env = {"DF_DATA_DIR": str(data_dir), "DF_FAKE_RUNNER": "1", "DF_FAKE_STEP_DELAY_S": "0"}
    if name == "sqlite":
        yield env
        return
    if name != "postgres_redis":
        raise SystemExit(f"unknown backend {name!r} (sqlite or postgres_redis)")
    with scratch_schema() as (url, schema):
        try:
            yield {**env, "DF_DATABASE_URL": url, "DF_QUEUE_URL": REDIS, "DF_QUEUE_NAME": schema}
        finally:
            drop_redis_queue(schema)


class RoundTripProxy:
    """A loopback TCP proxy in front of PostgreSQL that counts round trips: a burst of bytes from
    a client after the server last spoke (or on a new connection) is one round trip, however many
    packets or protocol messages it takes. Connecting counts too (start-up and authentication
    are a few bursts), so figures taken over many jobs on a warm pool are the ones to read."""

    def __init__(self) -> None:
        target = urlsplit(PG)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.round_trips = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._closed = False

    def url(self, url: str) -> str:
        """``url`` (on the PG server) through this proxy."""
        return url.replace(f"{self.target[0]}:{self.target[1]}", f"127.0.0.1:{self.port}", 1)

    def __enter__(self) -> RoundTripProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        server_spoke = True
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        if server_spoke:
                            with self._lock:
                                self.round_trips += 1
                            server_spoke = False
                        server.sendall(data)
                    else:
                        server_spoke = True
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()
