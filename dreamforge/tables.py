"""The job store's tables (SQLModel): jobs, steps, events, artifacts, and the workers' heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=sa.DateTime(timezone=True), **kw)


def _json(**kw: Any) -> Any:
    return Field(sa_type=sa.JSON, **kw)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    # Listing pages by (created_at, id), newest first, with or without a filter: each filter has
    # an index that ends in that key, so a page is one index range at any table size.
    __table_args__ = (
        sa.Index("ix_jobs_created_id", "created_at", "id"),
        sa.Index("ix_jobs_status_created_id", "status", "created_at", "id"),
        sa.Index("ix_jobs_type_created_id", "type", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    type: str = Field(max_length=32)
    status: str = Field(index=True, max_length=16)
    params: dict = _json()
    # The hash covers the key and its scope (the API token, or the client); the key is free again
    # after idempotency_expires_at (DF_IDEMPOTENCY_TTL).
    idempotency_key_hash: str | None = Field(default=None, unique=True, max_length=64)
    idempotency_expires_at: datetime | None = _ts(default=None)
    request_hash: str | None = Field(default=None, max_length=64)
    # A retry of a failed or canceled job is a new job that names the one it retries.
    retry_of: str | None = Field(default=None, max_length=36, index=True)
    correlation_id: str | None = Field(default=None, max_length=255)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    error_details: Any = _json(default=None, nullable=True)
    attempts: int = 0
    worker_id: str | None = Field(default=None, max_length=255)
    heartbeat_at: datetime | None = _ts(default=None)
    created_at: datetime = _ts(index=True)
    updated_at: datetime = _ts()
    started_at: datetime | None = _ts(default=None)
    finished_at: datetime | None = _ts(default=None)


class Step(SQLModel, table=True):
    __tablename__ = "steps"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=32)
    status: str = Field(max_length=16)
    progress_current: int = 0
    progress_total: int = 0
    seed: int | None = Field(default=None, sa_type=sa.BigInteger)
    started_at: datetime | None = _ts(default=None)
    finished_at: datetime | None = _ts(default=None)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_job_id_id", "job_id", "id"),)

    # Every progress write is an event: 64-bit ids (SQLite's rowid is 64-bit already, and must stay
    # INTEGER to remain the rowid).
    id: int | None = Field(default=None, primary_key=True,
                           sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"))
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=36, ondelete="CASCADE")
    at: datetime = _ts()
    kind: str = Field(max_length=16)
    payload: dict = _json()


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=36, ondelete="CASCADE")
    step_id: int | None = Field(default=None, foreign_key="steps.id")
    item_index: int = 0
    seed: int = Field(sa_type=sa.BigInteger)
    width: int
    height: int
    format: str = Field(max_length=8)
    s3_key: str = Field(unique=True, max_length=512)
    size_bytes: int
    sha256: str = Field(max_length=64)
    created_at: datetime = _ts()


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = Field(primary_key=True, max_length=255)
    hostname: str = Field(max_length=255)
    pid: int
    started_at: datetime = _ts()
    heartbeat_at: datetime = _ts(index=True)
    stopped_at: datetime | None = _ts(default=None)


class Upload(SQLModel, table=True):
    """An object a worker is about to write, recorded (fenced) before the write. A success turns
    it into an artifact row in the same transaction; a row left behind by a worker that lost its
    job or died names an object that may exist without a job pointing to it, for the sweep."""

    __tablename__ = "uploads"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=36, ondelete="CASCADE")
    attempt: int
    s3_key: str = Field(unique=True, max_length=512)
    created_at: datetime = _ts(index=True)


class Lease(SQLModel, table=True):
    """A named chore that one process of the fleet does at a time (the orphan and upload sweeps)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=255)
    until: datetime = _ts()
