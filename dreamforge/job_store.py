"""The job store: the one source of truth about jobs, on SQLite or PostgreSQL.

It carries out the moves that ``moves.py`` describes and answers reads; it decides nothing. Each
move is one conditional UPDATE (``… WHERE status = 'queued'``, and the holder's worker id and
attempt where the move names them) in the same transaction as the event that records it, so two
processes can never both win a move and a worker that lost its job can't write to it. On
PostgreSQL the moves every job makes (create, claim, progress, begin_upload, success) are each
one statement whose CTEs carry the row changes and the event, so the statement is the transaction
(one round trip); other moves, and any move whose event a webhook announces, take the general
path of several statements in one transaction.

Every deadline is measured on one clock, the job store's: ``now()`` on PostgreSQL, so workers
whose clocks drift can't judge each other; on SQLite every process shares one host and so one
clock. Every wait is bounded: PostgreSQL sessions carry lock, statement and idle-in-transaction
timeouts and TCP keepalives, and the reaper skips rows another session has locked. On SQLite,
write transactions start with ``BEGIN IMMEDIATE`` (a deferred BEGIN that later upgrades fails with
"database is locked" instead of waiting), in WAL mode with a busy timeout.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine

from dreamforge import migrate
from dreamforge.errors import BackendUnavailable, ConfigError, IdempotencyConflict, JobNotFound
from dreamforge.moves import QUEUED, RUNNING, SUCCEEDED, Fence, Move
from dreamforge.schemas import denoising_steps
from dreamforge.status import JobStatus, is_job_id
from dreamforge.tables import artifacts, events, jobs, leases, steps, uploads, utcnow, webhook_deliveries, workers
from dreamforge.text import cut

if TYPE_CHECKING:
    from dreamforge.webhooks.outbox import Outbox

STEP_NAME = "generate"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# One key for every process that creates or upgrades the schema (pg_advisory_xact_lock).
SCHEMA_LOCK_KEY = 0x0D_F5_C4_E3A
# PostgreSQL session limits: nothing waits on a lock, a statement or a stalled client forever.
PG_SESSION = {"lock_timeout": "5s", "statement_timeout": "30s",
              "idle_in_transaction_session_timeout": "60s"}
# Each transaction that records events wakes the API processes' event feeds (see feed.py); the
# feeds then read the events table, so a lost notification delays an event and loses nothing.
PG_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION dreamforge_events_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('dreamforge_events', ''); RETURN NULL; END $$ LANGUAGE plpgsql"""
PG_NOTIFY_TRIGGER = """
CREATE OR REPLACE TRIGGER dreamforge_events_notify AFTER INSERT ON events
FOR EACH STATEMENT EXECUTE FUNCTION dreamforge_events_notify()"""
# A pooled connection idle at least this long is pinged before use (see make_engine).
PING_IDLE_S = 1.0
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                 "keepalives_count": 3, "connect_timeout": 5}

# PostgreSQL: what a POST and a worker do for every job, each as one statement that carries the
# row changes and their event together (a statement is its own transaction: no BEGIN, no COMMIT,
# one round trip), written once here so nothing is built per call. Each holds only for a job
# without a webhook of its own: a job with one takes the general path, whose outbox writes its
# deliveries in the same transaction (and so does every job, when the server's webhooks
# announce the event). A statement that finds no row falls back to the general path too, which
# tells a refused move from a webhook.
PG_CREATE = sa.text("""
WITH job AS (
  INSERT INTO jobs (id, type, status, params, correlation_id, attempts, retry_of, rerun_of, created_at,
                    updated_at)
  VALUES (:id, :type, 'queued', CAST(:params AS json), :correlation_id, 0, :retry_of, :rerun_of, now(), now())
  RETURNING id, created_at),
step AS (
  INSERT INTO steps (job_id, name, status, progress_current, progress_total, seed)
  SELECT id, :step_name, 'queued', 0, :progress_total, CAST(:seed AS bigint) FROM job),
event AS (
  INSERT INTO events (job_id, at, kind, payload) SELECT id, now(), 'status', CAST(:event AS json) FROM job)
SELECT created_at FROM job""")
# A claim and a progress row wait for no WAL flush (set_config(..., true) lasts for the statement's
# own transaction, whose commit reads it; a flush costs ~3.5 ms on the test machine's disk, a
# round trip 0.2 ms). A database crash may lose the last few: a lost progress row is harmless,
# and a lost claim leaves the job queued, where every later write of that holder is refused by
# its fence (and the orphan sweep rings the queue again). The holder's first durable write
# (begin_upload) flushes the claim with it, WAL being one sequence.
PG_CLAIM = sa.text("""
WITH moved AS (
  UPDATE jobs SET status = 'running', updated_at = now(), worker_id = :worker_id, heartbeat_at = now(),
    attempts = attempts + 1, started_at = coalesce(started_at, now()),
    params = CASE WHEN type <> 'download' AND params->>'seed' IS NULL AND CAST(:seed AS bigint) IS NOT NULL
                  THEN CAST(CAST(params AS jsonb) || jsonb_build_object('seed', CAST(:seed AS bigint)) AS json)
                  ELSE params END
  WHERE id = :job_id AND status = 'queued' AND params->>'webhook' IS NULL
  RETURNING id, params, attempts, correlation_id, worker_id, created_at, updated_at),
step AS (
  UPDATE steps SET status = 'running', progress_current = 0, started_at = now(), finished_at = NULL,
    seed = coalesce(steps.seed, CAST(moved.params->>'seed' AS bigint))
  FROM moved WHERE steps.job_id = moved.id),
event AS (
  INSERT INTO events (job_id, at, kind, payload)
  SELECT id, now(), 'status', json_build_object('status', 'running', 'worker_id', worker_id, 'attempt', attempts)
  FROM moved)
SELECT id, params, attempts, correlation_id, worker_id, created_at, updated_at,
       set_config('synchronous_commit', 'off', true) AS unflushed FROM moved""")
