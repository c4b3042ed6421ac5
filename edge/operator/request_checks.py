"""Checks of what a browser sends the console, as pure functions on bytes and strings (no web framework): a JSON
body (depth, duplicate keys, encoding) and the page to go to after sign-in. Each refusal is a `Refused` with the
HTTP status and a one-line reason."""

from __future__ import annotations

import json
from typing import Any


class Refused(Exception):
    """A request the console answers with `status` and a one-line `message` (JSON for /api, a page otherwise)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Deepest nesting a JSON request body may have (a decision is one flat object).
MAX_JSON_DEPTH = 4


def json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A request body parsed as JSON, or a 400 `Refused` naming why: not UTF-8 JSON, nested deeper than
    `max_depth` (checked on the bytes before parsing, so `[` × 60,000 never reaches the parser), or an object with
    a duplicate key (which value would count is ambiguous). The size is bounded before this (413 past 64 KiB)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise Refused(400, f"the body is nested deeper than {max_depth} levels")
        elif ch in (0x5D, 0x7D):
            depth -= 1

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise Refused(400, "the body has a duplicate key: " + next(k for k in keys if keys.count(k) > 1)[:40])
        return dict(pairs)

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, 'the body is not valid JSON; it must be a JSON object: '
                           '{"decision": "confirm|reject|unsure", "note": "..."}') from None


def safe_next(target: str) -> str:
    """A local path to go to after sign-in (never another site: `//host`, `/\\host`)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"
