"""The payload schemas of every MQTT message, and their one validator: pure functions on bytes and dicts.

Schemas: match event (`edge-event/1`), ack (`edge-ack/1`), status (`edge-status/1`), watchlist state
(`edge-watchlist-state/1`) and watchlist offer (`edge-wl-offer/2`). Every payload is compact UTF-8 JSON with a
`schema` tag and is validated strictly on both ends: size limit, no duplicate keys, no NaN, required fields with
types and ranges, unknown fields refused. Every refusal is a `PayloadError` whose message names the cause.

A match event is a *candidate for human review*, never a verdict (`review_required` is always true), and it never
carries image bytes in clear: the only image it may carry is an optional thumbnail sealed to the operator's X25519
key (`edge.messaging.thumbnail`). The device makes a `MatchEvent` (`new_event`); it is validated once, when the
outbox encodes it (`encode_event`); a re-send only stamps `published_at` into the stored bytes.

Lines: one strict validator and the five schemas it checks belong together; split, its private helpers would become API.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from edge.errors import EdgeError
from edge.ids import uuid7, uuid7_unix_ms  # noqa: F401 - part of the event schema's API
from edge.messaging.topics import DEVICE_ID as _DEVICE_ID
from edge.messaging.topics import is_int as _is_int
from edge.types import MatchEvent

EVENT_SCHEMA = "edge-event/1"
ACK_SCHEMA = "edge-ack/1"
STATUS_SCHEMA = "edge-status/1"
WATCHLIST_STATE_SCHEMA = "edge-watchlist-state/1"
OFFER_SCHEMA = "edge-wl-offer/2"
#: Payload size limits in bytes. An event with an encrypted thumbnail of MAX_THUMBNAIL_BYTES still fits.
MAX_EVENT_BYTES = 16 * 1024
MAX_ACK_BYTES = 256 * 1024
MAX_STATUS_BYTES = 64 * 1024
MAX_WATCHLIST_STATE_BYTES = 4 * 1024
MAX_OFFER_BYTES = 1 << 20
MAX_ACK_SEQS = 10_000
MAX_THUMBNAIL_BYTES = 9 * 1024
#: Most chunks one watchlist offer may announce.
MAX_CHUNKS = 4096
THUMBNAIL_ALG = "X25519-HKDF-SHA256/AES-256-GCM"
#: States a device reports on <device>/watchlist/state.
WATCHLIST_STATES = ("installed", "rejected", "stale", "none", "wiped")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
#: C0 and C1 control characters (ESC starts a terminal escape sequence), DEL, and the bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, and the raw signatures as text.
_IMAGE_MARKERS = ("/9j/", "iVBORw0KGgo", "data:image", "\xff\xd8\xff", "\x89PNG")
_IMAGE_WORDS = ("jpeg", "jpg", "png", "image", "img", "photo", "picture", "snapshot", "crop", "chip_pixels")


class PayloadError(EdgeError):
    """An MQTT payload is refused: too large, not UTF-8 JSON, wrong schema, or a field is missing or out of range."""


# ------------------------------------------------------------------------------------------------ shared checking

def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise PayloadError(f"duplicate key {dup!r}")
    return obj


def _reject_constant(name: str) -> None:
    raise PayloadError(f"{name} is not a JSON number")


def _loads(data: object, what: str, limit: int) -> dict:
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
        raise PayloadError(f"{what} payload is not UTF-8 text ({err.reason})") from None
    except PayloadError as err:
        raise PayloadError(f"{what} payload is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:
        raise PayloadError(f"{what} payload is not valid JSON: {str(err) or type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} payload must be a JSON object, got {type(obj).__name__}")
    return obj


def _dumps(obj: dict, what: str, limit: int) -> bytes:
    try:
        raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeError) as err:
        raise PayloadError(f"{what} cannot be encoded as JSON: {err}") from None
    if len(raw) > limit:
        raise PayloadError(f"{what} payload is {len(raw)} bytes; the limit is {limit} bytes")
    return raw


def _check_schema(obj: dict, what: str, expected: str) -> None:
    schema = obj.get("schema")
    if schema == expected:
        return
    if "schema" not in obj:
        raise PayloadError(f"{what} has no 'schema' field (expected {expected!r})")
    family = expected.split("/")[0] + "/"
    if isinstance(schema, str) and schema.startswith(family):
        raise PayloadError(f"{what} schema {_show(schema)} is not supported (this device understands {expected})")
    raise PayloadError(f"{what} schema {_show(schema)} is not {expected!r}")


def _check_fields(obj: dict, what: str, required: set[str], optional: set[str] = frozenset()) -> None:
    for key in obj:
        if key not in required and key not in optional:
            if what == "event" and any(word in str(key).lower() for word in _IMAGE_WORDS):
                raise PayloadError(f"event field {key!r} is refused: events never carry image bytes in clear"
                                   " (use an encrypted 'thumbnail')")
            raise PayloadError(f"{what} has unknown field {_show(key)}")
    missing = sorted(required - obj.keys())
    if missing:
        raise PayloadError(f"{what} has no {missing[0]!r} field")


def _need_str(obj: dict, key: str, what: str, max_len: int = 256, nullable: bool = False) -> None:
    value = obj[key]
    if value is None and nullable:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise PayloadError(f"{what} field {key!r} must be a string of 1-{max_len} characters"
                           f"{' or null' if nullable else ''}, got {_show(value)}")
    if any(marker in value for marker in _IMAGE_MARKERS):
        raise PayloadError(f"{what} field {key!r} looks like image data; images never travel in clear")
    if _CONTROL.search(value):
        raise PayloadError(f"{what} field {key!r} contains control characters (e.g. terminal escape sequences)")


def _need_int(obj: dict, key: str, what: str, low: int) -> None:
    if not _is_int(obj[key], low):
        raise PayloadError(f"{what} field {key!r} must be an integer ≥ {low}, got {_show(obj[key])}")


def _need_num(obj: dict, key: str, what: str, low: float, high: float, nullable: bool = False) -> None:
    value = obj[key]
    if value is None and nullable:
        return
    if not _is_num(value) or not low <= value <= high:
        raise PayloadError(f"{what} field {key!r} must be a number in [{low:g}, {high:g}]"
                           f"{' or null' if nullable else ''}, got {_show(value)}")


def _show(value: object) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------------- events

_EVENT_REQUIRED = {"schema", "event_id", "seq", "device_id", "captured_at", "published_at", "subject_id",
                   "watchlist_id", "watchlist_version", "embedder_id", "similarity", "threshold", "margin",
                   "track_id", "chips_used", "quality", "review_required"}
_EVENT_OPTIONAL = {"label", "category", "thumbnail", "thumbnail2"}
_EVENT_ORDER = ("schema", "event_id", "seq", "device_id", "captured_at", "published_at", "subject_id", "watchlist_id",
                "watchlist_version", "embedder_id", "similarity", "threshold", "margin", "track_id", "chips_used",
                "quality", "review_required", "label", "category", "thumbnail", "thumbnail2")


def new_event(*, device_id: str, captured_at: float, subject_id: str, watchlist_id: str, watchlist_version: int,
              embedder_id: str, similarity: float, threshold: float, margin: float, track_id: int, chips_used: int,
              quality: dict, label: str | None = None, category: str | None = None,
              thumbnail: dict | None = None, thumbnail2: dict | None = None,
              event_id: str | None = None) -> MatchEvent:
    """A `MatchEvent` with a fresh UUIDv7 `event_id` unless given (not validated yet: `encode_event` does that,
    once). thumbnail / thumbnail2: the track's best and second-best face chip, sealed (`seal_evidence`)."""
    return MatchEvent(event_id or str(uuid7()), device_id, captured_at, subject_id, watchlist_id, watchlist_version,
                      embedder_id, similarity, threshold, margin, track_id, chips_used, quality, label, category,
                      thumbnail, thumbnail2)