PG_FINISH = sa.text("""
WITH moved AS (
  UPDATE jobs SET status = 'succeeded', updated_at = now(), finished_at = now(), heartbeat_at = NULL,
    error_code = NULL, error_message = NULL, error_details = NULL, record = coalesce(CAST(:record AS json), record)
  WHERE id = :job_id AND status = 'running' AND worker_id = :worker_id AND attempts = :attempt
    AND params->>'webhook' IS NULL
  RETURNING id, params, attempts, correlation_id, worker_id, created_at, updated_at),
step AS (
  UPDATE steps SET status = 'succeeded', finished_at = now(), progress_current = progress_total
  FROM moved WHERE steps.job_id = moved.id RETURNING steps.id),
settled AS (
  DELETE FROM uploads USING moved WHERE uploads.job_id = moved.id AND uploads.s3_key = ANY(CAST(:keys AS text[]))),
stored AS (
  INSERT INTO artifacts (job_id, step_id, item_index, seed, width, height, format, s3_key, size_bytes, sha256,
                         created_at)
  SELECT moved.id, step.id, a.item_index, a.seed, a.width, a.height, a.format, a.s3_key, a.size_bytes, a.sha256, now()
  FROM moved, step, json_to_recordset(CAST(:artifacts AS json)) AS a(item_index integer, seed bigint, width integer,
       height integer, format text, s3_key text, size_bytes integer, sha256 text)),
event AS (
  INSERT INTO events (job_id, at, kind, payload) SELECT id, now(), 'status', CAST(:payload AS json) FROM moved)
SELECT id, params, attempts, correlation_id, worker_id, created_at, updated_at FROM moved""")
PG_PROGRESS = sa.text("""
WITH held AS (
  UPDATE jobs SET heartbeat_at = now()
  WHERE id = :job_id AND status = 'running' AND worker_id = :worker_id AND attempts = :attempt
    AND params->>'webhook' IS NULL RETURNING id),
step AS (
  UPDATE steps SET progress_current = :current, progress_total = :total FROM held WHERE steps.job_id = held.id),
event AS (
  INSERT INTO events (job_id, at, kind, payload)
  SELECT id, now(), 'progress',
         json_build_object('current', CAST(:current AS integer), 'total', CAST(:total AS integer)) FROM held)
SELECT set_config('synchronous_commit', 'off', true) FROM held""")
PG_BEGIN_UPLOAD = sa.text("""
WITH held AS (
  UPDATE jobs SET heartbeat_at = now()
  WHERE id = :job_id AND status = 'running' AND worker_id = :worker_id AND attempts = :attempt RETURNING id),
taken AS (
  SELECT EXISTS (SELECT 1 FROM uploads WHERE s3_key = :key) OR EXISTS (SELECT 1 FROM artifacts WHERE s3_key = :key)
    AS taken),
added AS (
  INSERT INTO uploads (job_id, attempt, s3_key, created_at)
  SELECT held.id, :attempt, :key, now() FROM held, taken WHERE NOT taken.taken RETURNING id)
SELECT (SELECT count(*) FROM held) AS held, (SELECT count(*) FROM added) AS added""")
# PostgreSQL's general create (a POST with an Idempotency-Key): the step's insert, built once.
INSERT_STEP = steps.insert()


# The columns of an artifact row that a success writes (ids and time come from the statement).
ARTIFACT_KEYS = ("item_index", "seed", "width", "height", "format", "s3_key", "size_bytes", "sha256")


class DriverResult:
    """A hot statement's outcome, the same from a Prepared statement and from Core: its rows (as
    mappings where the statement returns columns) and its rowcount."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    @property
    def row(self) -> Any:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


class Prepared:
    """A hot Core statement compiled once for SQLite and run on the transaction's DBAPI
    connection (a driver error raised as the SQLAlchemy error Core would raise): SQLAlchemy's per-execution work (the
    statement's cache key, its parameter and result set-up, events) cost a 1-step job more than
    SQLite's execution of its dozen statements (a sampling profile of `df worker` under
    benchmarks/queue_overhead.py's load: about a quarter of its Python time). Values
    go through the binds' own processors, and ``returns`` (the statement's RETURNING columns)
    through the columns' result processors, so rows are written and read as Core does."""

    def __init__(self, statement: Any, dialect: sa.engine.Dialect, *, column_keys: tuple[str, ...] | None = None,
                 returns: tuple[sa.Column, ...] = ()):
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        if not compiled.positional or "POSTCOMPILE" in compiled.string:
            raise ValueError(f"not a statement the driver can run as compiled: {compiled.string}")
        self.sql = compiled.string
        self._compiled = compiled
        self._order = list(compiled.positiontup or ())
        # The parameter each position takes, looked up as construct_params does: by the bind's key.
        self._keys = [compiled.binds[name].key for name in self._order]
        processors = [compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in self._order]
        self._processing = [(index, process) for index, process in enumerate(processors) if process is not None]
        self._returns = [(c.key, c.type.dialect_impl(dialect).result_processor(dialect, None)) for c in returns]
        self._rows = bool(returns) or isinstance(statement, sa.Select)
        self._dbapi_error = dialect.loaded_dbapi.Error

    def _row(self, params: dict[str, Any]) -> list[Any]:
        try:
            # Every value given: construct_params' walk over every bind (building a dict) cost
            # more than the rest of the statement's Python work.
            row = [params[key] for key in self._keys]
        except KeyError:  # a value fixed in the statement, or one missing: Core's way
            values = self._compiled.construct_params(params)
            row = [values[name] for name in self._order]
        for index, process in self._processing:
            row[index] = process(row[index])
        return row

    def __call__(self, conn: Connection | sqlite3.Connection,
                 params: dict[str, Any] | list[dict[str, Any]]) -> DriverResult:
        """Run on a Core transaction's connection, or on the driver's (see JobStore._driver_write)."""
        driver: Any = conn.connection.driver_connection if isinstance(conn, Connection) else conn
        cursor = driver.cursor()
        row: Any = None
        try:
            if isinstance(params, list):
                row = [self._row(p) for p in params]
                cursor.executemany(self.sql, row)
            else:
                row = self._row(params)
                cursor.execute(self.sql, row)
            rows = cursor.fetchall() if self._rows else []  # SQLite counts RETURNING rows once read
            rowcount = cursor.rowcount
        except self._dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, row, exc, self._dbapi_error) from exc
        finally:
            cursor.close()
        if self._returns:
            rows = [{key: value if process is None else process(value)
                     for (key, process), value in zip(self._returns, r, strict=True)} for r in rows]
        return DriverResult(rows, rowcount)


