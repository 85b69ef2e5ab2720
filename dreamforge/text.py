"""Text that came from outside (prompts, error messages, ids, headers), made inert for display.

Terminals obey escape sequences and logs trust line breaks, so every outside string shown by a
door goes through ``inert``: C0 and C1 controls, DEL, Unicode line separators and bidi overrides
become visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), and long values are cut. Rich markup is
the renderer's business (``cli/render.py`` hands rich ``Text``, never a markup string). No rich
or pydantic here: the server and the CLI both import this.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (tab and newline included: they forge columns and rows), DEL, C1 controls (0x9b
# is a one-byte CSI on some terminals), line/paragraph separators, and the bidi controls that
# reorder what a reader sees (the "Trojan Source" set).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cut(value: str, limit: int) -> str:
    """At most ``limit`` characters; a cut value says how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"


def inert(value: Any, limit: int | None = None) -> str:
    """``value`` as one line of plain text that no terminal or log reader will interpret."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None:
        text = cut(text, limit)
    return _UNSAFE.sub(_escape, text)