def make_event(*, seq: int | None = None, **fields: Any) -> dict:
    """A validated edge-event/1 dict (`new_event`'s fields; `review_required: true`) — for callers that want the
    JSON form at once. seq: None until `Outbox.add` assigns it. Raises PayloadError naming the first bad field."""
    return validate_event(new_event(**fields).to_json(seq), allow_no_seq=True)


def validate_event(event: object, allow_no_seq: bool = False) -> dict:
    """`event` if it satisfies edge-event/1 (see module docstring), else PayloadError naming the problem."""
    what = "event"
    if not isinstance(event, dict):
        raise PayloadError(f"event must be a JSON object, got {type(event).__name__}")
    _check_schema(event, what, EVENT_SCHEMA)
    _check_fields(event, what, _EVENT_REQUIRED, _EVENT_OPTIONAL)
    if event["review_required"] is not True:
        raise PayloadError("event field 'review_required' must be true: an event is a candidate for human review,"
                           " never a verdict")
    if not isinstance(event["event_id"], str) or not _UUID.match(event["event_id"]):
        raise PayloadError(f"event field 'event_id' must be a lowercase UUIDv7 string, got {_show(event['event_id'])}")
    if not (allow_no_seq and event["seq"] is None):
        _need_int(event, "seq", what, 1)
    if not isinstance(event["device_id"], str) or not _DEVICE_ID.match(event["device_id"]):
        raise PayloadError(f"event field 'device_id' must be 1-64 characters from A-Z a-z 0-9 . _ -,"
                           f" got {_show(event['device_id'])}")
    _need_num(event, "captured_at", what, 0, 1e11)
    _need_num(event, "published_at", what, 0, 1e11, nullable=True)
    for key in ("subject_id", "watchlist_id", "embedder_id"):
        _need_str(event, key, what)
    _need_int(event, "watchlist_version", what, 1)
    _need_num(event, "similarity", what, -1, 1)
    _need_num(event, "threshold", what, -1, 1)
    _need_num(event, "margin", what, 0, 2)
    _need_int(event, "track_id", what, 0)
    _need_int(event, "chips_used", what, 1)
    _check_quality(event["quality"])
    for key in ("label", "category"):
        if key in event:
            _need_str(event, key, what, nullable=True)
    for key in ("thumbnail", "thumbnail2"):
        if event.get(key) is not None:
            _check_thumbnail(event[key])
    return event


