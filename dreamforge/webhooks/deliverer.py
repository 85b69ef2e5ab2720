"""The deliverer: a thread that sends due webhook deliveries, signed, and records how each went.

It runs in every ``df worker`` and ``df serve`` process, in a thread of its own with its own
event loop and its own job-store transactions, so a slow or dead receiver costs a job or a worker
nothing: jobs only ever write rows (outbox.py). Each attempt is bounded by DF_WEBHOOK_TIMEOUT_S
from name resolution to the response's status line (the body of the answer is never read).

Outcomes: 2xx delivered; 429, 408, 5xx, timeouts and connection errors retried on
DF_WEBHOOK_RETRY_SCHEDULE (each wait jittered ±20 %), then ``failed``; other 4xx, 3xx
(redirects are not followed) and refused targets ``dead`` at once. Every attempt carries the same
webhook-id and body, with a fresh webhook-timestamp and signature (receivers refuse timestamps
older than five minutes, so a retry can't reuse the first signature).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dreamforge import __version__
from dreamforge.addresses import default_port
from dreamforge.errors import DreamForgeError, JobNotFound
from dreamforge.webhooks.targets import TargetRefused, Unresolvable, check_addresses, check_url, resolve

if TYPE_CHECKING:
    import httpx

    from dreamforge.service import JobService

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})
JITTER = 0.2


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retry | dead
    status_code: int | None = None
    error: str | None = None


def classify(status_code: int, location: str | None = None) -> Outcome:
    if 200 <= status_code < 300:
        return Outcome("delivered", status_code)
    if status_code in RETRY_STATUSES or 500 <= status_code < 600:
        return Outcome("retry", status_code, f"the receiver answered {status_code}")
    if 300 <= status_code < 400:
        return Outcome("dead", status_code, f"the receiver answered {status_code}: redirects are not followed"
                                            + (f" (Location {location[:200]})" if location else ""))
    return Outcome("dead", status_code, f"the receiver answered {status_code}: not retried")


def next_wait(schedule: list[float], attempts: int, rng: random.Random) -> float | None:
    """Seconds until the next attempt after ``attempts`` attempts; None when the schedule ran out."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


