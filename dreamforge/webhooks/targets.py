"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

A receiver's URL comes from whoever submits a job, so it could point the server at itself, at
the cloud's metadata service (169.254.169.254) or at the private network behind it. Targets are
checked twice: at submit (a literal address, or a name that resolves to one) and at delivery,
after resolving again, where the deliverer connects to the very address it checked (a name that
resolved to a public address at submit may resolve to a private one later). Redirects are not
followed. DF_WEBHOOK_ALLOW_PRIVATE=1 lifts the address rule (a receiver on the same host or LAN).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from dreamforge.addresses import default_port, why_not_public
from dreamforge.addresses import resolve as resolve_host

MAX_URL = 2048


class TargetRefused(ValueError):
    """The URL may not be sent to; the message says why and never carries more than the host."""


class Unresolvable(TargetRefused):
    """The name does not resolve now (at delivery, worth another try later)."""


def check_url(url: str) -> str:
    """The URL's host, if the URL is one a webhook may use at all (before any address rule)."""
    if not isinstance(url, str) or not url:
        raise TargetRefused("a webhook URL is a non-empty string")
    if len(url) > MAX_URL:
        raise TargetRefused(f"a webhook URL is at most {MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise TargetRefused("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("the webhook URL can't be parsed") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("a webhook URL starts with http:// or https://")
    if not parts.hostname:
        raise TargetRefused("the webhook URL names no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("a webhook URL carries no user name or password (deliveries are signed instead)")
    if port == 0:
        raise TargetRefused("the webhook URL's port is 0")
    return parts.hostname


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> list[str]:
    """The addresses, if every one may be sent to (one private address among public ones is how a
    rebinding attack looks, so the name is refused)."""
    if not addresses:
        raise TargetRefused(f"webhook host {host[:100]!r} resolves to no address")
    if not allow_private and (what := why_not_public(host, addresses)) is not None:
        raise TargetRefused(f"webhook host {host[:100]!r} {what} (loopback, private, link-local and the like; "
                            "DF_WEBHOOK_ALLOW_PRIVATE=1 allows it)")
    return addresses


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (itself when it is an address)."""
    try:
        return resolve_host(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"webhook host {host[:100]!r} does not resolve ({exc})") from None


def check_target(url: str, allow_private: bool) -> list[str]:
    """The addresses a delivery to ``url`` may connect to; TargetRefused otherwise."""
    host = check_url(url)
    return check_addresses(host, resolve(host, default_port(url)), allow_private)
