"""The job store's tables: jobs, steps, events, artifacts, uploads, leases and the workers' heartbeats.

Declared in SQLAlchemy Core: the store builds its statements on tables, never on mapped objects,
and every `df` command that reads the store pays for what it imports (an ORM layer cost a third
of a second of start-up). Index names follow ``ix_<table>_<column>`` so the schema that the first
release created compares equal to this one (``dreamforge.migrate.differences``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(name: str, *, nullable: bool = True, index: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


def _text(name: str, length: int | None, *, nullable: bool = False, **kw: object) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=nullable, **kw)  # type: ignore[arg-type]


def _job_ref(*, index: bool = True) -> sa.Column:
    return sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                     nullable=False, index=index)


def _index_of_set(name: str, column: str) -> sa.Index:
    """A partial index, on both backends, of only the rows where ``column`` is set."""
    condition = sa.text(f"{column} IS NOT NULL")
    return sa.Index(name, column, sqlite_where=condition, postgresql_where=condition)


jobs = sa.Table(
    "jobs", metadata,
    _text("id", 36, primary_key=True),
    _text("type", 32),
    _text("status", 16),
    sa.Column("params", sa.JSON, nullable=False),
    # The hash covers the key and its scope (the API token, or the client); the key is free again
    # after idempotency_expires_at (DF_IDEMPOTENCY_TTL).
    _text("idempotency_key_hash", 64, nullable=True, unique=True),
    _ts("idempotency_expires_at"),
    _text("request_hash", 64, nullable=True),
    # A retry of a failed or canceled job is a new job that names the one it retries.
    _text("retry_of", 36, nullable=True),
    # A rerun (of any job) is a new job that names the one whose recorded parameters it runs.
    _text("rerun_of", 36, nullable=True),
    # How the job ran (model, scheduler, dtype, device, versions, seeds): see execution.run_record.
    sa.Column("record", sa.JSON, nullable=True),
    _text("correlation_id", 255, nullable=True),
    _text("error_code", 64, nullable=True),
    _text("error_message", None, nullable=True),
    sa.Column("error_details", sa.JSON, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _text("worker_id", 255, nullable=True),
    _ts("heartbeat_at"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("started_at"),
    _ts("finished_at"),
    # Every index is written on each insert and (for status) each move, so none is a prefix of
    # another: a filter or sort on status or created_at alone uses the index that starts with it.
    # Listing pages by (created_at, id), newest first, with or without a filter: each filter has
    # an index that ends in that key, so a page is one index range at any table size.
    sa.Index("ix_jobs_created_id", "created_at", "id"),
    sa.Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    sa.Index("ix_jobs_type_created_id", "type", "created_at", "id"),
    # Nearly every job is neither a retry nor a rerun: the indexes hold only those that are
    # (``retry_of = :id`` implies IS NOT NULL, so such a lookup still uses them).
    _index_of_set("ix_jobs_retry_of", "retry_of"),
    _index_of_set("ix_jobs_rerun_of", "rerun_of"),
)

steps = sa.Table(
    "steps", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _job_ref(),
    _text("name", 32),
    _text("status", 16),
    sa.Column("progress_current", sa.Integer, nullable=False, default=0),
    sa.Column("progress_total", sa.Integer, nullable=False, default=0),
    sa.Column("seed", sa.BigInteger, nullable=True),
    _ts("started_at"),
    _ts("finished_at"),
)

events = sa.Table(
    "events", metadata,
    # Every progress write is an event: 64-bit ids (SQLite's rowid is 64-bit already, and must stay
    # INTEGER to remain the rowid).
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    # ix_events_job_id_id serves lookups by job_id alone (and the cascade delete) too.
    _job_ref(index=False),
    _ts("at", nullable=False),
    _text("kind", 16),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index("ix_events_job_id_id", "job_id", "id"),
)

artifacts = sa.Table(
    "artifacts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _job_ref(),
    sa.Column("step_id", sa.Integer, sa.ForeignKey("steps.id"), nullable=True),
    sa.Column("item_index", sa.Integer, nullable=False, default=0),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    _text("format", 8),
    _text("s3_key", 512, unique=True),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    _text("sha256", 64),
    _ts("created_at", nullable=False),
)

workers = sa.Table(
    "workers", metadata,
    _text("id", 255, primary_key=True),
    _text("hostname", 255),
    sa.Column("pid", sa.Integer, nullable=False),
    _ts("started_at", nullable=False),
    _ts("heartbeat_at", nullable=False, index=True),
    _ts("stopped_at"),
)

# An object a worker is about to write, recorded (fenced) before the write. A success turns it
# into an artifact row in the same transaction; a row left behind by a worker that lost its job or
# died names an object that may exist without a job pointing to it, for the sweep.
uploads = sa.Table(
    "uploads", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _job_ref(),
    sa.Column("attempt", sa.Integer, nullable=False),
    _text("s3_key", 512, unique=True),
    _ts("created_at", nullable=False, index=True),
)

# A named chore that one process of the fleet does at a time (the orphan and upload sweeps).
leases = sa.Table(
    "leases", metadata,
    _text("name", 64, primary_key=True),
    _text("holder", 255),
    _ts("until", nullable=False),
)

# The model registry (dreamforge/registry): checkpoints a job can name. ``path`` is relative to
# the models root (DF_MODELS_ROOT) when the model lies under it, so a worker that mounts the
# root elsewhere finds it; absolute otherwise. ``sha256`` of a Diffusers folder is the hash of
# its files' hashes (see registry/identify.py). ``downloaded``: DreamForge fetched the file, so
# removing the model may delete it.
models = sa.Table(
    "models", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _text("name", 128, unique=True),
    _text("kind", 32),
    _text("format", 16),
    _text("source", 2048),
    _text("path", 2048),
    _text("sha256", 64),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("is_default", sa.Boolean, nullable=False, default=False),
    sa.Column("downloaded", sa.Boolean, nullable=False, default=False),
    # What the header or configs said (tensor count, dtype, the architecture's name).
    sa.Column("details", sa.JSON, nullable=False),
    _ts("added_at", nullable=False),
    _ts("last_used_at"),
    _ts("verified_at"),
)

# The webhook outbox: one row per (event, endpoint), written in the transaction of the event it
# announces (dreamforge/webhooks). ``id`` is the webhook-id every attempt carries; ``body`` is
# fixed at the first attempt so every retry signs the same bytes. A deliverer claims a due row by
# moving ``next_attempt_at`` past its attempt (a lease) and writing ``claim_token``; only the
# claim's holder records the outcome.
webhook_deliveries = sa.Table(
    "webhook_deliveries", metadata,
    _text("id", 40, primary_key=True),
    _job_ref(),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    _text("event_type", 32),
    _text("url", 2048),
    sa.Column("body", sa.Text, nullable=True),
    _text("status", 16),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _ts("next_attempt_at", nullable=False),
    _text("claim_token", 32, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    _text("last_error", 500, nullable=True),
    _ts("created_at", nullable=False, index=True),
    _ts("last_attempt_at"),
    _ts("delivered_at"),
    sa.Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
)