class SqliteCreate:
    """A POST's three rows on SQLite (the job, its step, its first event), prepared for the
    driver (see Prepared): SQLAlchemy's execution path cost more than SQLite's inserts,
    ``JobStore.create`` took 0.50-0.77 ms of CPU against 0.31-0.41 ms this way (timed in process
    on the 2-core test machine, issue 18's second pass)."""

    def __init__(self, dialect: sa.engine.Dialect):
        self.job = Prepared(jobs.insert(), dialect, column_keys=(
            "id", "type", "status", "params", "idempotency_key_hash", "idempotency_expires_at", "request_hash",
            "retry_of", "rerun_of", "correlation_id", "attempts", "created_at", "updated_at"))
        self.step = Prepared(steps.insert(), dialect, column_keys=(
            "job_id", "name", "status", "progress_current", "progress_total", "seed"))
        self.event = Prepared(events.insert(), dialect, column_keys=("job_id", "at", "kind", "payload"))
        # An idempotency key past its expiry is free again: the old job keeps its row, not the key.
        self.free_key = Prepared(jobs.update().where(
            jobs.c.idempotency_key_hash == sa.bindparam("b_key"),
            jobs.c.idempotency_expires_at < sa.bindparam("b_now", type_=sa.DateTime(timezone=True)))
            .values(idempotency_key_hash=None), dialect)


