"""The job store: the one source of truth about jobs, on SQLite or PostgreSQL.

Every status move is a single conditional UPDATE (``… WHERE status = 'queued'``) in the same
transaction as the event that records it, so two processes can never both win a move. On SQLite,
write transactions start with ``BEGIN IMMEDIATE`` (a deferred BEGIN that later upgrades to a write
lock fails with "database is locked" instead of waiting), in WAL mode with a long busy timeout.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from dreamforge.errors import BackendUnavailable, ConfigError, IdempotencyConflict, JobNotFound
from dreamforge.schemas import JobStatus
from dreamforge.tables import Artifact, Event, Job, Step, Worker, utcnow

jobs, steps, events, artifacts, workers = (
    t.__table__ for t in (Job, Step, Event, Artifact, Worker)  # type: ignore[attr-defined]
)
STEP_NAME = "generate"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every time in the store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("df_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if not url.startswith("postgresql"):
        raise ConfigError(f"unsupported DF_DATABASE_URL scheme: {url.split(':', 1)[0]!r} "
                          "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)")
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


@dataclass
class Claim:
    """What a worker gets when it wins a job."""

    job_id: str
    params: dict[str, Any]
    attempts: int
    correlation_id: str | None


class JobStore:
    """Job, step, event and artifact rows, with forward-only status moves."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._writer = self.engine.execution_options(df_write=True)
        self._postgres = self.engine.dialect.name == "postgresql"
        # SQLite takes one writer at a time. Threads of one process queue on this lock instead of
        # on SQLite's busy handler, whose sleeps grow to 100 ms and wreck tail latency.
        self._write_lock = threading.Lock() if url.startswith("sqlite") else contextlib.nullcontext()

    # -- plumbing -------------------------------------------------------------------------------
    def create_schema(self) -> None:
        with self._guard():
            SQLModel.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.OperationalError as exc:
            raise BackendUnavailable(f"job store unreachable: {type(exc.orig).__name__}") from exc
        except sa.exc.InterfaceError as exc:
            raise BackendUnavailable("job store unreachable") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_lock, self._guard(), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._guard(), self.engine.begin() as conn:
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    @staticmethod
    def _event(conn: Connection, job_id: str, kind: str, payload: dict[str, Any], at: datetime) -> None:
        conn.execute(events.insert().values(job_id=job_id, at=at, kind=kind, payload=payload))

    # -- creating -------------------------------------------------------------------------------
    def create(
        self,
        params: dict[str, Any],
        *,
        correlation_id: str | None = None,
        idempotency_key_hash: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job with its step and first event. Returns (job, created), the job in
        the shape ``job()`` returns.

        With an idempotency key already used: the same request hash returns the first job
        (created False); another hash raises IdempotencyConflict.
        """
        now = utcnow()
        job = {"id": str(uuid.uuid4()), "type": "generate", "status": JobStatus.queued.value,
               "params": params, "idempotency_key_hash": idempotency_key_hash,
               "request_hash": request_hash, "correlation_id": correlation_id, "attempts": 0,
               "created_at": now, "updated_at": now}
        step = {"job_id": job["id"], "name": STEP_NAME, "status": JobStatus.queued.value,
                "progress_current": 0, "progress_total": params.get("steps", 0)}
        try:
            with self.write() as conn:
                conn.execute(jobs.insert().values(**job))
                conn.execute(steps.insert().values(**step))
                self._event(conn, job["id"], "status", {"status": "queued"}, now)
        except sa.exc.IntegrityError:
            if idempotency_key_hash is None:
                raise
            return self.job(self._existing_for_key(idempotency_key_hash, request_hash)), False
        unset = dict.fromkeys(("error_code", "error_message", "error_details", "worker_id",
                               "heartbeat_at", "started_at", "finished_at"))
        step_view = {**step, "seed": None, "started_at": None, "finished_at": None}
        return {**job, **unset, "steps": [step_view], "artifacts": []}, True

    def _existing_for_key(self, key_hash: str, request_hash: str | None) -> str:
        with self.read() as conn:
            row = conn.execute(sa.select(jobs.c.id, jobs.c.request_hash)
                               .where(jobs.c.idempotency_key_hash == key_hash)).one()
        if row.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body",
                details={"job_id": row.id})
        return row.id

    def delete_unqueued(self, job_id: str) -> None:
        """Undo a create whose enqueue failed, so no job row is left without its queue entry."""
        with self.write() as conn:
            for table in (events, artifacts, steps):
                conn.execute(table.delete().where(table.c.job_id == job_id))
            conn.execute(jobs.delete().where(jobs.c.id == job_id, jobs.c.status == "queued"))

    # -- the lifecycle --------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        """queued → running for exactly one caller; None if the job is not queued (any more)."""
        now = utcnow()
        with self.write() as conn:
            row = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.queued.value)
                .values(status=JobStatus.running.value, worker_id=worker_id, heartbeat_at=now,
                        attempts=jobs.c.attempts + 1, updated_at=now,
                        started_at=sa.func.coalesce(jobs.c.started_at, now))
                .returning(jobs.c.params, jobs.c.attempts, jobs.c.correlation_id)
            ).one_or_none()
            if row is None:
                return None
            conn.execute(steps.update().where(steps.c.job_id == job_id)
                         .values(status=JobStatus.running.value, progress_current=0,
                                 started_at=now, finished_at=None))
            self._event(conn, job_id, "status",
                        {"status": "running", "worker_id": worker_id, "attempt": row.attempts}, now)
        return Claim(job_id, dict(row.params), row.attempts, row.correlation_id)

    def _owned(self, job_id: str, worker_id: str) -> Any:
        return sa.and_(jobs.c.id == job_id, jobs.c.status == JobStatus.running.value,
                       jobs.c.worker_id == worker_id)

    def record_seed(self, job_id: str, worker_id: str, params: dict[str, Any]) -> None:
        now = utcnow()
        with self.write() as conn:
            conn.execute(jobs.update().where(self._owned(job_id, worker_id))
                         .values(params=params, updated_at=now))
            conn.execute(steps.update().where(steps.c.job_id == job_id).values(seed=params["seed"]))
            self._event(conn, job_id, "log", {"message": "seed chosen", "seed": params["seed"]}, now)

    def progress(self, job_id: str, worker_id: str, current: int, total: int) -> bool:
        """Record one step of progress; False when this worker no longer owns the job."""
        now = utcnow()
        with self.write() as conn:
            if self._postgres:
                # A progress row is worth no fsync: losing the last few on a crash is harmless,
                # and a 30-step job would otherwise wait on 30 WAL flushes.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            owned = conn.execute(jobs.update().where(self._owned(job_id, worker_id))
                                 .values(heartbeat_at=now)).rowcount
            if not owned:
                return False
            conn.execute(steps.update().where(steps.c.job_id == job_id)
                         .values(progress_current=current, progress_total=total))
            self._event(conn, job_id, "progress", {"current": current, "total": total}, now)
        return True

    def succeed(self, job_id: str, worker_id: str, artifact: dict[str, Any],
                timings: dict[str, float] | None = None) -> bool:
        now = utcnow()
        with self.write() as conn:
            done = conn.execute(jobs.update().where(self._owned(job_id, worker_id))
                                .values(status=JobStatus.succeeded.value, finished_at=now,
                                        updated_at=now, heartbeat_at=None)).rowcount
            if not done:
                return False
            step_id = conn.execute(sa.select(steps.c.id).where(steps.c.job_id == job_id)).scalar()
            conn.execute(steps.update().where(steps.c.id == step_id)
                         .values(status=JobStatus.succeeded.value, finished_at=now,
                                 progress_current=steps.c.progress_total))
            conn.execute(artifacts.insert().values(job_id=job_id, step_id=step_id, created_at=now,
                                                   **artifact))
            self._event(conn, job_id, "status", {"status": "succeeded", "s3_key": artifact["s3_key"],
                                                 "timings": timings or {}}, now)
        return True

    def fail(self, job_id: str, worker_id: str | None, code: str, message: str,
             details: Any = None, *, silent_since: datetime | None = None) -> bool:
        """running → failed (or queued → failed when worker_id is None); with ``silent_since``,
        only if the holder has not beaten since (the reaper's condition, as in ``release``)."""
        now = utcnow()
        where = (self._owned(job_id, worker_id) if worker_id is not None else
                 sa.and_(jobs.c.id == job_id, jobs.c.status.in_(["queued", "running"])))
        if silent_since is not None:
            where = sa.and_(where, jobs.c.heartbeat_at < silent_since)
        with self.write() as conn:
            done = conn.execute(jobs.update().where(where).values(
                status=JobStatus.failed.value, error_code=code, error_message=message,
                error_details=details, finished_at=now, updated_at=now, heartbeat_at=None)).rowcount
            if not done:
                return False
            conn.execute(steps.update().where(steps.c.job_id == job_id)
                         .values(status=JobStatus.failed.value, finished_at=now))
            self._event(conn, job_id, "error", {"code": code, "message": message}, now)
            self._event(conn, job_id, "status", {"status": "failed", "code": code}, now)
        return True

    def recover(self, job_id: str, artifact: dict[str, Any]) -> bool:
        """failed (storage_error) → succeeded, once a spooled image has been uploaded after all.

        The one move out of a terminal state, made only by an operator's `df artifacts retry`:
        the image was finished, only its upload had failed, and now nothing is missing."""
        now = utcnow()
        with self.write() as conn:
            done = conn.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.status == JobStatus.failed.value,
                jobs.c.error_code == "storage_error").values(
                status=JobStatus.succeeded.value, error_code=None, error_message=None,
                error_details=None, updated_at=now, finished_at=now)).rowcount
            if not done:
                return False
            step_id = conn.execute(sa.select(steps.c.id).where(steps.c.job_id == job_id)).scalar()
            conn.execute(steps.update().where(steps.c.id == step_id)
                         .values(status=JobStatus.succeeded.value, finished_at=now))
            conn.execute(artifacts.insert().values(job_id=job_id, step_id=step_id, created_at=now,
                                                   **artifact))
            self._event(conn, job_id, "status", {"status": "succeeded", "s3_key": artifact["s3_key"],
                                                 "recovered_from": "storage_error"}, now)
        return True

    def release(self, job_id: str, worker_id: str, reason: str, *,
                silent_since: datetime | None = None, event: dict[str, Any] | None = None) -> bool:
        """running → queued: a worker hands back a job it holds (graceful stop, a crashed runner),
        or the reaper takes one whose holder has been silent since ``silent_since``."""
        now = utcnow()
        where = self._owned(job_id, worker_id)
        if silent_since is not None:
            where = sa.and_(where, jobs.c.heartbeat_at < silent_since)
        with self.write() as conn:
            done = conn.execute(jobs.update().where(where).values(
                status=JobStatus.queued.value, worker_id=None, heartbeat_at=None,
                updated_at=now)).rowcount
            if done:
                conn.execute(steps.update().where(steps.c.job_id == job_id)
                             .values(status=JobStatus.queued.value, progress_current=0))
                self._event(conn, job_id, "status",
                            {"status": "queued", "reason": reason, **(event or {})}, now)
        return bool(done)

    # -- liveness -------------------------------------------------------------------------------
    def worker_heartbeat(self, worker_id: str, hostname: str, pid: int, job_ids: list[str]) -> None:
        now = utcnow()
        with self.write() as conn:
            updated = conn.execute(workers.update().where(workers.c.id == worker_id)
                                   .values(heartbeat_at=now, stopped_at=None)).rowcount
            if not updated:
                conn.execute(workers.insert().values(id=worker_id, hostname=hostname, pid=pid,
                                                     started_at=now, heartbeat_at=now))
            if job_ids:
                conn.execute(jobs.update().where(jobs.c.id.in_(job_ids),
                                                 jobs.c.worker_id == worker_id,
                                                 jobs.c.status == JobStatus.running.value)
                             .values(heartbeat_at=now))

    def job_heartbeat(self, job_id: str, worker_id: str) -> None:
        with self.write() as conn:
            conn.execute(jobs.update().where(self._owned(job_id, worker_id))
                         .values(heartbeat_at=utcnow()))

    def worker_stopped(self, worker_id: str) -> None:
        with self.write() as conn:
            conn.execute(workers.update().where(workers.c.id == worker_id)
                         .values(stopped_at=utcnow()))

    def live_workers(self, timeout_s: float) -> list[dict[str, Any]]:
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        with self.read() as conn:
            rows = conn.execute(sa.select(workers).where(workers.c.heartbeat_at >= cutoff,
                                                         workers.c.stopped_at.is_(None))
                                .order_by(workers.c.started_at)).mappings().all()
        return [{**r, "started_at": aware(r["started_at"]), "heartbeat_at": aware(r["heartbeat_at"])}
                for r in rows]

    def reclaim_stale(self, timeout_s: float, max_attempts: int) -> list[tuple[str, str]]:
        """Running jobs whose holder went silent: back to queued, or failed with worker_lost once
        they have used max_attempts. Returns [(job_id, new status)] for the caller to re-enqueue."""
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        with self.read() as conn:
            stale = conn.execute(sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.attempts).where(
                jobs.c.status == JobStatus.running.value, jobs.c.heartbeat_at < cutoff)).all()
        moved = []
        for job_id, worker_id, attempts in stale:
            if attempts >= max_attempts:
                if self.fail(job_id, worker_id, "worker_lost",
                             f"the worker running this job went silent ({attempts} attempts)",
                             {"worker_id": worker_id, "attempts": attempts}, silent_since=cutoff):
                    moved.append((job_id, JobStatus.failed.value))
            elif self.release(job_id, worker_id, "worker_lost", silent_since=cutoff,
                              event={"worker_id": worker_id, "attempt": attempts}):
                moved.append((job_id, JobStatus.queued.value))
        return moved

    def queued_before(self, age_s: float) -> list[str]:
        cutoff = utcnow() - timedelta(seconds=age_s)
        with self.read() as conn:
            return list(conn.execute(sa.select(jobs.c.id).where(
                jobs.c.status == JobStatus.queued.value, jobs.c.updated_at < cutoff)).scalars())

    # -- reading --------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        """The job with its steps and artifacts, as plain dicts."""
        with self.read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one_or_none()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return self._assemble(conn, [row])[0]

    def list(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        if status:
            query = query.where(jobs.c.status == status)
        with self.read() as conn:
            return self._assemble(conn, conn.execute(query).mappings().all())

    def _assemble(self, conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
        ids = [r["id"] for r in rows]
        step_rows = conn.execute(sa.select(steps).where(steps.c.job_id.in_(ids))
                                 .order_by(steps.c.id)).mappings().all() if ids else []
        art_rows = conn.execute(sa.select(artifacts).where(artifacts.c.job_id.in_(ids))
                                .order_by(artifacts.c.item_index)).mappings().all() if ids else []
        out = []
        for r in rows:
            job = {k: aware(v) if isinstance(v, datetime) else v for k, v in r.items()}
            job["steps"] = [{k: aware(v) if isinstance(v, datetime) else v for k, v in s.items()}
                            for s in step_rows if s["job_id"] == r["id"]]
            job["artifacts"] = [dict(a) for a in art_rows if a["job_id"] == r["id"]]
            out.append(job)
        return out

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(sa.select(events).where(events.c.job_id == job_id)
                                .order_by(events.c.id)).mappings().all()
        return [{**r, "at": aware(r["at"])} for r in rows]

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count())
                                .group_by(jobs.c.status)).all()
        found = {status: n for status, n in rows}
        return {s.value: found.get(s.value, 0) for s in JobStatus}
