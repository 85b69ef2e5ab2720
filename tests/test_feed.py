"""The event feed publishes event ids in order with no hole: what PostgreSQL commits out of order
(ids come from a sequence, taken before commit) waits until the hole fills, or until GAP_WAIT_S
says it never will (a rolled-back transaction)."""

from __future__ import annotations

import asyncio
from typing import Any

from dreamforge import feed
from dreamforge.feed import EventFeed


class CommitOrder:
    """The events table as readers see it: only what has committed, whatever order ids came in."""

    url = "postgresql+psycopg://stand-in"

    def __init__(self) -> None:
        self.committed: dict[int, dict[str, Any]] = {}

    def commit(self, *ids: int) -> None:
        for i in ids:
            self.committed[i] = {"id": i, "job_id": "j", "kind": "progress", "payload": {}, "job_type": "generate"}

    def events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        return [self.committed[i] for i in sorted(self.committed) if i > after_id][:limit]

    def last_event_id(self) -> int:
        return max(self.committed, default=0)


def test_a_late_commit_is_published_in_order_and_a_rolled_back_id_is_given_up(monkeypatch):
    monkeypatch.setattr(feed, "GAP_WAIT_S", 0.3)
    store = CommitOrder()
    store.commit(1, 2)

    async def scenario() -> None:
        events = EventFeed(store)  # type: ignore[arg-type]
        events._last_id = store.last_event_id()
        store.commit(4)  # 3 is taken but not committed yet
        await events._read_new()
        assert events.last_id == 2 and events.since(2) == []  # 4 waits behind the hole
        store.commit(3)
        await events._read_new()
        assert [e["id"] for e in events.since(2)] == [3, 4]
        store.commit(6)  # 5 was rolled back: it never commits
        await events._read_new()
        assert events.last_id == 4
        await asyncio.sleep(0.35)
        await events._read_new()
        assert [e["id"] for e in events.since(4)] == [6]

    asyncio.run(scenario())


class CountingStore(CommitOrder):
    url = "sqlite:///stand-in"  # the polling feed

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        self.reads += 1
        return super().events_after(after_id, limit)


def test_the_feed_reads_nothing_until_someone_watches_and_sleeps_again_when_nobody_does(monkeypatch):
    monkeypatch.setattr(feed, "IDLE_S", 0.3)
    store = CountingStore()
    store.commit(1, 2)

    async def scenario() -> None:
        events = EventFeed(store, poll_s=0.01)  # type: ignore[arg-type]
        store.commit(3)
        await asyncio.sleep(0.1)
        assert store.reads == 0  # a process that only takes submissions reads no events

        assert await events.position() == 3  # waking starts from the store's newest id
        store.commit(4)
        assert await events.wait(3, 2.0)
        assert [e["id"] for e in events.since(3) or []] == [4]

        # A waiter keeps it awake past IDLE_S; an event that comes late still reaches it.
        waiting = asyncio.create_task(events.wait(4, 2.0))
        await asyncio.sleep(0.5)
        store.commit(5)
        assert await waiting
        assert [e["id"] for e in events.since(4) or []] == [5]

        await asyncio.sleep(1.0)  # nobody waits: it goes to sleep (after IDLE_S; margin for a loaded machine)
        reads = store.reads
        store.commit(6, 7)
        await asyncio.sleep(0.2)
        assert store.reads == reads and events.last_id == 5

        # A stream that was following from 5 wakes it; what came while it slept is not in the
        # ring, so the stream is sent to the store for it (since: None), never given a gap.
        assert await events.wait(5, 2.0)
        assert events.last_id == 7 and events.since(5) is None
        store.commit(8)
        assert await events.wait(7, 2.0)
        assert [e["id"] for e in events.since(7) or []] == [8]
        await events.stop()

    asyncio.run(scenario())
