"""Reading a JSON request body that anyone may have written: size, media type, nesting depth,
number size and string content are all bounded before the body reaches the models, so hostile
input gets a 4xx, never a RecursionError or a ValueError that would surface as a 500."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from dreamforge.server.errors import ApiError

MAX_BODY_BYTES = 64 * 1024
# A job request is one flat object; 32 levels is far more than any honest body.
MAX_DEPTH = 32
# Digits in an integer literal: the largest legal value (a seed) has 10.
MAX_INT_DIGITS = 40


class BadJson(ValueError):
    pass


def _check_depth(text: str) -> None:
    """Refuse deep nesting before the parser recurses into it (json.loads hits the interpreter's
    recursion limit at about a thousand levels)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise BadJson(f"nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > 100:
        raise BadJson("a number is over 100 characters long")
    return float(literal)


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _check_strings(value: Any) -> None:
    """Lone surrogates (\\ud800) decode to a str that can't be encoded as UTF-8 again."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJson("a string holds a lone UTF-16 surrogate") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(raw: bytes) -> Any:
    """Parse untrusted JSON; raise BadJson with a short, safe reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("not UTF-8") from None
    if text.count("[") + text.count("{") > MAX_DEPTH:  # fewer brackets than that can't nest deeper
        _check_depth(text)
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # belt and braces: _check_depth should have refused it
        raise BadJson(f"nested deeper than {MAX_DEPTH} levels") from None
    if "\\u" in text:  # a lone surrogate can only come from an escape: valid UTF-8 holds none
        _check_strings(value)
    return value


async def read_json(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        shown = media_type[:100] or "missing"
        raise ApiError(415, f"Content-Type must be application/json, not {shown!r}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        return parse_json(bytes(body))
    except BadJson as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
