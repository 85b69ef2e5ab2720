"""The OpenAPI document, built from the same pydantic models the routes use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from dreamforge import __version__
from dreamforge.schemas import (
    ArtifactList,
    ErrorEnvelope,
    EventPage,
    GenerateRequest,
    JobPageView,
    JobView,
    LogPage,
    RerunRequest,
)

SPEC_PATH = Path("docs/openapi/openapi.v1.json")
REF = "#/components/schemas/{model}"

EXAMPLE_IMG2IMG = {"type": "img2img", "prompt": "the same street in snow", "strength": 0.6, "steps": 30,
                   "init_image": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                   "loras": [{"name": "detail-xl", "weight": 0.8}]}
EXAMPLE_INPAINT = {"type": "inpaint", "prompt": "a red door",
                   "init_image": {"job_id": "3f0c1b7e-8a52-4c3e-9d0f-2b6a7c1e5d44", "item": 0},
                   "mask_image": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}
EXAMPLE_REQUEST = {"type": "generate", "prompt": "an old-growth forest at dawn", "width": 1024,
                   "height": 1024, "steps": 24, "guidance": 7.0, "format": "png"}
JOB_ID = "8b0f7a52-3c1e-4d7a-9a51-2d0c8e7f1a10"
EXAMPLE_QUEUED: dict[str, Any] = {
    "id": JOB_ID, "type": "generate", "status": "queued",
    "params": {**EXAMPLE_REQUEST, "negative_prompt": None, "seed": None, "count": 1, "scheduler": None},
    "steps": [{"name": "generate", "status": "queued", "progress": {"current": 0, "total": 24},
               "seed": None, "started_at": None, "finished_at": None}],
    "summary": {"count": 1, "completed": 0}, "artifacts": [],
    "error": None, "attempts": 0, "correlation_id": "c0ffee", "created_at": "2026-01-01T12:00:00Z",
    "started_at": None, "finished_at": None}
EXAMPLE_JOB = {
    **EXAMPLE_QUEUED, "status": "succeeded",
    "params": {**EXAMPLE_QUEUED["params"], "seed": 42},
    "steps": [{"name": "generate", "status": "succeeded", "progress": {"current": 24, "total": 24},
               "seed": 42, "started_at": "2026-01-01T12:00:00Z", "finished_at": "2026-01-01T12:00:04Z"}],
    "summary": {"count": 1, "completed": 1},
    "artifacts": [{"item_index": 0, "seed": 42, "width": 1024, "height": 1024, "format": "png",
                   "s3_key": f"dreamforge/default/jobs/{JOB_ID}/generate/20260101T120004Z_0_1024x1024_42.png",
                   "size_bytes": 1534712, "sha256": "9f2c…", "url": "https://…", "path": None}],
    "record": {"runner": "sdxl", "model": {"name": "epicrealismXL_working", "sha256": "6ce0161689…",
                                           "kind": "single_file"},
               "scheduler": {"name": "euler", "class": "EulerDiscreteScheduler",
                             "config": {"timestep_spacing": "leading", "use_karras_sigmas": False, "…": "…"}},
               "dtype": "float16", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
               "diffusers": "0.42.1", "compiled": False, "batches": [1], "dreamforge": __version__,
               "seeds": [42]},
    "attempts": 1, "started_at": "2026-01-01T12:00:00Z", "finished_at": "2026-01-01T12:00:04Z"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
VISIBLE_PATTERN = "^[!-~]+$"


def _error(description: str, code: str, message: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": REF.format(model="ErrorEnvelope")},
        "example": {"error": {"code": code, "message": message, "details": None,
                              "correlation_id": "c0ffee"}}}}}


def _job(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": REF.format(model="JobView")}, "example": example}}}


REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False,
              "description": "Any value is accepted. One of 1-255 visible ASCII characters (! to ~) is "
                             "taken; anything else (empty, longer, spaces, non-ASCII) is replaced by a "
                             "made id. The id in use is echoed in the response's X-Request-ID, stored as "
                             "the job's correlation id and carried into worker logs.",
              "schema": {"type": "string"}}
UNAUTHORIZED = _error("Missing or wrong bearer token (when DF_API_TOKEN is set)", "unauthorized",
                      "a valid bearer token is required")
JOB_ID_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = _error("No such job (the id is cut to 100 characters when echoed)", "not_found",
                   "no job with id '…'")
BAD_QUERY = _error("A query parameter or header is malformed, out of bounds or unknown",
                   "validation_error", "limit: input should be less than or equal to 1000")
UNAVAILABLE = _error("The job store or the queue is unreachable", "service_unavailable",
                     "job store unreachable")

STATUS_SCHEMA = {
    "type": "object", "required": ["jobs", "queue_depth", "workers"],
    "properties": {
        "jobs": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                 "description": "Jobs by status, every status named."},
        "queue_depth": {"type": "integer", "minimum": 0, "description": "Messages waiting in the queue."},
        "workers": {"type": "array", "description": "Workers with a recent heartbeat.", "items": {
            "type": "object", "required": ["id", "hostname", "pid", "heartbeat_at"],
            "properties": {"id": {"type": "string"}, "hostname": {"type": "string"}, "pid": {"type": "integer"},
                           "heartbeat_at": {"type": "string", "format": "date-time"}}}}}}
STATUS_EXAMPLE = {"jobs": {"queued": 2, "running": 1, "succeeded": 40, "failed": 1, "canceled": 0},
                  "queue_depth": 2, "workers": [{"id": "gpu-box-1234-0", "hostname": "gpu-box", "pid": 1234,
                                                 "heartbeat_at": "2026-01-01T12:00:00+00:00"}]}


def build_spec(token_required: bool = True) -> dict[str, Any]:
    """The v1 contract. ``token_required`` False describes a server without DF_API_TOKEN (the
    bearer token then becomes optional); the committed document is the deployed shape."""
    from dreamforge.registry.jobs import DownloadRequest
    from dreamforge.registry.views import ModelList, ModelObject
    from dreamforge.server import openai_images
    from dreamforge.server.models_spec import models_paths
    from dreamforge.server.uploads_spec import uploads_paths
    from dreamforge.server.watch_spec import watch_paths
    from dreamforge.webhooks import spec as webhooks_spec

    _, defs = models_json_schema([(GenerateRequest, "validation"), (JobView, "serialization"),
                                  (ErrorEnvelope, "serialization"), (JobPageView, "serialization"),
                                  (EventPage, "serialization"), (LogPage, "serialization"),
                                  (ArtifactList, "serialization"), (DownloadRequest, "validation"),
                                  (ModelObject, "serialization"), (ModelList, "serialization"),
                                  (RerunRequest, "validation")],
                                 ref_template=REF)
    paths = {
        "/v1/jobs": {
            "post": {
                "operationId": "createJob", "summary": "Submit a job: generate, img2img or inpaint",
                "parameters": [REQUEST_ID, {
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "The same key with the same body returns the first job; with "
                                   "another body, 409.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                               "pattern": VISIBLE_PATTERN}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": REF.format(model="GenerateRequest")}, "examples": {
                        "generate": {"value": EXAMPLE_REQUEST},
                        "img2img": {"summary": "From an upload (POST /v1/uploads), with a LoRA",
                                    "value": EXAMPLE_IMG2IMG},
                        "inpaint": {"summary": "Repaint the white part of a mask on an earlier job's image",
                                    "value": EXAMPLE_INPAINT}}}}},
                "responses": {
                    "202": {**_job("Accepted: the job is queued", EXAMPLE_QUEUED),
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "description": "/v1/jobs/{id}"}},
                            "links": {"GetJob": {"operationId": "getJob",
                                                 "parameters": {"job_id": "$response.body#/id"},
                                                 "description": "The job just submitted"},
                                      "CancelJob": {"operationId": "cancelJob",
                                                    "parameters": {"job_id": "$response.body#/id"},
                                                    "description": "Cancel the job just submitted"}}},
                    "400": _error("The body is not JSON", "invalid_json", "request body is not valid JSON"),
                    "401": UNAUTHORIZED,
                    "409": _error("Idempotency-Key reused with another body", "idempotency_conflict",
                                  "this Idempotency-Key was already used with a different request body"),
                    "413": _error("Body over 64 KiB", "payload_too_large",
                                  "request body is over 65536 bytes"),
                    "415": _error("Not application/json", "unsupported_media_type",
                                  "Content-Type must be application/json"),
                    "422": _error("A field is out of bounds or unknown", "validation_error",
                                  "width must be a multiple of 8"),
                    "503": UNAVAILABLE,
                },
            },
            "get": watch_paths()["/v1/jobs"]["get"],
        },
        "/v1/jobs/{job_id}": {"get": {
            "operationId": "getJob", "summary": "One job: status, steps, progress, artifacts, error",
            "parameters": [REQUEST_ID, JOB_ID_PARAM],
            "responses": {"200": _job("The job", EXAMPLE_JOB), "401": UNAUTHORIZED,
                          "404": NOT_FOUND, "422": BAD_QUERY, "503": UNAVAILABLE},
        }},
        **{path: ops for path, ops in watch_paths().items() if path != "/v1/jobs"},
        "/v1/jobs/{job_id}/rerun": rerun_path(),
        **models_paths(),
        **uploads_paths(),
        "/v1/status": {"get": {
            "operationId": "getStatus", "summary": "Job counts by status, queue depth and live workers",
            "description": "What `df status` shows (`df status --json` prints the same object).",
            "parameters": [REQUEST_ID],
            "responses": {"200": {"description": "The system's state", "content": {"application/json": {
                "schema": STATUS_SCHEMA, "example": STATUS_EXAMPLE}}},
                          "401": UNAUTHORIZED, "422": BAD_QUERY, "503": UNAVAILABLE}}},
        **openai_images.spec_paths(),
        "/healthz": {"get": {"operationId": "healthz", "summary": "The process is up",
                             "responses": {"200": {"description": "Up", "content": {"application/json": {
                                 "schema": {"type": "object", "properties": {"status": {"type": "string"}}},
                                 "example": {"status": "ok"}}}}}}},
        "/readyz": {"get": {"operationId": "readyz",
                            "summary": "The job store, the queue and the artifact store answer",
                            "responses": {"200": {"description": "Ready", "content": {"application/json": {
                                "schema": {"type": "object", "properties": {
                                    "status": {"type": "string"},
                                    "checks": {"type": "object",
                                               "additionalProperties": {"type": "string"}}}},
                                "example": {"status": "ready", "checks": {"job_store": "ok", "queue": "ok",
                                                                          "artifact_store": "ok"}}}}},
                                          "503": _error("A backend is unreachable", "service_unavailable",
                                                        "not ready: queue unreachable")}}},
        "/metrics": {"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (with DF_API_TOKEN set, scrape with the bearer token)",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {
                "schema": {"type": "string"}, "example": "dreamforge_jobs{status=\"queued\"} 0.0\n"}}},
                          "401": UNAUTHORIZED}}},
    }
    _secure(paths, token_required)
    return {
        "openapi": "3.1.0",
        "info": {"title": "DreamForge API", "version": __version__,
                 "description": "Stable Diffusion XL image jobs. Every 4xx and 5xx uses the error envelope."},
        "servers": [{"url": "http://127.0.0.1:8001"}],
        "paths": paths,
        "webhooks": webhooks_spec.webhooks_spec(),
        "security": [],
        "components": {"schemas": {**defs["$defs"], **openai_images.SPEC_SCHEMAS, **webhooks_spec.SCHEMAS},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def rerun_path() -> dict[str, Any]:
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "As for POST /v1/jobs: the same key for the same job and body returns "
                                  "the first rerun; with another, 409.",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": VISIBLE_PATTERN}}
    return {"post": {
        "operationId": "rerunJob", "summary": "Run any job's recorded parameters again, as a new job",
        "description": "The new job has the recorded parameters (seed and scheduler included) and names "
                       "the job in `rerun_of`: on the same machine and model, the same images byte for "
                       "byte. `{\"new_seed\": true}` draws a new seed instead. The body is optional.",
        "parameters": [REQUEST_ID, JOB_ID_PARAM, idempotency],
        "requestBody": {"required": False, "content": {"application/json": {
            "schema": {"$ref": REF.format(model="RerunRequest")}, "example": {"new_seed": False}}}},
        "responses": {
            "202": {**_job("The new job, queued", {**EXAMPLE_QUEUED, "rerun_of": JOB_ID,
                                                   "params": EXAMPLE_JOB["params"]}),
                    "headers": {"Location": {"schema": {"type": "string"}, "description": "/v1/jobs/{id}"}}},
            "400": _error("The body is not JSON", "invalid_json", "request body is not valid JSON"),
            "401": UNAUTHORIZED, "404": NOT_FOUND,
            "409": _error("The job has no seed yet (queued; use new_seed), or the Idempotency-Key was used "
                          "with another request", "job_not_rerunnable", "job … has no seed yet (queued)"),
            "413": _error("Body over 64 KiB", "payload_too_large", "request body is over 65536 bytes"),
            "415": _error("Not application/json", "unsupported_media_type",
                          "Content-Type must be application/json"),
            "422": _error("An unknown field, or new_seed not a boolean", "validation_error",
                          "unknown field 'seed'"),
            "503": UNAVAILABLE}}}


def _secure(paths: dict[str, Any], token_required: bool) -> None:
    """Declare the bearer token on what the server guards: /v1 and /metrics. Health probes stay
    open for orchestrators."""
    for path, operations in paths.items():
        for operation in operations.values():
            if path.startswith("/v1") or path == "/metrics":
                operation["security"] = BEARER if token_required else [*BEARER, {}]
            else:
                operation["security"] = []


def render_spec(token_required: bool = True) -> str:
    return json.dumps(build_spec(token_required), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
