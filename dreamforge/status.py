"""The job status vocabulary, from the database to the terminal. No pydantic here, so the CLI can
offer ``--status`` choices without importing the wire models."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed)