class HotStatements:
    """The statements every job runs through the general path (on SQLite, every job; on
    PostgreSQL, a job whose webhook takes the general path), built once per store: building a
    Core statement and its cache key cost more than SQLite's execution of it. Values come as
    parameters named ``b_*``; ``now`` is the store's clock (a parameter on SQLite)."""

    def __init__(self, dialect: sa.engine.Dialect):
        postgres = dialect.name == "postgresql"
        now: Any = sa.func.now() if postgres else sa.bindparam("now", type_=sa.DateTime(timezone=True))
        held = sa.and_(jobs.c.id == sa.bindparam("b_job"), jobs.c.status == RUNNING.value,
                       jobs.c.worker_id == sa.bindparam("b_worker"), jobs.c.attempts == sa.bindparam("b_attempt"))
        this_step = steps.c.job_id == sa.bindparam("b_job")
        self.heartbeat = jobs.update().where(held).values(heartbeat_at=now)
        self.heartbeat_params = self.heartbeat.returning(jobs.c.params)
        self.holds = sa.select(jobs.c.id).where(held)
        self.progress_step = steps.update().where(this_step).values(
            progress_current=sa.bindparam("b_current"), progress_total=sa.bindparam("b_total"))
        self.event = events.insert().values(at=now)
        self.event_id = self.event.returning(events.c.id)
        self.key_taken = sa.select(sa.literal(1)).where(sa.or_(
            sa.exists().where(uploads.c.s3_key == sa.bindparam("b_key")),
            sa.exists().where(artifacts.c.s3_key == sa.bindparam("b_key"))))
        self.upload = uploads.insert().values(created_at=now)
        moved = (jobs.c.params, jobs.c.attempts, jobs.c.correlation_id, jobs.c.worker_id, jobs.c.created_at,
                 jobs.c.updated_at)
        seed = sa.bindparam("b_seed", type_=sa.BigInteger)
        unseeded = sa.and_(seed.is_not(None), jobs.c.type != "download",
                           jobs.c.params["seed"].as_string().is_(None))
        seeded = sa.cast(sa.cast(jobs.c.params, JSONB).op("||")(sa.func.jsonb_build_object("seed", seed)),
                         sa.JSON) if postgres else sa.func.json_set(jobs.c.params, "$.seed", seed)
        self.claim = jobs.update().where(jobs.c.id == sa.bindparam("b_job"), jobs.c.status == QUEUED.value).values(
            status=RUNNING.value, updated_at=now, worker_id=sa.bindparam("b_worker"), heartbeat_at=now,
            attempts=jobs.c.attempts + 1, started_at=sa.func.coalesce(jobs.c.started_at, now),
            params=sa.case((unseeded, seeded), else_=jobs.c.params)).returning(*moved)
        self.claim_step = steps.update().where(this_step).values(
            status=RUNNING.value, progress_current=0, started_at=now, finished_at=None,
            seed=sa.bindparam("b_step_seed", type_=sa.BigInteger))
        self.succeed = jobs.update().where(held).values(
            status=SUCCEEDED.value, updated_at=now, finished_at=now, heartbeat_at=None, error_code=None,
            error_message=None, error_details=None, record=sa.bindparam("b_record", type_=sa.JSON)
        ).returning(*moved)
        self.succeed_step = steps.update().where(this_step).values(
            status=SUCCEEDED.value, finished_at=now, progress_current=steps.c.progress_total)
        # One row per key (executemany), as a driver can run it.
        self.settle = uploads.delete().where(uploads.c.s3_key == sa.bindparam("b_key"),
                                             uploads.c.job_id == sa.bindparam("b_job"))
        self.artifact = artifacts.insert().values(
            job_id=sa.bindparam("b_job"), created_at=now,
            step_id=sa.select(steps.c.id).where(this_step).scalar_subquery())
        if postgres:
            return
        # SQLite: every one of them prepared for the driver (see Prepared).
        for name, keys, returns in (
                ("heartbeat", None, ()), ("heartbeat_params", None, (jobs.c.params,)), ("holds", None, ()),
                ("progress_step", None, ()), ("event", ("job_id", "kind", "payload"), ()),
                ("event_id", ("job_id", "kind", "payload"), (events.c.id,)), ("key_taken", None, ()),
                ("upload", ("job_id", "attempt", "s3_key"), ()), ("claim", None, moved), ("claim_step", None, ()),
                ("succeed", None, moved), ("succeed_step", None, ()), ("settle", None, ()),
                ("artifact", ARTIFACT_KEYS, ())):
            setattr(self, name, Prepared(getattr(self, name), dialect, column_keys=keys, returns=returns))


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every time in the store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _plain(row: Any) -> dict[str, Any]:
    return {k: aware(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def _run_driver(driver: Any, sql: str) -> None:
    """One statement without parameters on a sqlite3 connection; a driver error raised as Core's."""
    try:
        driver.execute(sql)
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


def make_engine(url: str, pool_size: int = 5, max_overflow: int = 10,
                pre_ping: bool = True) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
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
            # On the driver connection: Core's execution path (exec_driver_sql) cost more than the
            # BEGIN itself, and every SQLite transaction pays it.
            write = conn.get_execution_options().get("df_write", False)
            _run_driver(conn.connection.driver_connection, "BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if not url.startswith("postgresql"):
        raise ConfigError(f"unsupported DF_DATABASE_URL scheme: {url.split(':', 1)[0]!r} "
                          "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)")
    try:
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=max_overflow,
                                  connect_args=PG_KEEPALIVES)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"DF_DATABASE_URL can't be used: {exc}") from None

    if pre_ping:
        # Pre-ping finds a connection the server dropped (a restart, an idle timeout) before a
        # request uses it, at a round trip per checkout: half of a job's round trips when every
        # checkout paid it (benchmarks/queue_overhead.py). A connection back from use within
        # PING_IDLE_S was alive then; if the server went away since, its first statement fails,
        # SQLAlchemy drops the whole pool, and the caller's retry (a worker's) or 503 (a POST)
        # follows, as for any statement in flight at a restart.
        @sa.event.listens_for(engine, "checkout")
        def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            returned = record.info.get("df_returned_at")
            if returned is not None and time.monotonic() - returned < PING_IDLE_S:
                return
            try:
                engine.dialect.do_ping(dbapi_conn)
            except engine.dialect.loaded_dbapi.Error as exc:
                if engine.dialect.is_disconnect(exc, dbapi_conn, None):
                    raise sa.exc.DisconnectionError(str(exc)) from exc  # the pool connects anew
                raise

        @sa.event.listens_for(engine, "checkin")
        def _returned(_dbapi_conn: Any, record: Any) -> None:
            record.info["df_returned_at"] = time.monotonic()

    @sa.event.listens_for(engine, "connect")
    def _pg_connect(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            for name, value in PG_SESSION.items():
                cur.execute(f"SET {name} = '{value}'")
        dbapi_conn.commit()
        record.info["df_returned_at"] = time.monotonic()  # just answered: no ping before first use

    return engine


class JobStore:
    """Job, step, event, artifact and upload rows; conditional moves; reads."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10,
                 pre_ping: bool = True):
        self.url = url
        self.engine = make_engine(url, pool_size, max_overflow, pre_ping)
        self._writer = self.engine.execution_options(df_write=True)
        self._postgres = self.engine.dialect.name == "postgresql"
        # PostgreSQL reads and one-statement writes run without BEGIN and COMMIT, two round trips
        # each saved: under READ COMMITTED every statement takes its own snapshot anyway, and a
        # single statement is atomic. SQLite keeps its transactions (a read's snapshot spans its
        # statements there, and they cost no round trip).
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self._postgres else self.engine
        self._hot = HotStatements(self.engine.dialect)
        self._driver_sql: dict[int, str] = {}  # PostgreSQL's one-statement moves, compiled for the driver
        self._sqlite_create = None if self._postgres else SqliteCreate(self.engine.dialect)
        # SQLite takes one writer at a time. Threads of one process queue on this lock instead of
        # on SQLite's busy handler, whose sleeps grow to 100 ms and wreck tail latency.
        self._write_lock: Any = threading.Lock() if not self._postgres else contextlib.nullcontext()
        # Webhook deliveries, written with the events they announce (the job service sets it).
        self.outbox: Outbox | None = None

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def one_writer_at_a_time(self) -> bool:
        """SQLite: writes from this process queue on one lock, whatever the number of threads."""
        return not self._postgres

    def schema_revision(self) -> str | None:
        with self.read() as conn:
            return migrate.current_revision(conn)

    def upgrade_schema(self) -> tuple[str | None, str]:
        """Migrate the schema to the head revision (see migrate.py). Safe when many processes
        start at once: on PostgreSQL they queue on an advisory lock; on SQLite, on the write
        lock of BEGIN IMMEDIATE. Returns (revision before, revision after)."""
        with self.read() as conn:
            if migrate.current_revision(conn) == migrate.HEAD_REVISION:
                return migrate.HEAD_REVISION, migrate.HEAD_REVISION
        with self.write() as conn:
            if self._postgres:
                # Waiting for another process's upgrade is the one wait worth more than the
                # session's lock timeout: it ends when that upgrade commits.
                conn.exec_driver_sql("SET LOCAL lock_timeout = '300s'")
                conn.exec_driver_sql("SET LOCAL statement_timeout = '300s'")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            return migrate.upgrade(conn)

    def require_current_schema(self) -> None:
        revision = self.schema_revision()
        if revision != migrate.HEAD_REVISION:
            raise ConfigError(f"the job store's schema is at revision {revision or 'none'} and this version "
                              f"of DreamForge needs {migrate.HEAD_REVISION}: run `df db upgrade` "
                              "(DF_DB_AUTO_UPGRADE=0 keeps processes from doing it at start-up)")

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
    def _driver_write(self) -> Iterator[sqlite3.Connection]:
        """SQLite: a write transaction (BEGIN IMMEDIATE) on the pooled driver connection, for the
        hottest write, a POST's rows. A Core Connection's set-up, events and commit cost about
        as much CPU as SQLite's three inserts and commit together (timed in process: 0.044 ms
        for an empty ``write()`` against 0.012 ms here). Driver errors are raised as Core's, so
        ``_guard`` treats them as it does in ``write()``; on any error the transaction is rolled back."""
        with self._write_lock, self._guard():
            raw = self.engine.raw_connection()
            try:
                driver: Any = raw.driver_connection
                _run_driver(driver, "BEGIN IMMEDIATE")
                try:
                    yield driver
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # the error in hand says more
                        driver.rollback()
                    raise
                _run_driver(driver, "COMMIT")
            finally:
                raw.close()  # back to the pool, which rolls back whatever is left open

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._guard(), self._autocommit.begin() as conn:
            yield conn

    def _statement(self, statement: sa.TextClause, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One self-contained statement on PostgreSQL (see PG_CREATE): its rows, all fetched.

        It runs on the pooled DBAPI connection, in autocommit for the statement: a SQLAlchemy
        Connection in AUTOCOMMIT (setting and resetting the isolation level, its events, its
        result set-up) cost 0.38 ms of CPU for a SELECT 1 against 0.14 ms on the raw connection
        (timed in process, issue 18's second pass), and a job makes four such statements. The statements
        are text with untyped parameters, so Core would pass values and rows through unchanged
        too. A driver error is raised as SQLAlchemy's; a lost connection is invalidated with the
        rest of the pool, as Core does, so the next checkout connects anew."""
        sql = self._driver_sql.get(id(statement))
        if sql is None:
            sql = self._driver_sql[id(statement)] = str(statement.compile(dialect=self.engine.dialect))
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        with self._guard():
            try:
                raw = self.engine.raw_connection()
            except dbapi_error as exc:  # Core wraps a failed connect too; the pool alone does not
                raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi_error) from exc
            driver: Any = raw.driver_connection
            try:
                driver.autocommit = True
                try:
                    with driver.cursor() as cursor:
                        cursor.execute(sql, params)
                        names = [column.name for column in cursor.description or ()]
                        rows = cursor.fetchall() if names else []
                finally:
                    driver.autocommit = False
            except dbapi_error as exc:
                lost = self.engine.dialect.is_disconnect(exc, driver, None)
                if lost:
                    raw.invalidate(exc)
                    self.engine.dispose(close=False)  # the other pooled connections went with the server
                raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi_error,
                                                 connection_invalidated=lost) from exc
            finally:
                raw.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _announced(self, kind: str, payload: dict[str, Any]) -> bool:
        """Whether the server's own webhooks announce such an event (then the general path,
        whose outbox writes the deliveries with the event)."""
        if self.outbox is None:
            return False
        from dreamforge.webhooks.outbox import event_name

        name = event_name(kind, payload)
        return bool(name and name in self.outbox.server_events and self.outbox.server_urls)

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def _now(self) -> Any:
        """The job store's clock (see the module's docstring)."""
        return sa.func.now() if self._postgres else utcnow()

    def _ago(self, seconds: float) -> Any:
        if self._postgres:
            return sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        return utcnow() - timedelta(seconds=seconds)

    def _later(self, seconds: float) -> Any:
        return self._ago(-seconds)

    def _event(self, conn: Connection, job_id: str, kind: str, payload: dict[str, Any],
               params: dict[str, Any] | None = None) -> None:
        """Insert an event; with the job's ``params``, also the webhook deliveries announcing it,
        in the same transaction (see webhooks/outbox.py)."""
        values = self._clock({"job_id": job_id, "kind": kind, "payload": payload})
        if self.outbox is None or params is None:
            self._run(conn, self._hot.event, values)
            return
        event_id = self._run(conn, self._hot.event_id, values).row["id"]
        self.outbox.record(conn, self._now(), job_id, event_id, kind, payload, params)

    @staticmethod
    def _run(conn: Connection, statement: Any, params: dict[str, Any] | list[dict[str, Any]]) -> DriverResult:
        """Run a hot statement: prepared for the driver on SQLite, through Core on PostgreSQL."""
        if isinstance(statement, Prepared):
            return statement(conn, params)
        result = conn.execute(statement, params)
        return DriverResult([dict(r) for r in result.mappings()] if result.returns_rows else [], result.rowcount)

    def _clock(self, params: dict[str, Any]) -> dict[str, Any]:
        """A hot statement's parameters, with the time on SQLite (PostgreSQL reads its own)."""
        if not self._postgres:
            params["now"] = utcnow()
        return params

    @staticmethod
    def _held(fence: Fence, **more: Any) -> dict[str, Any]:
        return {"b_job": fence.job_id, "b_worker": fence.worker_id, "b_attempt": fence.attempt, **more}

    def _fenced(self, fence: Fence) -> Any:
        return sa.and_(jobs.c.id == fence.job_id, jobs.c.status == RUNNING.value,
                       jobs.c.worker_id == fence.worker_id, jobs.c.attempts == fence.attempt)

    # -- creating and withdrawing ----------------------------------------------------------------
    def create(self, params: dict[str, Any], *, correlation_id: str | None = None,
               idempotency_key_hash: str | None = None, request_hash: str | None = None,
               idempotency_ttl_s: float | None = None,
               retry_of: str | None = None, rerun_of: str | None = None,
               job_type: str = "generate") -> tuple[dict[str, Any], bool]:
        """Insert a queued job with its step and first event. Returns (job, created), the job in
        the shape ``job()`` returns.

        With an idempotency key already used: the same request hash returns the first job
        (created False); another hash raises IdempotencyConflict.
        """
        job_id = str(uuid.uuid4())
        job = {"id": job_id, "type": job_type, "status": JobStatus.queued.value,
               "params": params, "idempotency_key_hash": idempotency_key_hash,
               "request_hash": request_hash, "correlation_id": correlation_id, "attempts": 0,
               "retry_of": retry_of, "rerun_of": rerun_of}
        # Progress counts item-steps: every item of a batch takes every denoising step (img2img
        # and inpaint run int(steps * strength) of them).
        steps_run = denoising_steps(params.get("steps", 0), params.get("strength")) \
            if job_type in ("img2img", "inpaint") else params.get("steps", 0)
        step = {"job_id": job_id, "name": STEP_NAME if job_type == "generate" else job_type,
                "status": JobStatus.queued.value,
                "progress_current": 0, "progress_total": steps_run * params.get("count", 1),
                "seed": params.get("seed")}
        expires = self._later(idempotency_ttl_s) if idempotency_key_hash and idempotency_ttl_s else None
        first_event = {"status": "queued", **({"retry_of": retry_of} if retry_of else {}),
                       **({"rerun_of": rerun_of} if rerun_of else {})}
        try:
            if self._postgres and idempotency_key_hash is None:
                # No webhook announces a queued job, so no outbox row: one statement.
                created_at = self._statement(PG_CREATE, {
                    "id": job_id, "type": job_type, "params": json.dumps(params), "correlation_id": correlation_id,
                    "retry_of": retry_of, "rerun_of": rerun_of, "step_name": step["name"],
                    "progress_total": step["progress_total"], "seed": step["seed"],
                    "event": json.dumps(first_event)})[0]["created_at"]
            elif self._postgres:
                with self.write() as conn:
                    now = self._now()  # the store's clock, and the expiry, are SQL here
                    # A key past its expiry is free again: the old job keeps its row, not the key.
                    conn.execute(jobs.update().where(jobs.c.idempotency_key_hash == idempotency_key_hash,
                                                     jobs.c.idempotency_expires_at < now)
                                 .values(idempotency_key_hash=None))
                    created_at = conn.execute(jobs.insert().values(**job, created_at=now, updated_at=now,
                                                                   idempotency_expires_at=expires)
                                              .returning(jobs.c.created_at)).scalar_one()
                    conn.execute(INSERT_STEP, step)
                    self._event(conn, job_id, "status", first_event)
            else:
                create = self._sqlite_create
                assert create is not None
                with self._driver_write() as driver:
                    created_at = now = self._now()
                    if idempotency_key_hash is not None:
                        create.free_key(driver, {"b_key": idempotency_key_hash, "b_now": now})
                    # No webhook announces a queued job: no outbox row, so three plain inserts.
                    create.job(driver, {**job, "created_at": now, "updated_at": now, "idempotency_expires_at": expires})
                    create.step(driver, step)
                    create.event(driver, {"job_id": job_id, "at": now, "kind": "status", "payload": first_event})
        except sa.exc.IntegrityError:
            if idempotency_key_hash is None:
                raise
            return self.job(self._existing_for_key(idempotency_key_hash, request_hash)), False
        unset = dict.fromkeys(("error_code", "error_message", "error_details", "worker_id", "record",
                               "heartbeat_at", "started_at", "finished_at", "idempotency_expires_at"))
        step_view = {**step, "started_at": None, "finished_at": None}
        created_at = aware(created_at)
        return {**job, **unset, "created_at": created_at, "updated_at": created_at,
                "steps": [step_view], "artifacts": []}, True

    def _existing_for_key(self, key_hash: str, request_hash: str | None) -> str:
        with self.read() as conn:
            row = conn.execute(sa.select(jobs.c.id, jobs.c.request_hash)
                               .where(jobs.c.idempotency_key_hash == key_hash)).one()
        if row.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body",
                details={"job_id": row.id})
        return str(row.id)

    def delete_if_queued(self, job_id: str) -> bool:
        """Delete a job, with its steps and events, only while it is still queued: a worker may
        hold it already (the queue took the message but its reply was lost)."""
        with self.write() as conn:
            gone = conn.execute(jobs.delete().where(jobs.c.id == job_id,
                                                    jobs.c.status == JobStatus.queued.value,
                                                    jobs.c.attempts == 0)).rowcount
            if gone:  # children too, also where the database doesn't cascade (SQLite without FKs)
                for table in (events, steps):
                    conn.execute(table.delete().where(table.c.job_id == job_id))
        return bool(gone)

    # -- moves ----------------------------------------------------------------------------------
    def apply(self, move: Move) -> dict[str, Any] | None:
        """Carry out ``move`` if the job is where the move expects it; the job's params, attempts
        and correlation id after the move, or None when it did not happen."""
        if self._one_statement(move):
            moved = self._apply_in_one_statement(move)
            if moved is not None:
                return moved
        if self._plain(move):
            return self._apply_prebuilt(move)
        now = self._now()
        where = [jobs.c.id == move.job_id, jobs.c.status == move.source.value]
        if move.fence is not None:
            where.append(self._fenced(move.fence))
        if move.silent_for_s is not None:
            where.append(jobs.c.heartbeat_at < self._ago(move.silent_for_s))
            if self._postgres:
                # The reaper never waits on a row a live (or frozen) session holds: next time.
                where.append(jobs.c.id.in_(sa.select(jobs.c.id).where(jobs.c.id == move.job_id)
                                           .with_for_update(skip_locked=True)))
        if move.from_error_code is not None:
            where.append(jobs.c.error_code == move.from_error_code)
        target = move.target
        assert target is not RUNNING, "every claim is plain: _apply_prebuilt carries it"
        values: dict[str, Any] = {"status": target.value, "updated_at": now}
        step_values: dict[str, Any] = {"status": target.value}
        if target is JobStatus.queued:
            values.update(worker_id=None, heartbeat_at=None)
            step_values.update(progress_current=0)
        else:
            values.update(finished_at=now, heartbeat_at=None, error_code=None, error_message=None,
                          error_details=None)
            step_values.update(finished_at=now)
            if move.failure is not None:
                values.update(error_code=move.failure.code, error_message=move.failure.message,
                              error_details=move.failure.details)
            elif target is JobStatus.succeeded:
                step_values.update(progress_current=steps.c.progress_total)
        if move.record is not None:
            values.update(record=move.record)
        with self.write() as conn:
            row = conn.execute(jobs.update().where(*where).values(**values).returning(
                jobs.c.params, jobs.c.attempts, jobs.c.correlation_id, jobs.c.worker_id,
                jobs.c.created_at, jobs.c.updated_at)
            ).mappings().one_or_none()
            if row is None:
                return None
            conn.execute(steps.update().where(steps.c.job_id == move.job_id).values(**step_values))
            if move.settles_uploads:
                conn.execute(uploads.delete().where(uploads.c.s3_key.in_(move.settles_uploads),
                                                    uploads.c.job_id == move.job_id))
            if move.artifacts:
                self._insert_artifacts(conn, move.job_id, move.artifacts)
            payload: dict[str, Any] = {"status": target.value}
            if move.failure is not None:
                self._event(conn, move.job_id, "error", {"code": move.failure.code,
                                                         "message": move.failure.message})
                payload["code"] = move.failure.code
            self._event(conn, move.job_id, "status", {**payload, **move.note}, row["params"])
        return dict(row)

    def _one_statement(self, move: Move) -> bool:
        """The moves every job makes (a claim, a success) go in one statement on PostgreSQL."""
        return (self._postgres and move.silent_for_s is None and move.failure is None
                and move.from_error_code is None
                and ((move.source, move.target) in ((QUEUED, RUNNING), (RUNNING, SUCCEEDED)))
                and not self._announced("status", {"status": move.target.value}))

    @staticmethod
    def _plain(move: Move) -> bool:
        """A claim, or a success that writes the job's record: the hot statements carry it."""
        return (move.silent_for_s is None and move.failure is None and move.from_error_code is None
                and ((move.source, move.target) == (QUEUED, RUNNING)
                     or ((move.source, move.target) == (RUNNING, SUCCEEDED) and move.record is not None)))

    def _apply_prebuilt(self, move: Move) -> dict[str, Any] | None:
        hot = self._hot
        with self.write() as conn:
            if move.target is RUNNING:
                row = self._run(conn, hot.claim, self._clock({"b_job": move.job_id, "b_worker": move.claimant,
                                                              "b_seed": move.seed})).row
                if row is None:
                    return None
                self._run(conn, hot.claim_step, self._clock({"b_job": move.job_id,
                                                             "b_step_seed": row["params"].get("seed")}))
                payload: dict[str, Any] = {"status": RUNNING.value, "worker_id": move.claimant,
                                           "attempt": row["attempts"]}
            else:
                assert move.fence is not None  # Move requires it out of running
                row = self._run(conn, hot.succeed, self._clock(self._held(move.fence, b_record=move.record))).row
                if row is None:
                    return None
                self._run(conn, hot.succeed_step, self._clock({"b_job": move.job_id}))
                if move.settles_uploads:
                    self._run(conn, hot.settle, [{"b_job": move.job_id, "b_key": key} for key in move.settles_uploads])
                if move.artifacts:
                    self._run(conn, hot.artifact, [self._clock({**a, "b_job": move.job_id}) for a in move.artifacts])
                payload = {"status": SUCCEEDED.value}
            self._event(conn, move.job_id, "status", {**payload, **move.note}, row["params"])
        return dict(row)

    def _apply_in_one_statement(self, move: Move) -> dict[str, Any] | None:
        if move.target is RUNNING:
            rows = self._statement(PG_CLAIM, {"job_id": move.job_id, "worker_id": move.claimant,
                                              "seed": move.seed})
        else:
            assert move.fence is not None  # Move requires it out of running
            rows = self._statement(PG_FINISH, {
                "job_id": move.job_id, "worker_id": move.fence.worker_id, "attempt": move.fence.attempt,
                "record": None if move.record is None else json.dumps(move.record),
                "keys": list(move.settles_uploads), "artifacts": json.dumps(list(move.artifacts)),
                "payload": json.dumps({"status": move.target.value, **move.note})})
        return dict(rows[0]) if rows else None

    def _insert_artifacts(self, conn: Connection, job_id: str, rows: Any) -> None:
        step_id = sa.select(steps.c.id).where(steps.c.job_id == job_id).scalar_subquery()
        now = self._now()
        for artifact in rows:
            conn.execute(artifacts.insert().values(job_id=job_id, step_id=step_id, created_at=now,
                                                   **artifact))

    def add_recovered_artifacts(self, job_id: str, rows: list[dict[str, Any]]) -> bool:
        """Artifact rows for spooled images uploaded later, while the job stays failed with
        storage_error (some of its items are still missing). False if it is not such a job."""
        with self.write() as conn:
            if not conn.execute(jobs.update().where(jobs.c.id == job_id,
                                                    jobs.c.status == JobStatus.failed.value,
                                                    jobs.c.error_code == "storage_error")
                                .values(updated_at=self._now())).rowcount:
                return False
            self._insert_artifacts(conn, job_id, rows)
            self._event(conn, job_id, "log", {"message": "spooled images uploaded",
                                              "items": [r["item_index"] for r in rows]})
        return True

    # -- fenced writes of the holder ------------------------------------------------------------
    def job_log(self, fence: Fence, level: str, message: str) -> bool:
        """A line of the job's own log, from its holder."""
        with self.write() as conn:
            if not conn.execute(jobs.update().where(self._fenced(fence))
                                .values(heartbeat_at=self._now())).rowcount:
                return False
            self._event(conn, fence.job_id, "log", {"level": level, "message": message})
        return True

    def progress(self, fence: Fence, current: int, total: int) -> bool:
        """Record one step of progress; False when the holder no longer holds the job."""
        if self._postgres and not self._announced("progress", {}) and self._statement(PG_PROGRESS, {
                "job_id": fence.job_id, "worker_id": fence.worker_id, "attempt": fence.attempt,
                "current": current, "total": total}):
            return True
        with self.write() as conn:
            if self._postgres:
                # A progress row is worth no fsync: losing the last few on a crash is harmless,
                # and a 30-step job would otherwise wait on 30 WAL flushes.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            held = self._run(conn, self._hot.heartbeat_params, self._clock(self._held(fence))).row
            if held is None:
                return False
            self._run(conn, self._hot.progress_step, {"b_job": fence.job_id, "b_current": current, "b_total": total})
            self._event(conn, fence.job_id, "progress", {"current": current, "total": total}, held["params"])
        return True

    def begin_upload(self, fence: Fence, key: str) -> bool | None:
        """Record, before the object is written, that the holder is about to write ``key``.
        False: the holder lost the job. None: the key is taken (by an earlier attempt)."""
        if self._postgres:
            found = self._statement(PG_BEGIN_UPLOAD, {"job_id": fence.job_id, "worker_id": fence.worker_id,
                                                      "attempt": fence.attempt, "key": key})[0]
            return bool(found["held"]) and (True if found["added"] else None)
        with self.write() as conn:
            if not self._run(conn, self._hot.heartbeat, self._clock(self._held(fence))).rowcount:
                return False
            if self._run(conn, self._hot.key_taken, {"b_key": key}).rows:
                return None
            self._run(conn, self._hot.upload, self._clock({"job_id": fence.job_id, "attempt": fence.attempt,
                                                        "s3_key": key}))
        return True

    def unsettled_uploads(self, older_than_s: float, limit: int = 100) -> list[dict[str, Any]]:
        """Uploads whose attempt no longer holds its job: the worker lost the job or died before
        settling them, so the object may exist with no row pointing to it."""
        held = sa.exists().where(jobs.c.id == uploads.c.job_id,
                                 jobs.c.status == RUNNING.value,
                                 jobs.c.attempts == uploads.c.attempt)
        with self.read() as conn:
            rows = conn.execute(sa.select(uploads.c.id, uploads.c.job_id, uploads.c.s3_key,
                                          sa.exists().where(artifacts.c.s3_key == uploads.c.s3_key)
                                          .label("recorded"))
                                .where(~held, uploads.c.created_at < self._ago(older_than_s))
                                .order_by(uploads.c.id).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def forget_upload(self, upload_id: int) -> None:
        with self.write() as conn:
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))

    # -- liveness -------------------------------------------------------------------------------
    def worker_heartbeat(self, worker_id: str, hostname: str, pid: int, held: list[Fence],
                         register: bool = True) -> None:
        now = self._now()
        with self.write() as conn:
            if register:
                updated = conn.execute(workers.update().where(workers.c.id == worker_id)
                                       .values(heartbeat_at=now, stopped_at=None)).rowcount
                if not updated:
                    conn.execute(workers.insert().values(id=worker_id, hostname=hostname, pid=pid,
                                                         started_at=now, heartbeat_at=now))
            if held:
                pairs = [(f.job_id, f.attempt) for f in held]
                conn.execute(jobs.update().where(sa.tuple_(jobs.c.id, jobs.c.attempts).in_(pairs),
                                                 jobs.c.worker_id == worker_id,
                                                 jobs.c.status == RUNNING.value)
                             .values(heartbeat_at=now))

    def worker_stopped(self, worker_id: str) -> None:
        with self.write() as conn:
            conn.execute(workers.update().where(workers.c.id == worker_id)
                         .values(stopped_at=self._now()))

    def live_workers(self, timeout_s: float) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(sa.select(workers).where(workers.c.heartbeat_at >= self._ago(timeout_s),
                                                         workers.c.stopped_at.is_(None))
                                .order_by(workers.c.started_at)).mappings().all()
        return [_plain(r) for r in rows]

    def silent_holders(self, timeout_s: float, limit: int = 100) -> list[Fence]:
        """Running jobs whose holder has not beaten for ``timeout_s``, on the store's clock."""
        with self.read() as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.attempts).where(
                jobs.c.status == RUNNING.value, jobs.c.heartbeat_at < self._ago(timeout_s))
                .order_by(jobs.c.heartbeat_at).limit(limit)).all()
        return [Fence(r.id, r.worker_id, r.attempts) for r in rows]

    def queued_before(self, age_s: float, limit: int = 1000) -> list[str]:
        with self.read() as conn:
            return list(conn.execute(sa.select(jobs.c.id).where(
                jobs.c.status == JobStatus.queued.value, jobs.c.updated_at < self._ago(age_s))
                .order_by(jobs.c.updated_at).limit(limit)).scalars())

    def take_lease(self, name: str, holder: str, for_s: float) -> bool:
        """Hold the chore ``name`` for ``for_s`` seconds if nobody else holds it now."""
        with self.write() as conn:
            if conn.execute(leases.update().where(leases.c.name == name,
                                                  sa.or_(leases.c.until < self._now(),
                                                         leases.c.holder == holder))
                            .values(holder=holder, until=self._later(for_s))).rowcount:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(leases.insert().values(name=name, holder=holder,
                                                        until=self._later(for_s)))
            except sa.exc.IntegrityError:
                return False
        return True

    # -- reading --------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        """The job with its steps and artifacts, as plain dicts."""
        if not is_job_id(job_id):
            raise JobNotFound(f"no job with id {cut(job_id, 80)!r}")
        with self.read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one_or_none()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return self._assemble(conn, [row])[0]

    def list_jobs(self, statuses: list[str] | None = None, job_type: str | None = None, *,
                  created_after: datetime | None = None, created_before: datetime | None = None,
                  error_code: str | None = None, before: tuple[datetime, str] | None = None,
                  limit: int = 20) -> list[dict[str, Any]]:
        """Newest first, by (created_at, id) descending; ``before`` is the key of the last job of
        the previous page (keyset paging: stable while new jobs arrive, and one index range
        per page whatever the filters, since each filter has an index ending in that key)."""
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if statuses:
            query = query.where(jobs.c.status.in_(statuses))
        if job_type:
            query = query.where(jobs.c.type == job_type)
        if error_code:
            query = query.where(jobs.c.error_code == error_code)
        if created_after is not None:
            query = query.where(jobs.c.created_at > created_after)
        if created_before is not None:
            query = query.where(jobs.c.created_at < created_before)
        if before is not None:
            query = query.where(sa.tuple_(jobs.c.created_at, jobs.c.id) < sa.tuple_(*before))
        with self.read() as conn:
            return self._assemble(conn, conn.execute(query).mappings().all())

    def job_state(self, job_id: str) -> str | None:
        with self.read() as conn:
            return conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()

    def holds(self, fence: Fence) -> bool:
        """Whether the holder still holds the job (a cancel or a reclaim takes it away)."""
        with self.read() as conn:
            return bool(self._run(conn, self._hot.holds, self._held(fence)).rows)

    def _assemble(self, conn: Connection, rows: Any) -> list[dict[str, Any]]:
        """Jobs with their steps and artifacts: two queries, then grouped by job id (linear)."""
        ids = [r["id"] for r in rows]
        by_job: dict[str, dict[str, list[dict[str, Any]]]] = {
            i: {"steps": [], "artifacts": []} for i in ids}
        if ids:
            for s in conn.execute(sa.select(steps).where(steps.c.job_id.in_(ids))
                                  .order_by(steps.c.id)).mappings():
                by_job[s["job_id"]]["steps"].append(_plain(s))
            for a in conn.execute(sa.select(artifacts).where(artifacts.c.job_id.in_(ids))
                                  .order_by(artifacts.c.item_index)).mappings():
                by_job[a["job_id"]]["artifacts"].append(dict(a))
        return [{**_plain(r), **by_job[r["id"]]} for r in rows]

    def events(self, job_id: str, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        query = sa.select(events).where(events.c.job_id == job_id, events.c.id > after_id).order_by(events.c.id)
        with self.read() as conn:
            rows = conn.execute(query.limit(limit) if limit else query).mappings().all()
        return [_plain(r) for r in rows]

    def events_after(self, after_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Every job's events after ``after_id``, oldest first, each with its job's type."""
        query = (sa.select(events, jobs.c.type.label("job_type"))
                 .join(jobs, jobs.c.id == events.c.job_id)
                 .where(events.c.id > after_id).order_by(events.c.id).limit(limit))
        with self.read() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def last_event_id(self) -> int:
        with self.read() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count())
                                .group_by(jobs.c.status)).all()
        found = {status: n for status, n in rows}
        return {s.value: found.get(s.value, 0) for s in JobStatus}

    def finished_before(self, older_than_s: float, statuses: list[str], limit: int) -> list[dict[str, Any]]:
        """Jobs in ``statuses`` that ended (or, never started, were created) before the cutoff,
        oldest first, with their artifact keys."""
        ended = sa.func.coalesce(jobs.c.finished_at, jobs.c.created_at)
        with self.read() as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.status).where(
                jobs.c.status.in_(statuses), ended < self._ago(older_than_s))
                .order_by(ended).limit(limit)).all()
            keys: dict[str, list[str]] = {r.id: [] for r in rows}
            if keys:
                for job_id, key in conn.execute(sa.select(artifacts.c.job_id, artifacts.c.s3_key)
                                                .where(artifacts.c.job_id.in_(list(keys)))):
                    keys[job_id].append(key)
        return [{"id": r.id, "status": r.status, "keys": keys[r.id]} for r in rows]

    def delete_jobs(self, job_ids: list[str], statuses: list[str]) -> int:
        """Delete these jobs with every row of theirs, each only if it is still in ``statuses``."""
        with self.write() as conn:
            gone = list(conn.execute(sa.select(jobs.c.id).where(
                jobs.c.id.in_(job_ids), jobs.c.status.in_(statuses)).with_for_update()).scalars())
            if gone:
                for table in (webhook_deliveries, events, artifacts, uploads, steps):
                    conn.execute(table.delete().where(table.c.job_id.in_(gone)))
                conn.execute(jobs.delete().where(jobs.c.id.in_(gone)))
        return len(gone)