class Deliverer:
    """Claims due deliveries every DF_WEBHOOK_POLL_S, up to DF_WEBHOOK_CONCURRENCY at once."""

    def __init__(self, service: JobService, *, flush_on_stop: bool = False):
        from standardwebhooks import Webhook

        settings = service.settings
        assert settings.webhook_secret is not None, "the service makes a deliverer only with a secret"
        self.service = service
        self._signer = Webhook(settings.webhook_secret.get_secret_value())
        self.timeout = settings.webhook_timeout_s
        self.poll_s = settings.webhook_poll_s
        self.concurrency = settings.webhook_concurrency
        self.schedule = list(settings.webhook_retry_schedule)
        self.allow_private = settings.webhook_allow_private
        # A claim outlives the longest attempt (the timeout bounds it) and the write of its
        # outcome, so only a dead deliverer's rows come due again.
        self.lease_s = self.timeout + 2
        self.flush_on_stop = flush_on_stop
        self._rng = random.Random()  # noqa: S311 - jitter, not secrecy
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="df-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; attempts in flight end within their timeout. With ``flush_on_stop``
        (the CLI's in-process run, which exits next), one last round sends what is due."""
        self._halt.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=self.timeout * 2 + 5)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        # No pooled connections: each attempt connects to the address it has just checked. No
        # proxies from the environment: a proxy would connect wherever the name points.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self.timeout,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self._halt.is_set():
                try:
                    sent = await self.round(client)
                except Exception as exc:  # the job store is away: try again next round
                    message = exc.message if isinstance(exc, DreamForgeError) else repr(exc)
                    log.warning("webhook deliverer: %s; retrying", message)
                    sent = 0
                if sent < self.concurrency:
                    await self._pause(self.poll_s)
            if self.flush_on_stop:
                try:
                    await self.round(client)
                except Exception as exc:
                    log.warning("webhook deliverer: last round failed: %r", exc)

    async def _pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self._halt.is_set() and loop.time() < until:
            await asyncio.sleep(min(0.05, seconds))

    async def round(self, client: httpx.AsyncClient) -> int:
        """Claim what is due and attempt it all; how many were claimed."""
        rows = await asyncio.to_thread(self.service.claim_deliveries, self.concurrency, self.lease_s)
        await asyncio.gather(*(self._attempt(client, row) for row in rows))
        return len(rows)

    async def _attempt(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        try:
            body = await asyncio.to_thread(self.service.delivery_body, row)
        except JobNotFound as exc:  # the job or its event is gone (pruned): nothing to announce
            outcome = Outcome("dead", None, f"nothing to send: {exc.message}")
        except DreamForgeError as exc:  # the store is away: the claim lapses and it is tried again
            log.warning("[job=%s] webhook %s: body not made (%s); tried again after its lease",
                        row["job_id"], row["id"], exc.message)
            return
        except Exception as exc:  # a bug: say so once, never retry it forever
            log.exception("[job=%s] webhook %s: body not made", row["job_id"], row["id"])
            outcome = Outcome("dead", None, f"the body could not be made: {type(exc).__name__}")
        else:
            outcome = await self._send(client, row, body)
        retry_in = next_wait(self.schedule, row["attempts"], self._rng) if outcome.status == "retry" else None
        status = {"retry": "pending" if retry_in is not None else "failed"}.get(outcome.status, outcome.status)
        try:
            kept = await asyncio.to_thread(self.service.finish_delivery, row["id"], row["claim_token"], status,
                                           status_code=outcome.status_code, error=outcome.error,
                                           retry_in_s=retry_in)
        except DreamForgeError as exc:
            log.warning("[job=%s] webhook %s: outcome not recorded (%s); it is sent again after its lease",
                        row["job_id"], row["id"], exc.message)
            return
        level = logging.INFO if status == "delivered" else logging.WARNING
        log.log(level, "[job=%s] webhook %s %s to %s: %s%s (attempt %d)%s", row["job_id"], row["id"],
                row["event_type"], _host(row["url"]), status,
                f" {outcome.status_code}" if outcome.status_code else "", row["attempts"],
                "" if kept else "; its claim had lapsed, another deliverer holds it")

    async def _send(self, client: httpx.AsyncClient, row: dict[str, Any], body: str) -> Outcome:
        try:
            return await asyncio.wait_for(self._post(client, row["id"], row["url"], body), self.timeout)
        except Unresolvable as exc:
            return Outcome("retry", None, str(exc))
        except TargetRefused as exc:
            return Outcome("dead", None, str(exc))
        except TimeoutError:
            return Outcome("retry", None, f"no answer within {self.timeout:g} s")
        except Exception as exc:  # httpx's transport errors: connection refused, reset, bad TLS
            return Outcome("retry", None, f"{type(exc).__name__}: {str(exc)[:300]}")

    async def _post(self, client: httpx.AsyncClient, delivery_id: str, url: str, body: str) -> Outcome:
        import httpx

        host = check_url(url)
        addresses = await asyncio.to_thread(resolve, host, default_port(url))
        address = check_addresses(host, addresses, self.allow_private)[0]
        target = httpx.URL(url)
        now = datetime.now(UTC).replace(microsecond=0)
        headers = {"host": target.netloc.decode("ascii"), "content-type": "application/json",
                   "user-agent": f"DreamForge-Webhooks/{__version__}",
                   "webhook-id": delivery_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self._signer.sign(delivery_id, now, body)}
        # Connect to the checked address; TLS still verifies the certificate against the name.
        extensions = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
        async with client.stream("POST", target.copy_with(host=address), content=body.encode(),
                                 headers=headers, extensions=extensions) as response:
            return classify(response.status_code, response.headers.get("location"))


def build_body(event_type: str, event: dict[str, Any], job: dict[str, Any]) -> str:
    """The Standard Webhooks envelope: type, timestamp (the event's), and the event with the job."""
    from dreamforge.schemas import EventView

    data = {"event": EventView.model_validate(event).model_dump(mode="json"), "job": job}
    return json.dumps({"type": event_type, "timestamp": event["at"].isoformat(), "data": data},
                      separators=(",", ":"))


def _host(url: str) -> str:
    """What a log line names of a target: its host (a URL's path or query may hold a token)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
