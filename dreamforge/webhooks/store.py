"""The webhook_deliveries rows: claiming due ones, recording outcomes, listing, redelivering.

Claims follow the job store's rules: one statement per claim, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (a deliverer never waits on a row another one is claiming), and the write lock of
``BEGIN IMMEDIATE`` on SQLite. A claim is a lease: it moves ``next_attempt_at`` past the attempt,
so a deliverer that dies mid-attempt (SIGKILL, a lost host) leaves a row that is due again once
the lease ends, and another deliverer sends it, with the same webhook-id. An outcome is recorded
only by the claim's holder (its ``claim_token``), so a deliverer that outlived its lease can't
overwrite a later attempt's outcome.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dreamforge.errors import JobNotFound
from dreamforge.tables import events
from dreamforge.tables import webhook_deliveries as deliveries
from dreamforge.text import cut

if TYPE_CHECKING:
    from dreamforge.job_store import JobStore

MAX_ERROR = 480
SHOWN = [c for c in deliveries.c if c.name not in ("body", "claim_token")]


def _plain(row: Any) -> dict[str, Any]:
    from dreamforge.job_store import aware

    return {k: aware(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


class DeliveryStore:
    def __init__(self, job_store: JobStore):
        self.job_store = job_store

    def claim(self, limit: int, lease_s: float) -> list[dict[str, Any]]:
        """Up to ``limit`` due deliveries, oldest due first, each now held for ``lease_s``."""
        store = self.job_store
        token = uuid.uuid4().hex
        due = (sa.select(deliveries.c.id)
               .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= store._now())
               .order_by(deliveries.c.next_attempt_at).limit(limit)
               .with_for_update(skip_locked=True))
        with store.write() as conn:
            rows = conn.execute(
                deliveries.update().where(deliveries.c.id.in_(due.scalar_subquery()))
                .values(attempts=deliveries.c.attempts + 1, claim_token=token,
                        next_attempt_at=store._later(lease_s), last_attempt_at=store._now())
                .returning(*deliveries.c)).mappings().all()
        return [_plain(r) for r in rows]

    def event(self, event_id: int) -> dict[str, Any] | None:
        with self.job_store.read() as conn:
            row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().one_or_none()
        return None if row is None else _plain(row)

    def fix_body(self, delivery_id: str, body: str) -> str:
        """Keep ``body`` as the delivery's body unless one is kept already; the kept one."""
        with self.job_store.write() as conn:
            conn.execute(deliveries.update().where(deliveries.c.id == delivery_id, deliveries.c.body.is_(None))
                         .values(body=body))
            kept = conn.execute(sa.select(deliveries.c.body).where(deliveries.c.id == delivery_id)).scalar()
        return kept if kept is not None else body

    def finish(self, delivery_id: str, token: str, status: str, *, status_code: int | None = None,
               error: str | None = None, retry_in_s: float | None = None) -> bool:
        """Record an attempt's outcome: ``delivered``, ``pending`` again (in ``retry_in_s``),
        ``failed`` (the schedule ran out) or ``dead`` (never to be retried). False when the
        claim was lost (its lease ran out and another deliverer took the row)."""
        store = self.job_store
        values: dict[str, Any] = {"status": status, "last_status_code": status_code,
                                  "last_error": cut(error, MAX_ERROR) if error else None, "claim_token": None}
        if status == "delivered":
            values["delivered_at"] = store._now()
        if status == "pending":
            values["next_attempt_at"] = store._later(retry_in_s or 0.0)
        with store.write() as conn:
            return bool(conn.execute(deliveries.update().where(deliveries.c.id == delivery_id,
                                                               deliveries.c.claim_token == token)
                                     .values(**values)).rowcount)

    def list(self, job_id: str | None = None, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = sa.select(*SHOWN).order_by(deliveries.c.created_at.desc(), deliveries.c.id).limit(limit)
        if job_id is not None:
            query = query.where(deliveries.c.job_id == job_id)
        if status is not None:
            query = query.where(deliveries.c.status == status)
        with self.job_store.read() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def get(self, delivery_id: str) -> dict[str, Any]:
        with self.job_store.read() as conn:
            row = conn.execute(sa.select(*SHOWN).where(deliveries.c.id == delivery_id)).mappings().one_or_none()
        if row is None:
            raise JobNotFound(f"no webhook delivery with id {cut(delivery_id, 80)!r}", code="delivery_not_found")
        return _plain(row)

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        """Due now, with a fresh retry schedule; the same webhook-id and body (a receiver that
        kept the id sees it again: this is the same message, sent once more)."""
        store = self.job_store
        with store.write() as conn:
            done = conn.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(
                status="pending", attempts=0, next_attempt_at=store._now(), claim_token=None,
                delivered_at=None)).rowcount
        if not done:
            raise JobNotFound(f"no webhook delivery with id {cut(delivery_id, 80)!r}", code="delivery_not_found")
        return self.get(delivery_id)
