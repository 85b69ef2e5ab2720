"""The DreamForge error tree. Doors translate these; nothing above a backend sees a driver's error.

DreamForgeError
├── ConfigError             a malformed setting (exit 2; the server refuses to start)
├── InvalidRequest          bad input (422 / exit 2)
├── JobNotFound             unknown job id (404 / exit 1)
├── IdempotencyConflict     same key, other body (409)
├── JobStateError           the job is not in a state that allows this (409; e.g. job_not_cancelable)
├── BackendUnavailable      job store or queue unreachable (503)
├── StorageError            artifact store failed (job code storage_error)
├── RunnerError             generation failed; `code` is the job's error code
├── ModelNotFound           unknown model name (404; code unknown_model)
├── ModelRejected           not an SDXL checkpoint, or a corrupt one (an InvalidRequest: 422 / exit 2)
├── ImageRejected           an input image refused (an InvalidRequest: 422, or 413 / 415 by its code)
├── ModelConflict           the model's name or file is taken (409)
└── DownloadFailed          a model download failed; `code` says how
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
    gpu_out_of_memory, non_finite_output, runner_error; gpu_out_of_memory_predicted (refused
    before it ran: the estimate of its peak memory did not fit the GPU's free memory; details
    carry the bytes), option_unsupported (a DF_ option this machine can't do: DF_FP8,
    DF_COMPILE_MODE, DF_VAE_DTYPE, DF_ATTENTION_BACKEND)."""

    code = "runner_error"


# -- the model registry (dreamforge/registry) ----------------------------------------------------

class ModelNotFound(DreamForgeError):
    """No registered model has this name (404; at submit time a job's door turns it into 422)."""

    code = "unknown_model"


class ModelRejected(InvalidRequest):
    """The file is not a model DreamForge can load: not an SDXL base checkpoint or SDXL LoRA
    (``not_sdxl``), or truncated or corrupt (``model_invalid``). The message says what it looks
    like. Also a registered model of the wrong kind for its place: a LoRA named as a job's model or
    the default (``not_a_checkpoint``), a checkpoint named as a LoRA (``not_a_lora``)."""

    code = "not_sdxl"


class ModelConflict(DreamForgeError):
    """The name, or the file a download would write, is taken (409)."""

    code = "model_exists"


class DownloadFailed(DreamForgeError):
    """A model download failed. Codes: download_failed, download_interrupted (the connection
    broke: trying again resumes), checksum_mismatch, insufficient_disk."""

    code = "download_failed"


# -- input images (dreamforge/inputs.py) ------------------------------------------------------------

class ImageRejected(InvalidRequest):
    """An input image DreamForge won't take. Codes: unsupported_media_type (not PNG, JPEG or
    WebP: 415), payload_too_large (over DF_UPLOAD_MAX_BYTES: 413), image_too_large (more pixels
    than allowed, a decompression bomb included), image_invalid (truncated or corrupt),
    mask_size_mismatch, unknown_input (no such upload or artifact); these last four 422."""

    code = "image_invalid"
