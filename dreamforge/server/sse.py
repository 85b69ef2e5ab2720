"""Server-Sent Events: the framing, and the loop that follows the process's event feed.

One frame per job event: ``id:`` the event id (a reconnecting client sends it back as
``Last-Event-ID`` and gets every later event once), ``event:`` the kind, ``data:`` one line of JSON
(``json.dumps`` escapes every line break, so no field can forge a frame). A comment line every
``HEARTBEAT_S`` of quiet keeps proxies from closing the connection.

A stream never polls the job store: it waits on the feed (``dreamforge/feed.py``), which reads
the store once per process however many streams wait; only a stream whose cursor fell behind the
feed's ring reads the store itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from dreamforge.feed import EventFeed
from dreamforge.status import JobStatus

HEARTBEAT_S = 15.0
KEEPALIVE = b": keep-alive\n\n"
# Sent first: flushes the headers through buffering proxies.
OPENING = b": stream open\n\n"
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal())
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Event = dict[str, Any]


def frame(event_id: int, kind: str, data: Any) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def ends_job(event: Event) -> bool:
    return event["kind"] == "status" and event["payload"].get("status") in TERMINAL


async def follow(feed: EventFeed, *, mark: int, cursor: int, keep: Callable[[Event], bool],
                 render: Callable[[Event], bytes | None], heartbeat_s: float,
                 read_store: Callable[[int], list[Event]], first: Iterable[Event] = (),
                 ends: Callable[[Event], bool] = lambda e: False,
                 done: bool = False) -> AsyncIterator[bytes]:
    """The frames of a stream: ``first`` (a backlog read from the store), then the feed's events
    after ``mark`` (a feed position taken before the backlog was read) that ``keep`` keeps, each
    once (ids at or below ``cursor`` were sent). Stops after an event that ``ends``, or after the
    backlog when ``done`` (the job had ended before the backlog was read, and the client had seen
    its last event already)."""
    loop = asyncio.get_running_loop()
    yield OPENING
    pending: Iterable[Event] = first
    sent_at = loop.time()
    while True:
        for event in pending:
            if event["id"] <= cursor or not keep(event):
                continue
            cursor = event["id"]
            data = render(event)
            if data is not None:
                yield data
                sent_at = loop.time()
            if ends(event):
                return
        if done:
            return
        batch = feed.since(mark)
        if batch is None:  # fell behind the ring
            batch = await run_in_threadpool(read_store, mark)
        if batch:
            mark, pending = batch[-1]["id"], batch
            continue
        pending = ()
        left = sent_at + heartbeat_s - loop.time()
        if left > 0 and await feed.wait(mark, left):
            continue
        yield KEEPALIVE
        sent_at = loop.time()


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS)
