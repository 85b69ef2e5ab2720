"""The wire vocabulary: one request model for the CLI and the API, one job view for both."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from dreamforge.errors import InvalidRequest
from dreamforge.schedulers import NAMES as SCHEDULER_NAMES
from dreamforge.schedulers import SchedulerName
from dreamforge.status import JobStatus
from dreamforge.text import cut

__all__ = ["GenerateRequest", "JobStatus", "JobView", "parse_request"]

MAX_SEED = 4_294_967_295
MAX_COUNT = 8


def item_seed(seed: int, item: int) -> int:
    """Item ``item`` of a batch is seeded ``seed + item``, wrapping past MAX_SEED to 0, so every
    item's seed is a legal seed of its own (a count-1 job with it makes the same picture)."""
    return (seed + item) % (MAX_SEED + 1)
# The whitespace of ECMAScript's \s, spelled out so that the schema's pattern means the same to a
# JavaScript client, to Python's re and to the server (Python's str.strip also strips \x1c-\x1f).
_SPACE = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# A prompt: no NUL (PostgreSQL text can't hold one), and something besides whitespace.
PROMPT_PATTERN = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"
NO_NUL_PATTERN = "^[^\\x00]*$"
_PROMPT_RE = re.compile(PROMPT_PATTERN)
_NO_NUL_RE = re.compile(NO_NUL_PATTERN)


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_LORAS = 4
JOB_TYPES = ("generate", "img2img", "inpaint")
# The strength a job of each type runs at when it names none (A1111's img2img default; inpainting
# repaints the masked part from noise).
DEFAULT_STRENGTH = {"img2img": 0.75, "inpaint": 1.0}


class ArtifactRef(BaseModel):
    """An earlier job's image as an input."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job_id: str = Field(max_length=64)
    item: int = Field(default=0, ge=0, le=MAX_COUNT - 1)


UPLOAD_ID_PATTERN = "^[0-9a-f]{64}$"
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")
UploadId = Annotated[str, Field(json_schema_extra={"pattern": UPLOAD_ID_PATTERN})]
InputRef = UploadId | ArtifactRef
_INPUT_DESCRIPTION = ("An upload's id (POST /v1/uploads: the 64 hex digits of its sha256) or an earlier "
                      "job's image {\"job_id\": ID, \"item\": N}. Resolved when the job is submitted "
                      "(unknown: 422); the job's params keep the resolved sha256 under `inputs`.")


class LoraRequest(BaseModel):
    """A registered LoRA (GET /v1/models, kind sdxl_lora) applied at a weight."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=128, json_schema_extra={"pattern": MODEL_NAME_PATTERN})
    weight: float = Field(default=1.0, ge=-4, le=4, allow_inf_nan=False,
                          description="The LoRA's scale: 0 leaves the model as it is, 1 as trained.")


def denoising_steps(steps: int, strength: float | None) -> int:
    """The denoising steps a job runs: all of them from noise (strength None), else the last
    ``int(steps * strength)`` of the schedule, computed as Diffusers' ``get_timesteps`` does."""
    return steps if strength is None else min(int(steps * strength), steps)


