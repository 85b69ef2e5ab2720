"""The wire vocabulary: one request model for the CLI and the API, one job view for both."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dreamforge.errors import InvalidRequest
from dreamforge.status import JobStatus
from dreamforge.text import cut

__all__ = ["GenerateRequest", "JobStatus", "JobView", "parse_request"]

MAX_SEED = 4_294_967_295
# The whitespace of ECMAScript's \s, spelled out so that the schema's pattern means the same to a
# JavaScript client, to Python's re and to the server (Python's str.strip also strips \x1c-\x1f).
_SPACE = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# A prompt: no NUL (PostgreSQL text can't hold one), and something besides whitespace.
PROMPT_PATTERN = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"
NO_NUL_PATTERN = "^[^\\x00]*$"
_PROMPT_RE = re.compile(PROMPT_PATTERN)
_NO_NUL_RE = re.compile(NO_NUL_PATTERN)


class GenerateRequest(BaseModel):
    """A request for one image. Unknown fields are refused so typos surface."""

    # strict: on the wire, `true`, `"64"` and `64.0` are not integers (the CLI parses its own
    # arguments and passes ints).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"type": "generate", "prompt": "an old-growth forest at dawn", "width": 1024,
                 "height": 1024, "steps": 30, "guidance": 7.0, "format": "png"}
            ]
        },
    )

    type: Literal["generate"] = "generate"
    prompt: str = Field(min_length=1, max_length=2000, json_schema_extra={"pattern": PROMPT_PATTERN},
                        description="Not blank (whitespace only is refused); no NUL character.")
    negative_prompt: str | None = Field(default=None, max_length=2000,
                                        json_schema_extra={"pattern": NO_NUL_PATTERN})
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    format: Literal["png", "jpeg", "webp"] = "png"
    count: Literal[1] = Field(default=1, description="Images per job; v1 makes exactly one.")
    # -- webhooks (issue #16): checked again by the service (the address rule needs settings) ----
    webhook: str | None = Field(
        default=None, max_length=2048, json_schema_extra={"format": "uri", "pattern": "^https?://[^@/]+"},
        description="An http(s) URL that receives this job's events, signed per Standard Webhooks. "
        "Refused where the server has no DF_WEBHOOK_SECRET, and on a private, loopback or link-local "
        "address (after resolving the name).")
    webhook_events: list[Literal["running", "progress", "succeeded", "failed", "canceled"]] | None = Field(
        default=None, min_length=1, max_length=5,
        description="Which events the webhook receives; unset: succeeded, failed and canceled.")

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        from dreamforge.webhooks.targets import check_url

        if value is not None:
            check_url(value)  # TargetRefused is a ValueError: its message becomes the field's
        return value

    @field_validator("webhook_events")
    @classmethod
    def _events_need_a_webhook(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("webhook") is None:
            raise ValueError("webhook_events needs webhook")
        return list(dict.fromkeys(value)) if value is not None else None

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("prompt must not contain a NUL character")
        if not _PROMPT_RE.match(value):
            raise ValueError("prompt must not be blank")
        return value

    @field_validator("width", "height", "steps", "seed", "count", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        """JSON Schema's integer is a number without a fraction, so 64.0 is 64 (a generated client
        may send it); a bool is not a number, and True == 1 only in Python."""
        if isinstance(value, bool):
            raise ValueError("input should be an integer, not a boolean")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("negative_prompt")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and not _NO_NUL_RE.match(value):
            raise ValueError("negative_prompt must not contain a NUL character")
        return value


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        field = cut(".".join(str(p) for p in err["loc"]) or "body", 100)
        message = err["msg"]
        if err["type"] == "multiple_of":
            message = f"{field} must be a multiple of {err['ctx']['multiple_of']}"
        elif err["type"] == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif err["type"] == "literal_error" and field == "count":
            message = "count must be 1 in v1"
        elif err["type"] == "value_error":
            message = str(err["ctx"]["error"])
        elif field != "body":
            message = f"{field}: {message[0].lower()}{message[1:]}"
        out.append({"field": field, "message": message})
    return out


def parse_request(data: Any) -> GenerateRequest:
    """Validate untrusted input; raise InvalidRequest whose message names the first bad field."""
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as exc:
        details = field_errors(exc)
        raise InvalidRequest(details[0]["message"], details=details) from None


class Progress(BaseModel):
    current: int
    total: int


class StepView(BaseModel):
    name: str
    status: JobStatus
    progress: Progress
    seed: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Summary(BaseModel):
    count: int
    completed: int


class ArtifactView(BaseModel):
    item_index: int
    seed: int
    width: int
    height: int
    format: str
    s3_key: str
    size_bytes: int
    sha256: str
    url: str | None = Field(default=None, description="A presigned GET URL (S3); over HTTP, none for the "
                                                      "local store.")
    path: str | None = Field(default=None, description="The file's path, for the local store.")
    content_url: str | None = Field(default=None, description="The image through the API (any store): "
                                                              "/v1/jobs/{id}/artifacts/{item}/content.")
    thumbnail_url: str | None = Field(default=None, description="A WebP of at most 256 pixels a side.")


class JobError(BaseModel):
    code: str
    message: str
    details: Any = None


class JobView(BaseModel):
    id: str
    type: str
    status: JobStatus
    params: dict[str, Any]
    steps: list[StepView]
    summary: Summary
    artifacts: list[ArtifactView]
    error: JobError | None = None
    attempts: int = 0
    correlation_id: str | None = None
    retry_of: str | None = Field(default=None, description="The failed or canceled job this one retries.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None
    correlation_id: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# -- the watch, list and fetch endpoints (issue #13) ---------------------------------------------

class JobPageView(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page; "
                                                              "null on the last page.")


class EventView(BaseModel):
    id: int = Field(description="Increases with every event of every job; SSE's id:.")
    job_id: str
    at: datetime
    kind: Literal["status", "progress", "log", "error"]
    payload: dict[str, Any]
    job_type: str | None = Field(default=None, description="Set on /v1/events.")


class EventPage(BaseModel):
    events: list[EventView]
    next_after: int = Field(description="Pass as ?after= for the events after these (the `after` "
                                        "given when there were none).")


class LogLine(BaseModel):
    id: int = Field(description="The event id the line came from; ?after= and Last-Event-ID take it.")
    at: datetime
    level: str
    message: str


class LogPage(BaseModel):
    lines: list[LogLine]
    next_after: int


class ArtifactList(BaseModel):
    artifacts: list[ArtifactView]
