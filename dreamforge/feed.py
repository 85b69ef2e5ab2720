"""The event feed: one tail of the job store's events per API process, shared by every stream.

A stream (SSE, the web page, a long poll) waits on the feed instead of querying the store, so an
idle stream costs nothing and a new event costs one query per process however many clients watch.
The feed learns that something happened from a wake-up where the store has one (PostgreSQL
``LISTEN/NOTIFY``, fired by a trigger on the events table) and by polling where it hasn't (SQLite);
either way it reads the events table by id, so a missed wake-up delays an event, never loses it.
Each event is kept in a bounded ring; a stream whose cursor fell behind the ring reads the store.

Streams follow event ids, so the feed publishes events in id order with no hole: on PostgreSQL a
transaction can commit event 11 before another commits event 10 (ids come from a sequence, taken
before commit). Where the ids it reads skip one, the feed holds back what follows the hole for up
to GAP_WAIT_S, then gives the missing ids up (a rolled-back transaction never fills them).

The feed tails the store only while someone watches: it wakes when a stream or a waiting request
asks for its position or waits on it, and goes back to sleep after IDLE_S with nobody waiting. A
process that serves only submissions reads no events at all: with a feed always awake, reading
every event back cost a PostgreSQL server 40% of its CPU per POST (one read per NOTIFY), and a
SQLite one 15%. Waking reads the store's newest id and starts the ring empty, so a stream
whose cursor is older reads the store, as one that fell behind the ring always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from dreamforge.errors import DreamForgeError

if TYPE_CHECKING:
    from dreamforge.job_store import JobStore

log = logging.getLogger(__name__)

CHANNEL = "dreamforge_events"
GAP_WAIT_S = 2.0
# How long the feed goes on tailing with nobody waiting on it: a client that polls, or
# reconnects, within it finds the feed awake.
IDLE_S = 30.0


class EventFeed:
    def __init__(self, job_store: JobStore, *, poll_s: float = 0.05, ring: int = 20_000):
        self.job_store = job_store
        self.poll_s = poll_s
        self._ring: deque[dict[str, Any]] = deque(maxlen=ring)
        self._last_id = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listen = job_store.url.startswith("postgresql")
        # SQLite commits one writer at a time, so its ids arrive in order: a hole there is rows
        # deleted (a withdrawn or pruned job), nothing to wait for.
        self._gap_wait = GAP_WAIT_S if self._listen else 0.0
        self._hole_since: float | None = None
        self._waiters = 0
        self._used_at = 0.0
        self._waking = asyncio.Lock()

    @property
    def last_id(self) -> int:
        """The newest id published; stale while the feed sleeps (``position`` wakes it)."""
        return self._last_id

    async def position(self) -> int:
        """Where a stream starts following: the newest id published, with the feed awake, so
        every later event reaches ``since`` (or the store, for one that fell behind the ring)."""
        await self._wake()
        return self._last_id

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wake(self) -> None:
        loop = asyncio.get_running_loop()
        self._used_at = loop.time()
        if self._task is not None and not self._task.done():
            return
        async with self._waking:
            if self._task is not None and not self._task.done():
                return
            # What happened while it slept is not in the ring: start it empty from the newest id.
            last_id = await run_in_threadpool(self.job_store.last_event_id)
            self._ring.clear()
            self._hole_since = None
            self._last_id = last_id
            self._used_at = loop.time()
            self._task = asyncio.create_task(self._run(), name="df-event-feed")

    def _idle(self) -> bool:
        return not self._waiters and asyncio.get_running_loop().time() - self._used_at > IDLE_S

    async def wait(self, after_id: int, timeout: float) -> bool:
        """Wait until an event newer than ``after_id`` is known, at most ``timeout`` seconds.
        True if there is one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiters += 1
        try:
            try:
                await self._wake()
            except DreamForgeError:  # the store is away: as if nothing happened for a while
                await asyncio.sleep(min(timeout, 1.0))
                return False
            while self._last_id <= after_id:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
            return True
        finally:
            self._waiters -= 1
            self._used_at = loop.time()

    def since(self, after_id: int) -> list[dict[str, Any]] | None:
        """Events newer than ``after_id`` from the ring, oldest first; None when the ring no
        longer reaches back that far (then the caller reads the store)."""
        if not self._ring or self._ring[0]["id"] > after_id + 1:
            return None if after_id < self._last_id else []
        return [e for e in self._ring if e["id"] > after_id]

    async def _run(self) -> None:
        """Tail the store until nobody has watched for IDLE_S."""
        while not self._idle():
            try:
                if self._listen:
                    await self._listen_loop()
                else:
                    await self._poll_loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store went away: keep trying, streams just wait
                message = exc.message if isinstance(exc, DreamForgeError) else f"{type(exc).__name__}: {exc}"
                log.warning("event feed: %s; retrying in 1 s", message)
                await asyncio.sleep(1.0)

    async def _poll_loop(self) -> None:
        while not self._idle():
            await self._read_new()
            await asyncio.sleep(self.poll_s)

    async def _listen_loop(self) -> None:
        import psycopg

        url = self.job_store.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            await self._read_new()  # what happened before the LISTEN took effect
            loop = asyncio.get_running_loop()
            read_at = loop.time()
            while not self._idle():
                # The notifications only wake the feed; the events table is what it reads. The
                # timeout bounds how late an event can be if a notification is ever lost.
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                # A wake-up right after a read waits out DF_EVENT_POLL_S first: each read takes
                # everything committed since, so under a stream of events the feed reads 20 times
                # a second instead of once an event (that cost an API process 0.7 ms of CPU per
                # POST with one stream open), and a lone event still goes out at once.
                await asyncio.sleep(read_at + self.poll_s - loop.time())
                read_at = loop.time()
                await self._read_new()

    async def _read_new(self) -> None:
        # Re-read from the last published id: what was held behind a hole comes back with it.
        read = await run_in_threadpool(self.job_store.events_after, self._last_id, 1000)
        publish = self._in_order(read)
        if publish:
            self._ring.extend(publish)
            self._last_id = publish[-1]["id"]
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        if len(read) == 1000 and publish:
            await self._read_new()

    def _in_order(self, read: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events that can go out now: ids from last_id + 1 on without a hole; past a hole
        only once it has been open for GAP_WAIT_S."""
        loop = asyncio.get_running_loop()
        expected, publish = self._last_id + 1, []
        for event in read:
            if event["id"] != expected and self._last_id:
                if self._hole_since is None:
                    self._hole_since = loop.time()
                if loop.time() - self._hole_since < self._gap_wait:
                    break
                log.info("event feed: ids %d..%d never committed; going on", expected, event["id"] - 1)
            self._hole_since = None
            publish.append(event)
            expected = event["id"] + 1
        return publish