class GenerateRequest(BaseModel):
    """A request for ``count`` images: from a prompt alone (``generate``), from an image
    (``img2img``), or repainting the masked part of one (``inpaint``). Unknown fields are refused
    so typos surface."""

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

    type: Literal["generate", "img2img", "inpaint"] = Field(
        default="generate", description="generate: from the prompt alone; img2img: from init_image; "
                                        "inpaint: repaint init_image where mask_image is white.")
    prompt: str = Field(min_length=1, max_length=2000, json_schema_extra={"pattern": PROMPT_PATTERN},
                        description="Not blank (whitespace only is refused); no NUL character.")
    negative_prompt: str | None = Field(default=None, max_length=2000,
                                        json_schema_extra={"pattern": NO_NUL_PATTERN})
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8,
                       description="img2img and inpaint: the init image's width when unset (see height).")
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8,
                        description="img2img and inpaint: when width and height are unset, the init "
                                    "image's size (scaled down to fit 2048, then rounded down to a multiple "
                                    "of 8); the input (and mask) are resized to the job's size when it differs.")
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    format: Literal["png", "jpeg", "webp"] = "png"
    count: int = Field(default=1, ge=1, le=MAX_COUNT,
                       description="Images in this job. Item i is seeded seed + i (mod 2^32), each "
                                   "with its own generator: a count-1 job with that seed makes it again.")
    model: str | None = Field(
        default=None, max_length=128, json_schema_extra={"pattern": MODEL_NAME_PATTERN},
        description="A model of this server's registry (GET /v1/models); null: the default model. "
                    "An unknown name is refused and nothing is queued.")
    scheduler: SchedulerName | None = Field(
        default=None, description="The sampler, by the names users know (see docs/integration.md); "
                                  "null: the checkpoint's own (Euler for SDXL base).")
    # -- images in and LoRAs (issue #19) ---------------------------------------------------------
    init_image: InputRef | None = Field(
        default=None, validate_default=True,
        description="img2img and inpaint (required there): the image to start from. " + _INPUT_DESCRIPTION)
    mask_image: InputRef | None = Field(
        default=None, validate_default=True,
        description="inpaint (required there): white repaints, black keeps; the init image's size "
                    "(else 422). Outside the mask the output's pixels are the input's, exactly.")
    strength: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False, validate_default=True,
        description="img2img and inpaint: how far from the input to go, 0-1 (unset: 0.75 for img2img, "
                    "1.0 for inpaint). The job runs int(steps * strength) denoising steps (at least 1).")
    loras: list[LoraRequest] | None = Field(
        default=None, max_length=MAX_LORAS,
        description=f"Up to {MAX_LORAS} registered LoRAs (kind sdxl_lora) on any job type; an unknown "
                    "name is refused and nothing is queued.")
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

    @field_validator("loras")
    @classmethod
    def _loras_once_each(cls, value: list[LoraRequest] | None) -> list[LoraRequest] | None:
        if value is not None and len({lora.name for lora in value}) != len(value):
            raise ValueError("loras: each LoRA once")
        return value or None

    @field_validator("init_image", "mask_image")
    @classmethod
    def _upload_id(cls, value: InputRef | None) -> InputRef | None:
        if isinstance(value, str) and not _UPLOAD_ID_RE.match(value):
            raise ValueError("an input image is an upload id (64 hex digits) or {\"job_id\": ID, \"item\": N}")
        return value

    @field_validator("init_image", "mask_image", "strength")
    @classmethod
    def _fits_the_type(cls, value: Any, info: ValidationInfo) -> Any:
        """Each of these belongs to some job types (validated even when unset, so that a missing
        one is named as its own field); an img2img or inpaint job's strength defaults here."""
        kind, name = info.data.get("type"), info.field_name
        if kind is None:
            return value  # the type itself was refused
        if kind == "generate":
            if value is not None:
                raise ValueError(f"{name} is for img2img and inpaint jobs, not generate")
            return value
        if name == "init_image" and value is None:
            raise ValueError(f"an {kind} job needs init_image")
        if name == "mask_image" and kind == "img2img" and value is not None:
            raise ValueError("mask_image is for inpaint jobs; img2img changes the whole image")
        if name == "mask_image" and kind == "inpaint" and value is None:
            raise ValueError("an inpaint job needs mask_image (white: repaint)")
        if name == "strength":
            value = DEFAULT_STRENGTH[kind] if value is None else value
            steps = info.data.get("steps")
            if steps is not None and denoising_steps(steps, value) < 1:
                raise ValueError(f"strength {value} of {steps} steps runs no denoising step "
                                 "(int(steps * strength) must be at least 1)")
        return value

    def denoising_steps(self) -> int:
        """The steps each item runs (progress counts these): ``steps``, or int(steps * strength)."""
        return denoising_steps(self.steps, self.strength if self.type != "generate" else None)

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
        elif err["type"] == "literal_error" and field == "scheduler":
            message = f"scheduler must be one of {', '.join(SCHEDULER_NAMES)} (or null)"
        elif err["type"] in ("greater_than_equal", "less_than_equal") and field == "count":
            message = f"count must be from 1 to {MAX_COUNT}"
        elif err["type"] == "value_error":
            message = str(err["ctx"]["error"])
        elif field != "body":
            message = f"{field}: {message[0].lower()}{message[1:]}"
        out.append({"field": field, "message": message})
    return out


def request_of(params: dict[str, Any]) -> GenerateRequest:
    """A job's request from its params: what was asked, without what submit resolved (``inputs``)."""
    return GenerateRequest.model_validate({k: v for k, v in params.items() if k != "inputs"})


M = TypeVar("M", bound=BaseModel)


def parse_as(model: type[M], data: Any) -> M:
    """Validate untrusted input as ``model``; raise InvalidRequest whose message names the first
    bad field (every door's bodies and queries go through here)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = field_errors(exc)
        raise InvalidRequest(details[0]["message"], details=details) from None


def parse_request(data: Any) -> GenerateRequest:
    return parse_as(GenerateRequest, data)


class RerunRequest(BaseModel):
    """POST /v1/jobs/{id}/rerun's optional body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    new_seed: bool = Field(default=False, description="Draw a new seed instead of the recorded one.")


def parse_rerun(data: Any) -> RerunRequest:
    return parse_as(RerunRequest, data)


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
    rerun_of: str | None = Field(default=None, description="The job whose recorded parameters this one "
                                                           "runs again (POST /v1/jobs/{id}/rerun).")
    record: dict[str, Any] | None = Field(
        default=None, description="How the job ran, to make its images again: model name and sha256, "
                                  "scheduler and its settings, dtype, device, torch, Diffusers and "
                                  "DreamForge versions, the items' seeds and batches. Set once images exist.")
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
