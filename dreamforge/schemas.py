"""The wire vocabulary: one request model for the CLI and the API, one job view for both."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dreamforge.errors import InvalidRequest

MAX_SEED = 4_294_967_295


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed)


class GenerateRequest(BaseModel):
    """A request for one image. Unknown fields are refused so typos surface."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "generate", "prompt": "an old-growth forest at dawn", "width": 1024,
                 "height": 1024, "steps": 30, "guidance": 7.0, "format": "png"}
            ]
        },
    )

    type: Literal["generate"] = "generate"
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    format: Literal["png", "jpeg", "webp"] = "png"
    count: Literal[1] = Field(default=1, description="Images per job; v1 makes exactly one.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "multiple_of":
            message = f"{field} must be a multiple of {err['ctx']['multiple_of']}"
        elif err["type"] == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif err["type"] == "literal_error" and field == "count":
            message = "count must be 1 in v1"
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
    url: str | None = Field(default=None, description="A presigned GET URL (S3) or a file:// URL (local store).")
    path: str | None = Field(default=None, description="The file's path, for the local store.")


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
