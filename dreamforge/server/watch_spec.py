"""The OpenAPI paths of listing, cancel, events, logs and artifacts (built beside openapi.py,
from the same models the routes use)."""

from __future__ import annotations

from typing import Any

from dreamforge.schemas import JobStatus
from dreamforge.server.openapi import (
    BAD_QUERY,
    EXAMPLE_JOB,
    JOB_ID,
    JOB_ID_PARAM,
    NOT_FOUND,
    REF,
    REQUEST_ID,
    UNAUTHORIZED,
    UNAVAILABLE,
    VISIBLE_PATTERN,
    _error,
    _job,
)
from dreamforge.server.query import MAX_EVENT_ID, MAX_LIMIT, THUMB_SIZES, TYPE_PATTERN

EVENT = {"id": 42, "job_id": JOB_ID, "at": "2026-01-01T12:00:01Z", "kind": "progress",
         "payload": {"current": 12, "total": 24}, "job_type": None}
SSE_EXAMPLE = ('retry: 1000\n\nid: 42\nevent: progress\ndata: {"id":42,"job_id":"…","at":"2026-01-01T12:00:01Z",'
               '"kind":"progress","payload":{"current":12,"total":24},"job_type":null}\n\n: keep-alive\n\n')
SSE = {"text/event-stream": {
    "schema": {"type": "string", "description": "Server-Sent Events: one event per job event, `id:` the "
                                                "event id, `event:` its kind, `data:` the event as JSON; "
                                                "a `: keep-alive` comment every 15 s of quiet."},
    "example": SSE_EXAMPLE}}


def _json(model: str, example: Any) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model)}, "example": example}}


def _q(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description,
            **extra}


STATUSES = {"type": "array", "items": {"type": "string", "enum": [s.value for s in JobStatus]}}
TYPE = {"type": "string", "pattern": TYPE_PATTERN}
LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
AFTER = _q("after", {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID, "default": 0},
           "Only events after this event id (JSON pages: pass the last page's next_after).")
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                 "description": "SSE: resume after this event id (an EventSource sends it when it "
                                "reconnects); wins over `after`. A non-negative integer, else 422."}
ACCEPT_NOTE = ("JSON by default; with `Accept: text/event-stream`, Server-Sent Events that end after the "
               "job's terminal event.")


