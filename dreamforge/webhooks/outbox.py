"""The outbox: which events are announced to which endpoints, recorded in the event's own
transaction.

The job store calls ``Outbox.record`` right after it inserts a status or progress event, on the
same connection, so the delivery rows commit or roll back with the event: a crash can neither
lose an announcement of a move that happened nor invent one of a move that didn't. What is sent,
and when, is the deliverer's business (deliverer.py); this only writes rows.

Progress events come once per denoising step. A job's progress delivery that no deliverer has
picked up yet is moved on to the newer event instead of adding a row, so a receiver gets the
latest progress as fast as it takes it, never a backlog of every step.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from dreamforge.tables import webhook_deliveries as deliveries
from dreamforge.webhooks.config import DEFAULT_JOB_EVENTS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from dreamforge.settings import Settings

STATUS_EVENTS = frozenset({"running", "succeeded", "failed", "canceled"})


def event_name(kind: str, payload: dict[str, Any]) -> str | None:
    """``running``, ``progress``, ``succeeded``, ``failed`` or ``canceled``; None for events no
    webhook announces (queued, logs, errors: a failure's code rides on its status event)."""
    if kind == "progress":
        return "progress"
    if kind == "status" and payload.get("status") in STATUS_EVENTS:
        return str(payload["status"])
    return None


def new_delivery_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class Outbox:
    def __init__(self, server_urls: list[str], server_events: list[str]):
        self.server_urls = list(dict.fromkeys(server_urls))
        self.server_events = frozenset(server_events)

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        return cls(settings.webhook_urls, settings.webhook_events)

    def targets(self, name: str, params: dict[str, Any]) -> list[str]:
        urls = []
        job_url = params.get("webhook")
        if job_url and name in (params.get("webhook_events") or DEFAULT_JOB_EVENTS):
            urls.append(job_url)
        if name in self.server_events:
            urls.extend(self.server_urls)
        return list(dict.fromkeys(urls))

    def record(self, conn: Connection, now: Any, job_id: str, event_id: int, kind: str,
               payload: dict[str, Any], params: dict[str, Any]) -> None:
        name = event_name(kind, payload)
        if name is None:
            return
        for url in self.targets(name, params):
            if name == "progress" and conn.execute(
                    deliveries.update().where(deliveries.c.job_id == job_id, deliveries.c.url == url,
                                              deliveries.c.event_type == "job.progress",
                                              deliveries.c.status == "pending", deliveries.c.attempts == 0,
                                              deliveries.c.body.is_(None))
                    .values(event_id=event_id)).rowcount:
                continue
            conn.execute(deliveries.insert().values(
                id=new_delivery_id(), job_id=job_id, event_id=event_id, event_type=f"job.{name}", url=url,
                status="pending", attempts=0, next_attempt_at=now, created_at=now))