def _check_quality(quality: object) -> None:
    if not isinstance(quality, dict) or len(quality) > 32:
        raise PayloadError(f"event field 'quality' must be an object of at most 32 figures, got {_show(quality)}")
    for key, value in quality.items():
        scalar = value is None or isinstance(value, (bool, str)) or _is_num(value)
        if not isinstance(key, str) or len(key) > 64 or not scalar:
            raise PayloadError(f"event field 'quality.{str(key)[:64]}' must be a number, string, boolean or null,"
                               f" got {_show(value)}")
        if isinstance(value, str):
            _need_str(quality, key, "event quality")


def encode_event(event: dict | MatchEvent, seq: int | None = None) -> bytes:
    """Validate `event` (with `seq` given here or in the dict: required) and encode it as compact UTF-8 JSON of at
    most MAX_EVENT_BYTES. The device's one validation of an event, when it enters the outbox."""
    obj = event.to_json(seq) if isinstance(event, MatchEvent) else event if seq is None else {**event, "seq": seq}
    # Top-level fields in schema order: scalars first, so the seq and published_at splices hit the top level.
    obj = {**{k: obj[k] for k in _EVENT_ORDER if k in obj}, **{k: v for k, v in obj.items() if k not in _EVENT_ORDER}}
    # room for the sender to stamp published_at into the stored bytes and stay within the consumer's limit
    return _dumps(validate_event(obj), "event", MAX_EVENT_BYTES - _STAMP_ROOM)


def decode_event(data: bytes) -> dict:
    """Parse and validate an edge-event/1 payload; PayloadError on anything else."""
    return validate_event(_loads(data, "event", MAX_EVENT_BYTES))