def watch_paths() -> dict[str, dict[str, Any]]:
    job = [REQUEST_ID, JOB_ID_PARAM]
    base = {"401": UNAUTHORIZED, "422": BAD_QUERY, "503": UNAVAILABLE}
    job_base = {**base, "404": NOT_FOUND}
    return {
        "/v1/jobs": {"get": {
            "operationId": "listJobs", "summary": "Jobs, newest first, a page at a time (keyset cursor)",
            "description": "Stable while jobs arrive: following next_cursor sees no job twice and skips none.",
            "parameters": [
                REQUEST_ID,
                _q("status", STATUSES, "One or more statuses (?status=queued&status=running).",
                   style="form", explode=True),
                _q("type", TYPE, "The job type (generate)."),
                _q("created_after", {"type": "string", "format": "date-time"},
                   "Jobs created after this time (RFC 3339; no offset means UTC)."),
                _q("created_before", {"type": "string", "format": "date-time"},
                   "Jobs created before this time."),
                _q("code", {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
                   "Only jobs that failed with this error code (storage_error, worker_lost, …)."),
                _q("cursor", {"type": "string", "maxLength": 500}, "next_cursor of the previous page."),
                _q("limit", {**LIMIT, "default": 20}, "Jobs per page.")],
            "responses": {"200": {"description": "A page of jobs",
                                  "content": _json("JobPageView", {"jobs": [EXAMPLE_JOB], "next_cursor": None})},
                          **base}}},
        "/v1/jobs/{job_id}/cancel": {"post": {
            "operationId": "cancelJob", "summary": "Cancel a queued or running job",
            "description": "A queued job is canceled at once; a running one stops at its next denoising "
                           "step and stores nothing. Canceling again gives the same view.",
            "parameters": job,
            "responses": {"200": _job("The canceled job", {**EXAMPLE_JOB, "status": "canceled",
                                                           "artifacts": [], "summary": {"count": 1,
                                                                                        "completed": 0}}),
                          **job_base,
                          "409": _error("The job had succeeded or failed", "job_not_cancelable",
                                        "job … has succeeded and can't be canceled")}}},
        "/v1/jobs/{job_id}/retry": {"post": {
            "operationId": "retryJob", "summary": "Run a failed or canceled job again, as a new job",
            "description": "The new job has the same parameters (its recorded seed included, so the same "
                           "image) and names the job it retries in `retry_of`; the old job stays as it "
                           "ended. Only failed and canceled jobs are retried.",
            "parameters": [*job, {
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "The same key again (a client retrying after a lost reply) returns the same "
                               "new job instead of making another; a key names one retry of this job.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": VISIBLE_PATTERN}}],
            "responses": {"202": _job("The new job, queued", {**EXAMPLE_JOB, "status": "queued",
                                                             "retry_of": EXAMPLE_JOB["id"], "artifacts": [],
                                                             "summary": {"count": 1, "completed": 0}}),
                          **job_base,
                          "409": _error("The job is queued, running or succeeded", "job_not_retryable",
                                        "job … has succeeded; only failed or canceled jobs are retried")}}},
        "/v1/jobs/{job_id}/events": {"get": {
            "operationId": "jobEvents", "summary": "The job's events, oldest first",
            "description": ACCEPT_NOTE,
            "parameters": [*job, AFTER, _q("limit", {**LIMIT, "default": MAX_LIMIT}, "Events per page (JSON)."),
                           LAST_EVENT_ID],
            "responses": {"200": {"description": "Events", "content": {
                **_json("EventPage", {"events": [EVENT], "next_after": 42}), **SSE}}, **job_base}}},
        "/v1/jobs/{job_id}/logs": {"get": {
            "operationId": "jobLogs", "summary": "The job's own log lines",
            "description": "Plain text by default (one line each: time, level, message with control "
                           "characters escaped); `Accept: application/json` for JSON; `Accept: "
                           "text/event-stream` follows them (`event: log`) until the job ends.",
            "parameters": [*job, AFTER, _q("limit", {**LIMIT, "default": MAX_LIMIT}, "Lines at most."),
                           LAST_EVENT_ID],
            "responses": {"200": {"description": "Log lines", "content": {
                "text/plain": {"schema": {"type": "string"},
                               "example": "2026-01-01T12:00:00+00:00 INFO    status running\n"},
                **_json("LogPage", {"lines": [{"id": 2, "at": "2026-01-01T12:00:00Z", "level": "info",
                                               "message": "status running"}], "next_after": 2}),
                **SSE}}, **job_base}}},
        "/v1/jobs/{job_id}/artifacts": {"get": {
            "operationId": "jobArtifacts", "summary": "The job's stored images",
            "parameters": job,
            "responses": {"200": {"description": "Artifacts", "content": _json(
                "ArtifactList", {"artifacts": EXAMPLE_JOB["artifacts"]})}, **job_base}}},
        "/v1/jobs/{job_id}/artifacts/{item}/content": {"get": {
            "operationId": "artifactContent", "summary": "One image's bytes, from whichever store holds it",
            "description": "ETag is the sha256; Range (one range) gives 206; If-None-Match gives 304. "
                           "With S3, 302 to a presigned URL unless ?redirect=false.",
            "parameters": [
                *job,
                {"name": "item", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                _q("redirect", {"type": "boolean", "default": True},
                   "false: the bytes through the API even when S3 holds them."),
                _q("thumb", {"type": "integer", "enum": list(THUMB_SIZES)},
                   "A WebP of at most this many pixels a side, made once and kept."),
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "bytes=a-b, bytes=a- or bytes=-n; several ranges get the whole body."}],
            "responses": {
                "200": {"description": "The image", "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/webp")}},
                "206": {"description": "The requested bytes", "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/webp")}},
                "302": {"description": "S3: a presigned URL in Location",
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                "304": {"description": "The client's copy is current"},
                **job_base,
                "404": _error("No such job or artifact", "artifact_not_found", "job … has no artifact 1"),
                "416": _error("The range lies outside the image (Content-Range: bytes */size)",
                              "range_not_satisfiable", "range bytes=9999- is outside the 4952 bytes"),
                "503": _error("The job store or artifact store is unreachable", "storage_unavailable",
                              "the artifact store could not be read; try again")}}},
        "/v1/events": {"get": {
            "operationId": "allEvents", "summary": "Every job's events, for dashboards",
            "description": "JSON pages by default; `Accept: text/event-stream` follows them (from now, "
                           "or after Last-Event-ID / `after`). `status` keeps only the status events "
                           "that move a job into one of those statuses; `type` one job type's events.",
            "parameters": [REQUEST_ID, AFTER,
                           _q("limit", {**LIMIT, "default": MAX_LIMIT}, "Events scanned per page (JSON)."),
                           _q("status", STATUSES, "Statuses moved into.", style="form", explode=True),
                           _q("type", TYPE, "The job type."), LAST_EVENT_ID],
            "responses": {"200": {"description": "Events", "content": {
                **_json("EventPage", {"events": [{**EVENT, "job_type": "generate"}], "next_after": 42}),
                **SSE}}, **base}}},
    }
