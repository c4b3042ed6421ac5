"""The parts of the one strict validator every MQTT payload schema (`edge.messaging.payloads`,
`edge.messaging.watchlist_payloads`) is checked with: bounded strict JSON in and out, the `schema` tag, the field
set, typed and bounded fields, and `PayloadError`, whose message names the cause."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edge.errors import EdgeError
from edge.messaging.topics import is_int

#: C0 and C1 control characters (ESC starts a terminal escape sequence), DEL, and the bidirectional overrides.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, and the raw signatures as text.
_IMAGE_MARKERS = ("/9j/", "iVBORw0KGgo", "data:image", "\xff\xd8\xff", "\x89PNG")
_IMAGE_WORDS = ("jpeg", "jpg", "png", "image", "img", "photo", "picture", "snapshot", "crop", "chip_pixels")


class PayloadError(EdgeError):
    """An MQTT payload is refused: too large, not UTF-8 JSON, wrong schema, or a field is missing or out of range."""


def is_num(value: object) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        # set.add returns None: `or` records the key and goes on
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise PayloadError(f"duplicate key {dup!r}")
    return obj


def _reject_constant(name: str) -> None:
    raise PayloadError(f"{name} is not a JSON number")


def load_object(data: object, what: str, limit: int) -> dict[str, Any]:
    """Parse `data` (bytes) as one UTF-8 JSON object of at most `limit` bytes, or PayloadError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"{what} payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        raise PayloadError(f"{what} payload is {len(data)} bytes; the limit is {limit} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        # 1e400 parses as inf and a lone \ud800 escape as a surrogate: neither survives re-encoding, so refuse now.
        json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeError as err:
        reason = getattr(err, "reason", None) or str(err)
        raise PayloadError(f"{what} payload is not UTF-8 text ({reason})") from None
    except PayloadError as err:
        raise PayloadError(f"{what} payload is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:
        raise PayloadError(f"{what} payload is not valid JSON: {str(err) or type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} payload must be a JSON object, got {type(obj).__name__}")
    return obj


def dump_object(obj: dict[str, Any], what: str, limit: int) -> bytes:
    """`obj` as compact UTF-8 JSON of at most `limit` bytes, or PayloadError."""
    try:
        raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeError) as err:
        raise PayloadError(f"{what} cannot be encoded as JSON: {err}") from None
    if len(raw) > limit:
        raise PayloadError(f"{what} payload is {len(raw)} bytes; the limit is {limit} bytes")
    return raw


def check_schema(obj: dict[str, Any], what: str, expected: str) -> None:
    """PayloadError unless obj["schema"] is `expected` (naming a newer version of the family as such)."""
    schema = obj.get("schema")
    if schema == expected:
        return
    if "schema" not in obj:
        raise PayloadError(f"{what} has no 'schema' field (expected {expected!r})")
    family = expected.split("/")[0] + "/"
    if isinstance(schema, str) and schema.startswith(family):
        raise PayloadError(f"{what} schema {show(schema)} is not supported (this device understands {expected})")
    raise PayloadError(f"{what} schema {show(schema)} is not {expected!r}")


def check_fields(obj: dict[str, Any], what: str, required: set[str],
                 optional: set[str] | frozenset[str] = frozenset()) -> None:
    """PayloadError for an unknown field (an event's image-like field name says why) or a missing required one."""
    for key in obj:
        if key not in required and key not in optional:
            if what == "event" and any(word in str(key).lower() for word in _IMAGE_WORDS):
                raise PayloadError(f"event field {key!r} is refused: events never carry image bytes in clear"
                                   " (use an encrypted 'thumbnail')")
            raise PayloadError(f"{what} has unknown field {show(key)}")
    missing = sorted(required - obj.keys())
    if missing:
        raise PayloadError(f"{what} has no {missing[0]!r} field")


def need_str(obj: dict[str, Any], key: str, what: str, max_len: int = 256, nullable: bool = False) -> None:
    """obj[key] is a string of 1-`max_len` characters (or None when `nullable`), neither image data nor controls."""
    value = obj[key]
    if value is None and nullable:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise PayloadError(f"{what} field {key!r} must be a string of 1-{max_len} characters"
                           f"{' or null' if nullable else ''}, got {show(value)}")
    if any(marker in value for marker in _IMAGE_MARKERS):
        raise PayloadError(f"{what} field {key!r} looks like image data; images never travel in clear")
    if CONTROL.search(value):
        raise PayloadError(f"{what} field {key!r} contains control characters (e.g. terminal escape sequences)")


def need_int(obj: dict[str, Any], key: str, what: str, low: int) -> None:
    """obj[key] is an integer in [`low`, 2^63-1]."""
    if not is_int(obj[key], low):
        raise PayloadError(f"{what} field {key!r} must be an integer ≥ {low}, got {show(obj[key])}")


def need_num(obj: dict[str, Any], key: str, what: str, low: float, high: float, nullable: bool = False) -> None:
    """obj[key] is a finite number in [`low`, `high`] (or None when `nullable`)."""
    value = obj[key]
    if value is None and nullable:
        return
    if not is_num(value) or not low <= value <= high:
        raise PayloadError(f"{what} field {key!r} must be a number in [{low:g}, {high:g}]"
                           f"{' or null' if nullable else ''}, got {show(value)}")


def show(value: object) -> str:
    """A value as a message quotes it: its repr, at most 60 characters."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def no_control_strings(value: Any, what: str) -> None:
    """Refuse a control character (NUL included: PostgreSQL text cannot hold it) in any string or key of a decoded
    JSON value (its depth is already bounded by the size limit and the parser)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if CONTROL.search(v):
                raise PayloadError(f"{what} contains control characters")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
