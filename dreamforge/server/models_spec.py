"""The OpenAPI paths of /v1/models (built beside openapi.py, from the models the routes use)."""

from __future__ import annotations

from typing import Any

from dreamforge.server.openapi import (
    BAD_QUERY,
    EXAMPLE_QUEUED,
    REF,
    REQUEST_ID,
    UNAUTHORIZED,
    UNAVAILABLE,
    VISIBLE_PATTERN,
    _error,
    _job,
)

SHA = "5f3a0c…"
EXAMPLE_MODEL = {"id": "sdxl-base", "object": "model", "created": 1767268800, "owned_by": "dreamforge",
                 "kind": "sdxl_checkpoint", "format": "single_file",
                 "source": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                           "sd_xl_base_1.0.safetensors",
                 "path": "sdxl-base.safetensors", "sha256": SHA, "size_bytes": 6938078334, "is_default": True,
                 "downloaded": True, "registered": True,
                 "details": {"looks_like": "an SDXL base checkpoint", "tensors": 2515, "dtypes": {"F16": 2515}},
                 "added_at": "2026-01-01T12:00:00Z", "last_used_at": None, "verified_at": None}
EXAMPLE_DOWNLOAD = {"source": EXAMPLE_MODEL["source"], "name": "sdxl-base"}
EXAMPLE_DOWNLOAD_JOB = {
    **EXAMPLE_QUEUED, "type": "download",
    "params": {"type": "download", **EXAMPLE_DOWNLOAD, "sha256": None, "default": False},
    "steps": [{"name": "download", "status": "queued", "progress": {"current": 0, "total": 0},
               "seed": None, "started_at": None, "finished_at": None}]}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "A registered name; `default` is the default model unless a model has that name."}


def _json(model: str, example: Any) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model)}, "example": example}}


def models_paths() -> dict[str, dict[str, Any]]:
    base = {"401": UNAUTHORIZED, "422": BAD_QUERY, "503": UNAVAILABLE}
    return {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The registered models, in the shape OpenAI's models.list() reads",
                "description": "While no registered model is the default, the model the server's settings "
                               "name (DF_GENERATE_MODEL_PATH, or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) comes "
                               "first as `default`, with `registered: false`.",
                "parameters": [REQUEST_ID],
                "responses": {"200": {"description": "The models",
                                      "content": _json("ModelList", {"object": "list", "data": [EXAMPLE_MODEL]})},
                              **base},
            },
            "post": {
                "operationId": "downloadModel",
                "summary": "Download a single-file SDXL checkpoint or SDXL LoRA and register it (a job of type "
                           "download)",
                "description": "The job's step `download` counts MiB. The worker resumes an interrupted "
                               "download, checks the sha256 when given and the file's header, and registers "
                               "the model only when all of it arrived sound. Job error codes: "
                               "download_failed, download_interrupted (tried again: it resumes), "
                               "checksum_mismatch, insufficient_disk, not_sdxl, model_invalid, model_exists.",
                "parameters": [REQUEST_ID, {
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "The same key with the same body returns the first job; with another "
                                   "body, 409.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": VISIBLE_PATTERN}}],
                "requestBody": {"required": True, "content": _json("DownloadRequest", EXAMPLE_DOWNLOAD)},
                "responses": {
                    "202": {**_job("Accepted: the download job is queued", EXAMPLE_DOWNLOAD_JOB),
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "description": "/v1/jobs/{id}"}},
                            "links": {"GetJob": {"operationId": "getJob",
                                                 "parameters": {"job_id": "$response.body#/id"},
                                                 "description": "The download job just submitted"}}},
                    "400": _error("The body is not JSON", "invalid_json", "request body is not valid JSON"),
                    "409": _error("The name is registered already, or its file exists; or an Idempotency-Key "
                                  "reused with another body", "model_exists",
                                  "a model named 'sdxl-base' is registered already"),
                    "413": _error("Body over 64 KiB", "payload_too_large", "request body is over 65536 bytes"),
                    "415": _error("Not application/json", "unsupported_media_type",
                                  "Content-Type must be application/json"),
                    **base,
                    "422": _error("A field is malformed or unknown; a plain http:// URL (unless the server "
                                  "allows it) or one that carries a credential", "validation_error",
                                  "source: …"),
                },
            },
        },
        "/v1/models/{name}": {"get": {
            "operationId": "getModel", "summary": "One model, as listed",
            "parameters": [REQUEST_ID, NAME_PARAM],
            "responses": {"200": {"description": "The model", "content": _json("ModelObject", EXAMPLE_MODEL)},
                          "404": _error("No model has this name", "unknown_model",
                                        "no model named '…' is registered (df models list)"),
                          **base},
        }},
    }
