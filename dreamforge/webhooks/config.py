"""The webhook settings, parsed and checked: lists from the environment, the retry schedule,
and the rule that webhooks need a secret."""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dreamforge.settings import Settings

EVENTS = ("running", "progress", "succeeded", "failed", "canceled")
DEFAULT_JOB_EVENTS = ("succeeded", "failed", "canceled")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def split_list(value: Any) -> Any:
    """``a,b`` or a JSON list, from the environment; anything else is left to pydantic."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_duration(text: str) -> float:
    found = _DURATION.match(text.strip().lower())
    if found is None:
        raise ValueError(f"{text[:40]!r} is not a duration such as 30s, 5m, 2h or 1d")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def parse_schedule(value: Any) -> Any:
    items = split_list(value)
    if not isinstance(items, list):
        return items
    if not items:
        raise ValueError("the retry schedule needs at least one wait")
    if len(items) > 50:
        raise ValueError("the retry schedule has more than 50 waits")
    waits = [parse_duration(i) if isinstance(i, str) else i for i in items]
    if any(not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w <= 7 * 86400 for w in waits):
        raise ValueError("each wait must be between 0 and 7 days")
    return waits


def check_settings(settings: Settings) -> None:
    """Webhooks are signed or not sent: a secret that can't sign, or endpoints without a
    secret, stop the process at start-up (the error names the setting, never the value)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is not None:
        check_secret(secret)
    if settings.webhook_urls:
        from dreamforge.webhooks.targets import check_url  # only then: every command reads settings

        if secret is None:
            raise ValueError("DF_WEBHOOK_URLS needs DF_WEBHOOK_SECRET (whsec_ and base64) to sign with")
        for url in settings.webhook_urls:
            check_url(url)
    unknown = [e for e in settings.webhook_events if e not in EVENTS]
    if unknown:
        raise ValueError(f"DF_WEBHOOK_EVENTS: unknown event {unknown[0][:40]!r} (use {', '.join(EVENTS)})")


def check_secret(secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise ValueError("DF_WEBHOOK_SECRET must start with whsec_ (then base64, 24 to 64 bytes)")
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        raise ValueError("DF_WEBHOOK_SECRET is not whsec_ and base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("DF_WEBHOOK_SECRET must hold 24 to 64 bytes (whsec_ and base64)")