_UNPUBLISHED = b'"published_at":null'
_STAMP_ROOM = 32  # bytes: a Unix time in seconds as JSON, e.g. 1764590000.123456, replacing `null`


def stamp_published(data: bytes, published_at: float) -> bytes:
    """The encoded event `data` (from `encode_event`) with `published_at` (Unix seconds) set, for the sender at
    publish time: a splice of the stored bytes, no re-validation. The first `"published_at":null` is the top-level
    field: it precedes every nested object, and a quote inside a JSON string is always escaped."""
    at = data.find(_UNPUBLISHED)
    if at < 0:
        raise PayloadError("event payload has no unset published_at field (not made by encode_event?)")
    value = json.dumps(float(published_at), allow_nan=False).encode()
    return data[:at] + b'"published_at":' + value + data[at + len(_UNPUBLISHED):]


def _check_thumbnail(thumb: object) -> dict[str, bytes]:
    if not isinstance(thumb, dict):
        raise PayloadError("event field 'thumbnail' must be an encrypted object (alg, ephemeral_public, nonce,"
                           " ciphertext); raw image data is refused")
    _check_fields(thumb, "event thumbnail", {"alg", "ephemeral_public", "nonce", "ciphertext"})
    if thumb["alg"] != THUMBNAIL_ALG:
        raise PayloadError(f"event thumbnail alg {_show(thumb['alg'])} is not supported (expected {THUMBNAIL_ALG})")
    raw: dict[str, bytes] = {}
    for key, low, high in (("ephemeral_public", 32, 32), ("nonce", 12, 12),
                           ("ciphertext", 17, MAX_THUMBNAIL_BYTES + 16)):
        try:
            raw[key] = base64.b64decode(thumb[key], validate=True) if isinstance(thumb[key], str) else b""
        except (binascii.Error, ValueError):
            raw[key] = b""
        if not low <= len(raw[key]) <= high:
            raise PayloadError(f"event thumbnail field {key!r} must be base64 of {low}"
                               f"{'' if low == high else f'-{high}'} bytes")
    return raw


# ----------------------------------------------------------------------------------------- ack, status, watchlist

def encode_ack(seqs: list[int]) -> bytes:
    """{"schema": "edge-ack/1", "seqs": [...]}: 0–10,000 event seqs (integers ≥ 1) the consumer has stored."""
    return _dumps(_check_ack({"schema": ACK_SCHEMA, "seqs": list(seqs)}), "ack", MAX_ACK_BYTES)


def decode_ack(data: bytes) -> list[int]:
    """The acknowledged seqs, sorted and unique."""
    return sorted(set(_check_ack(_loads(data, "ack", MAX_ACK_BYTES))["seqs"]))


def _check_ack(obj: dict) -> dict:
    _check_schema(obj, "ack", ACK_SCHEMA)
    _check_fields(obj, "ack", {"schema", "seqs"})
    seqs = obj["seqs"]
    if not isinstance(seqs, list) or len(seqs) > MAX_ACK_SEQS:
        raise PayloadError(f"ack field 'seqs' must be a list of at most {MAX_ACK_SEQS} seqs, got "
                           f"{f'{len(seqs)} seqs' if isinstance(seqs, list) else _show(seqs)}")
    for seq in seqs:
        if not _is_int(seq, 1):
            raise PayloadError(f"ack seqs must be integers in [1, 2^63-1], got {_show(seq)}")
    return obj


@dataclass(frozen=True)
class Status:
    """A device's retained status: state "online" (with health figures) or "offline" (the broker's last will)."""

    state: Literal["online", "offline"]
    health: dict


def encode_status(state: str, health: dict | None = None) -> bytes:
    """{"schema": "edge-status/1", "state": ..., "health": {...}} (health: any JSON object, ≤ 64 KiB in all)."""
    return _dumps(_check_status({"schema": STATUS_SCHEMA, "state": state, "health": {} if health is None
                                 else health}), "status", MAX_STATUS_BYTES)


