"""The job status vocabulary, from the database to the terminal. No pydantic here, so the CLI can
offer ``--status`` choices without importing the wire models."""

from __future__ import annotations

import enum
import uuid

# What a job type looks like (generate, and later img2img, inpaint, download), for filters.
JOB_TYPE_PATTERN = r"^[a-z0-9_]{1,32}$"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def is_job_id(value: str) -> bool:
    """Job ids are canonical UUIDs; anything else names no job and never reaches the database."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False
