"""Which addresses a URL that came from an API client may reach: public ones only.

Such a URL (a webhook receiver, a model to download) could point the server at itself, at the
cloud's metadata service (169.254.169.254) or at the private network behind it. Whoever follows
one resolves its host, refuses it when any address is not public, and connects to the address it
checked, since the name may resolve elsewhere a moment later (webhooks/targets.py,
registry/download.py).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address, also when it wraps an IPv4 one (mapped, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def not_public(addresses: list[str]) -> str | None:
    """The first of ``addresses`` that is not a public address, if any (one private address among
    public ones is how a rebinding attack looks, so one is enough to refuse the name)."""
    for text in addresses:
        address = literal_address(text)
        if address is None or not is_public(address):
            return text
    return None


def why_not_public(host: str, addresses: list[str]) -> str | None:
    """How ``host`` fails the rule when one of its ``addresses`` is not public, else None. A
    name's addresses are not named: they would tell an API client what the private network's
    names point at."""
    if not_public(addresses) is None:
        return None
    return "is not a public address" if literal_address(host) is not None else \
        "resolves to an address that is not public"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (itself when it is an address). A name that does not
    resolve raises socket.gaierror, or UnicodeError when it can't be encoded as one."""
    if literal_address(host) is not None:
        return [host.strip("[]")]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def default_port(url: str) -> int:
    """The port a URL names, else its scheme's (443 for https, 80 otherwise)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)
