"""Every status move a job can make, and the policy that picks one.

This module decides; it does no I/O. The job service builds a ``Move`` here and hands it to the job
store, which carries it out as one conditional UPDATE in the same transaction as its event, and
decides nothing. A move that finds the job no longer where the move expects it (another worker
won, the holder lost it, a reaper took it) simply doesn't happen.

    queued ──claim──► running ──succeed──► succeeded
      ▲  │              │ │ │
      │  │  hand back   │ │ └──fail──► failed ──recover (storage_error only, every item stored)──► succeeded
      └──┼──────────────┘ │
         └──cancel────────┴──cancel──► canceled
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dreamforge.status import JobStatus

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (JobStatus.queued, JobStatus.running, JobStatus.succeeded,
                                                JobStatus.failed, JobStatus.canceled)

# The only moves there are. ``Move.__post_init__`` refuses any other, so a new status or move is
# added here first, and every caller learns of it from this table.
LEGAL: dict[tuple[JobStatus, JobStatus], str] = {
    (QUEUED, RUNNING): "a worker claims the job",
    (RUNNING, QUEUED): "the job goes back to the queue: handed back, or its holder went silent",
    (RUNNING, SUCCEEDED): "the holder stored every image (or, for a download, registered the model)",
    (RUNNING, FAILED): "the holder failed it, or its holder went silent on the last attempt",
    (FAILED, SUCCEEDED): "an operator uploaded the last spooled images of a storage_error job",
    (QUEUED, CANCELED): "a client canceled the job before any worker took it",
    (RUNNING, CANCELED): "a client canceled the job; its holder stops at its next step",
}

# Failures that say nothing about the job itself (its runner process died or hung, its worker
# vanished): the job is tried again while it has attempts left.
TRANSIENT_CODES = frozenset({"runner_crashed", "runner_timeout", "worker_lost",
                             # a model download's connection broke: the next attempt resumes it
                             "download_interrupted"})


@dataclass(frozen=True)
class Fence:
    """Who holds a running job: a worker and the attempt it claimed. Every write a worker makes
    about the job is conditional on both, checked in the same statement, so a worker that lost
    the job (reclaimed while it was frozen, say) can't touch it, nor its next attempt."""

    job_id: str
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class JobFailure:
    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class Move:
    """One status move, with every condition it needs to hold when it is carried out."""

    job_id: str
    source: JobStatus
    target: JobStatus
    fence: Fence | None = None
    # Only if the holder's heartbeat is at least this old, on the job store's clock.
    silent_for_s: float | None = None
    # For a claim: the worker that takes the job, and the seed a job that draws images but names
    # none gets with the claim (recorded before any pixel exists; a retry keeps the first one).
    claimant: str | None = None
    seed: int | None = None
    failure: JobFailure | None = None
    # Only if the job failed with this code (recover).
    from_error_code: str | None = None
    # Artifact rows the move writes (a success: every item; a storage failure: the items stored).
    artifacts: tuple[dict[str, Any], ...] = ()
    # The pending uploads this move settles (confirmed by the artifact rows, or never written).
    settles_uploads: tuple[str, ...] = ()
    # The job's record (how it ran), written with the move when there is one.
    record: dict[str, Any] | None = None
    # What the status event says besides the status.
    note: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.source, self.target) not in LEGAL:
            raise ValueError(f"no such move: {self.source.value} → {self.target.value}")
        if self.target is RUNNING and not self.claimant:
            raise ValueError("a claim names its claimant")
        if self.target is FAILED and self.failure is None:
            raise ValueError("a failure carries its code and message")
        if self.source is RUNNING and self.fence is None and self.target is not CANCELED:
            # A cancel comes from a client, not the holder: it takes the job from whoever holds it,
            # and the holder learns of it when its next fenced write is refused.
            raise ValueError("a move out of running names the holder it expects (a fence)")


def claim(job_id: str, worker_id: str, seed: int | None = None) -> Move:
    return Move(job_id, QUEUED, RUNNING, claimant=worker_id, seed=seed)


def succeed(fence: Fence, artifacts: list[dict[str, Any]], timings: dict[str, float],
            record: dict[str, Any] | None = None) -> Move:
    keys = tuple(a["s3_key"] for a in artifacts)
    return Move(fence.job_id, RUNNING, SUCCEEDED, fence=fence, artifacts=tuple(artifacts),
                settles_uploads=keys, record=record, note={"s3_key": keys[0], "timings": timings})


def fail_storing(fence: Fence, failure: JobFailure, stored: list[dict[str, Any]], unwritten: list[str],
                 record: dict[str, Any] | None) -> Move:
    """Some items of a batch did not store: failed for good (storage_error is not transient), with
    the items that did store kept as artifacts, and the uploads of those that didn't settled as
    never written (each waits in the worker's spool, or is lost)."""
    return Move(fence.job_id, RUNNING, FAILED, fence=fence, failure=failure, artifacts=tuple(stored),
                settles_uploads=tuple(a["s3_key"] for a in stored) + tuple(unwritten), record=record)


def complete(fence: Fence, note: dict[str, Any]) -> Move:
    """A job that makes no artifact (a model download) succeeded; ``note`` says what it made."""
    return Move(fence.job_id, RUNNING, SUCCEEDED, fence=fence, note=note)


def hand_back(fence: Fence, reason: str) -> Move:
    """The holder gives the job back (a graceful stop past its grace period): not the job's fault."""
    return Move(fence.job_id, RUNNING, QUEUED, fence=fence, note={"reason": reason})


def cancel(job_id: str, source: JobStatus, reason: str | None = None) -> Move:
    return Move(job_id, source, CANCELED, note={"reason": reason} if reason else {})


def recover(job_id: str, artifacts: list[dict[str, Any]]) -> Move:
    """The spooled images of a storage_error job are uploaded, and with them every item is
    stored: the job succeeds. (While items are still missing, the service records the uploaded
    ones without a move: the job stays failed.)"""
    return Move(job_id, FAILED, SUCCEEDED, from_error_code="storage_error", artifacts=tuple(artifacts),
                note={"s3_key": artifacts[0]["s3_key"], "recovered_from": "storage_error"})


def after_failure(fence: Fence, failure: JobFailure, max_attempts: int, *,
                  silent_for_s: float | None = None) -> Move:
    """The one retry rule: a transient failure with attempts left goes back to the queue; any
    other failure, or the last attempt's, is final. Used by the worker for its own failures and
    by the reaper (``silent_for_s``) for a holder that went silent."""
    if failure.code in TRANSIENT_CODES and fence.attempt < max_attempts:
        return Move(fence.job_id, RUNNING, QUEUED, fence=fence, silent_for_s=silent_for_s,
                    note={"reason": failure.code, "worker_id": fence.worker_id,
                          "attempt": fence.attempt})
    return Move(fence.job_id, RUNNING, FAILED, fence=fence, silent_for_s=silent_for_s,
                failure=failure)
