"""Watching jobs: a job's events and log lines (JSON pages, or followed as SSE), and every job's
events for dashboards. Each route reads the store once for the backlog and then waits on the
process's event feed."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from dreamforge.schemas import EventPage, EventView, LogLine, LogPage
from dreamforge.server.query import EVENT_STREAM, EventsQuery, FeedQuery, accepted, parse_query, resume_from
from dreamforge.server.sse import Event, ends_job, follow, frame, sse_response
from dreamforge.service import JobService, log_line
from dreamforge.text import inert


def _job_event(event: Event) -> EventView:
    return EventView.model_validate({**event, "job_type": None})


def _render_event(event: Event) -> bytes:
    return frame(event["id"], event["kind"], _job_event(event).model_dump(mode="json"))


def _render_log(event: Event) -> bytes | None:
    line = log_line(event)
    return None if line is None else frame(event["id"], "log", LogLine.model_validate(line).model_dump(mode="json"))


async def _follow_job(request: Request, after: int, render: Callable[[Event], bytes | None]) -> Response:
    """SSE for one job: its events after ``after`` from the store, then from the feed, until
    its terminal event."""
    service: JobService = request.state.service
    feed = request.state.feed
    job_id = request.path_params["job_id"]
    mark = await feed.position()  # before the backlog: the feed carries whatever the backlog misses
    view = await run_in_threadpool(service.get, job_id)  # 404 before the stream starts
    backlog = await run_in_threadpool(service.events, job_id, after)
    # Terminal before the backlog was read: its event is in the backlog, or the client has it.
    done = view.status.is_terminal()
    return sse_response(follow(
        feed, mark=mark, cursor=after, keep=lambda e: e["job_id"] == job_id, render=render,
        heartbeat_s=request.state.heartbeat_s, first=backlog, ends=ends_job, done=done,
        read_store=partial(service.events_after, limit=1000)))


async def job_events(request: Request) -> Response:
    query = parse_query(EventsQuery, request)
    after = resume_from(request, query.after)
    if accepted(request, ("application/json", EVENT_STREAM)) == EVENT_STREAM:
        return await _follow_job(request, after, _render_event)
    events = await run_in_threadpool(request.state.service.events, request.path_params["job_id"],
                                     after, query.limit)
    return JSONResponse(EventPage(events=[_job_event(e) for e in events],
                                  next_after=events[-1]["id"] if events else after
                                  ).model_dump(mode="json"))


async def job_logs(request: Request) -> Response:
    query = parse_query(EventsQuery, request)
    after = resume_from(request, query.after)
    media_type = accepted(request, ("text/plain", "application/json", EVENT_STREAM))
    if media_type == EVENT_STREAM:
        return await _follow_job(request, after, _render_log)
    service: JobService = request.state.service
    lines = await run_in_threadpool(service.logs, request.path_params["job_id"], after)
    lines = lines[:query.limit]
    if media_type == "application/json":
        page = LogPage(lines=[LogLine.model_validate(line) for line in lines],
                       next_after=lines[-1]["id"] if lines else after)
        return JSONResponse(page.model_dump(mode="json"))
    # One line per entry: a message's own line breaks and control characters are escaped.
    text = "".join(f"{line['at'].isoformat()} {line['level'].upper():<7} {inert(line['message'])}\n"
                   for line in lines)
    return PlainTextResponse(text)


def _feed_filter(query: FeedQuery) -> Callable[[Event], bool]:
    statuses = {s.value for s in query.status or ()}

    def keep(event: Event) -> bool:
        if query.type is not None and event.get("job_type") != query.type:
            return False
        return not statuses or (event["kind"] == "status" and event["payload"].get("status") in statuses)

    return keep


async def all_events(request: Request) -> Response:
    """Every job's events. ``type`` keeps one job type's; ``status`` keeps only the status events
    that move a job into one of those statuses. A stream without Last-Event-ID or ``after``
    starts now."""
    query = parse_query(FeedQuery, request)
    service: JobService = request.state.service
    keep = _feed_filter(query)
    after = resume_from(request, query.after)
    if accepted(request, ("application/json", EVENT_STREAM)) == EVENT_STREAM:
        feed = request.state.feed
        given = "last-event-id" in request.headers or "after" in request.query_params
        start = after if given else await feed.position()
        return sse_response(follow(
            feed, mark=start, cursor=start, keep=keep, heartbeat_s=request.state.heartbeat_s,
            render=lambda e: frame(e["id"], e["kind"], EventView.model_validate(e).model_dump(mode="json")),
            read_store=partial(service.events_after, limit=1000)))
    events = await run_in_threadpool(service.events_after, after, query.limit)
    return JSONResponse(EventPage(events=[EventView.model_validate(e) for e in events if keep(e)],
                                  next_after=events[-1]["id"] if events else after
                                  ).model_dump(mode="json"))
