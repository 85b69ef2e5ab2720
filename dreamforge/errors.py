"""The DreamForge error tree. Doors translate these; nothing above a backend sees a driver's error.

DreamForgeError
├── ConfigError             a malformed setting (exit 2; the server refuses to start)
├── InvalidRequest          bad input (422 / exit 2)
├── JobNotFound             unknown job id (404 / exit 1)
├── IdempotencyConflict     same key, other body (409)
├── JobStateError           the job is not in a state that allows this (409; e.g. job_not_cancelable)
├── BackendUnavailable      job store or queue unreachable (503)
├── StorageError            artifact store failed (job code storage_error)
└── RunnerError             generation failed; `code` is the job's error code
"""

from __future__ import annotations

from typing import Any


class DreamForgeError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class ConfigError(DreamForgeError):
    """A setting that can't work (a backend URL with an unknown scheme, say). The message names
    the setting."""

    code = "config_error"


class InvalidRequest(DreamForgeError):
    code = "validation_error"


class JobNotFound(DreamForgeError):
    code = "not_found"


class IdempotencyConflict(DreamForgeError):
    code = "idempotency_conflict"


class JobStateError(DreamForgeError):
    code = "job_state_conflict"


class BackendUnavailable(DreamForgeError):
    code = "service_unavailable"


class StorageError(DreamForgeError):
    code = "storage_error"


class RunnerError(DreamForgeError):
    """A generation failure. Codes: model_not_found, model_invalid, runner_crashed,
    gpu_out_of_memory, non_finite_output, runner_error."""

    code = "runner_error"