def decode_status(data: bytes) -> Status:
    obj = _check_status(_loads(data, "status", MAX_STATUS_BYTES))
    return Status(obj["state"], obj["health"])


def _check_status(obj: dict) -> dict:
    _check_schema(obj, "status", STATUS_SCHEMA)
    _check_fields(obj, "status", {"schema", "state", "health"})
    if obj["state"] not in ("online", "offline"):
        raise PayloadError(f"status field 'state' must be 'online' or 'offline', got {_show(obj['state'])}")
    if not isinstance(obj["health"], dict):
        raise PayloadError(f"status field 'health' must be a JSON object, got {_show(obj['health'])}")
    _no_control_strings(obj["health"], "status field 'health'")
    return obj


def _no_control_strings(value: Any, what: str) -> None:
    """Refuse a control character (NUL included: PostgreSQL text cannot hold it) in any string or key of a decoded
    JSON value (its depth is already bounded by the size limit and the parser)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _CONTROL.search(v):
                raise PayloadError(f"{what} contains control characters")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


@dataclass(frozen=True)
class WatchlistState:
    """What a device reports after a sync: its installed version (None if none) and the outcome.

    state: "installed" (version now live), "rejected" (reason = a BundleError code), "stale" (the installed
    watchlist expired), "none" (nothing installed), "wiped" (dropped by a signed wipe statement). message: one human-readable line, or None.
    """

    installed_version: int | None
    state: str
    reason: str | None = None
    message: str | None = None


def encode_watchlist_state(installed_version: int | None, state: str, reason: str | None = None,
                           message: str | None = None) -> bytes:
    obj = {"schema": WATCHLIST_STATE_SCHEMA, "installed_version": installed_version, "state": state,
           "reason": reason, "message": message}
    return _dumps(_check_watchlist_state(obj), "watchlist state", MAX_WATCHLIST_STATE_BYTES)


def decode_watchlist_state(data: bytes) -> WatchlistState:
    obj = _check_watchlist_state(_loads(data, "watchlist state", MAX_WATCHLIST_STATE_BYTES))
    return WatchlistState(obj["installed_version"], obj["state"], obj["reason"], obj["message"])


def _check_watchlist_state(obj: dict) -> dict:
    what = "watchlist state"
    _check_schema(obj, what, WATCHLIST_STATE_SCHEMA)
    _check_fields(obj, what, {"schema", "installed_version", "state", "reason", "message"})
    state, version, reason = obj["state"], obj["installed_version"], obj["reason"]
    if state not in WATCHLIST_STATES:
        raise PayloadError(f"watchlist state field 'state' must be one of {', '.join(WATCHLIST_STATES)},"
                           f" got {_show(state)}")
    if version is not None:
        _need_int(obj, "installed_version", what, 1)
    if state in ("installed", "stale") and version is None:
        raise PayloadError(f"watchlist state {state!r} needs an installed_version")
    if state in ("none", "wiped") and version is not None:
        raise PayloadError(f"watchlist state {state!r} cannot have an installed_version")
    if reason is not None and (not isinstance(reason, str) or not _TOKEN.match(reason)):
        raise PayloadError(f"watchlist state field 'reason' must be a short code like 'bad_signature',"
                           f" got {_show(reason)}")
    if state == "rejected" and reason is None:
        raise PayloadError("watchlist state 'rejected' needs a reason")
    if obj["message"] is not None:
        _need_str(obj, "message", what, max_len=1024)
    return obj


# ------------------------------------------------------------------------------------------- watchlist offer

@dataclass(frozen=True)
class Offer:
    """A parsed (untrusted) watchlist offer: its audience ("device:<id>" / "group:<name>"), version, base version
    (a delta's; None for a full bundle), the bundle's sha256 (hex) and size in bytes, the chunk size in bytes, the
    sha256 (hex) of every chunk, and the device ids it is sealed for (a hint: the signed manifest decides)."""

    audience: str
    version: int
    base: int | None
    bundle_sha256: str
    bundle_bytes: int
    chunk_bytes: int
    chunks: list[str]
    recipients: list[str]


_AUDIENCE = re.compile(r"(device|group):[A-Za-z0-9._-]{1,64}\Z")
#: Most recipients an offer may list (as many as a bundle manifest may hold).
MAX_OFFER_RECIPIENTS = 4096


def encode_offer(audience: str, version: int, bundle_sha256: str, bundle_bytes: int, chunk_bytes: int,
                 chunks: list[str], base: int | None = None, recipients: list[str] | None = None) -> bytes:
    """{"schema": "edge-wl-offer/2", ...}: the retained announcement of a bundle's chunks for a device or group."""
    obj = {"schema": OFFER_SCHEMA, "audience": audience, "version": version, "base": base,
           "bundle_sha256": bundle_sha256, "bundle_bytes": bundle_bytes, "chunk_bytes": chunk_bytes,
           "chunks": list(chunks), "recipients": sorted(recipients or [])}
    _check_offer(obj, audience)
    return _dumps(obj, "watchlist offer", MAX_OFFER_BYTES)


def parse_offer(data: bytes, audience: str) -> Offer:
    """Parse and validate an offer that arrived on `audience`'s topics; PayloadError naming the problem."""
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_OFFER_BYTES:
        raise PayloadError(f"watchlist offer of {len(data)} bytes exceeds the limit of {MAX_OFFER_BYTES} bytes")
    obj = _check_offer(_loads(data, "watchlist offer", MAX_OFFER_BYTES), audience)
    return Offer(obj["audience"], obj["version"], obj["base"], obj["bundle_sha256"], obj["bundle_bytes"],
                 obj["chunk_bytes"], list(obj["chunks"]), list(obj["recipients"]))


def _check_offer(obj: dict, audience: str) -> dict:
    what = "watchlist offer"
    _check_schema(obj, what, OFFER_SCHEMA)
    _check_fields(obj, what, {"schema", "audience", "version", "base", "bundle_sha256", "bundle_bytes",
                              "chunk_bytes", "chunks", "recipients"})
    if obj["audience"] != audience:
        raise PayloadError(f"watchlist offer is for {_show(obj['audience'])}, not {audience!r}")
    for key in ("version", "bundle_bytes", "chunk_bytes"):
        _need_int(obj, key, what, 1)
    if obj["base"] is not None:
        _need_int(obj, "base", what, 1)
        if obj["base"] >= obj["version"]:
            raise PayloadError(f"watchlist offer of a delta v{obj['version']} names a base that is not older")
    if not isinstance(obj["bundle_sha256"], str) or not _SHA256.match(obj["bundle_sha256"]):
        raise PayloadError(f"watchlist offer field 'bundle_sha256' must be 64 lowercase hex digits,"
                           f" got {_show(obj['bundle_sha256'])}")
    chunks = obj["chunks"]
    if not isinstance(chunks, list) or not 0 < len(chunks) <= MAX_CHUNKS \
            or not all(isinstance(c, str) and _SHA256.match(c) for c in chunks):
        raise PayloadError(f"watchlist offer field 'chunks' must list 1-{MAX_CHUNKS} sha256 hex digests")
    if len(chunks) != -(-obj["bundle_bytes"] // obj["chunk_bytes"]):
        raise PayloadError(f"watchlist offer is inconsistent: {obj['bundle_bytes']} bytes in chunks of"
                           f" {obj['chunk_bytes']} need {-(-obj['bundle_bytes'] // obj['chunk_bytes'])} chunks, not"
                           f" {len(chunks)}")
    recipients = obj["recipients"]
    if not isinstance(recipients, list) or len(recipients) > MAX_OFFER_RECIPIENTS \
            or not all(isinstance(r, str) and _DEVICE_ID.match(r) for r in recipients):
        raise PayloadError(f"watchlist offer field 'recipients' must list at most {MAX_OFFER_RECIPIENTS} device ids")
    return obj
