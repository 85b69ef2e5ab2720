"""Query strings and headers a client sent, validated like a body: every parameter declared, an
unknown one refused (422), a repeated one refused unless it is a list (``?status=a&status=b``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request

from dreamforge.errors import InvalidRequest
from dreamforge.schemas import JobStatus, parse_as
from dreamforge.status import JOB_TYPE_PATTERN

M = TypeVar("M", bound=BaseModel)

EVENT_STREAM = "text/event-stream"
MAX_LIMIT = 1000
THUMB_SIZES = (64, 128, 256, 512)
# A job type: what GenerateRequest.type (and the later job types) may be.
TYPE_PATTERN = JOB_TYPE_PATTERN


# What a client may send: 18 digits. The store's event ids are 32-bit integers (tables.Event.id),
# so anything past 2**31 - 1 means "after every event" and is read as that, not sent to SQL,
# where PostgreSQL would refuse to compare it.
MAX_EVENT_ID = 10**18 - 1
STORE_MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit in both stores
_EVENT_ID = re.compile(r"^[0-9]{1,18}\Z")


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Parameters that may be repeated (?status=queued&status=running).
    LISTS: ClassVar[frozenset[str]] = frozenset()


class NoQuery(Query):
    """A route that takes no query parameters refuses any."""


def _utc(value: datetime | None) -> datetime | None:
    """A time without an offset is UTC, the store's zone."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class ListQuery(Query):
    LISTS = frozenset({"status"})
    status: list[JobStatus] | None = None
    type: str | None = Field(default=None, pattern=TYPE_PATTERN)
    created_after: datetime | None = None
    created_before: datetime | None = None
    code: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,64}$", description="Only jobs that failed "
                             "with this error code.")
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=20, ge=1, le=MAX_LIMIT)

    _utc_times = field_validator("created_after", "created_before")(_utc)


class EventsQuery(Query):
    after: int = Field(default=0, ge=0, le=MAX_EVENT_ID, description="Events after this event id.")
    limit: int = Field(default=MAX_LIMIT, ge=1, le=MAX_LIMIT)


    @field_validator("after")
    @classmethod
    def _in_store_range(cls, value: int) -> int:
        return min(value, STORE_MAX_EVENT_ID)


class FeedQuery(EventsQuery):
    LISTS = frozenset({"status"})
    status: list[JobStatus] | None = None
    type: str | None = Field(default=None, pattern=TYPE_PATTERN)


class ContentQuery(Query):
    redirect: bool = True
    thumb: int | None = None

    @field_validator("thumb")
    @classmethod
    def _known_size(cls, value: int | None) -> int | None:
        if value is not None and value not in THUMB_SIZES:
            raise ValueError(f"thumb must be one of {', '.join(map(str, THUMB_SIZES))}")
        return value


def parse_query(model: type[M], request: Request) -> M:
    lists = model.LISTS if issubclass(model, Query) else frozenset()
    data: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in lists:
            data.setdefault(key, []).append(value)
        elif key in data:
            raise InvalidRequest(f"{key[:50]} is given more than once",
                                 details=[{"field": key[:100], "message": "give it once"}])
        else:
            data[key] = value
    return parse_as(model, data)


def resume_from(request: Request, after: int) -> int:
    """Where a stream starts: after the Last-Event-ID an SSE client sends on reconnecting, else
    after ``?after=``."""
    sent = request.headers.get("last-event-id")
    if sent is None:
        return after
    if not _EVENT_ID.match(sent):
        raise InvalidRequest("Last-Event-ID must be a non-negative integer of at most 18 digits (an event id)",
                             details=[{"field": "Last-Event-ID", "message": "a non-negative integer"}])
    return min(int(sent), STORE_MAX_EVENT_ID)


def accepted(request: Request, offered: tuple[str, ...]) -> str:
    """The first of ``offered`` that the Accept header names; ``offered[0]`` when it names none
    (no header, ``*/*``). Quality values are not weighed: clients of these routes name one type."""
    named = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
    for media_type in named:
        if media_type in offered:
            return media_type
    return offered[0]
