"""The payload schemas of every MQTT message, and their one validator: pure functions on bytes and dicts.

Schemas: match event (`edge-event/1`), ack (`edge-ack/1`), status (`edge-status/1`), watchlist state
(`edge-watchlist-state/1`) and watchlist offer (`edge-wl-offer/2`). Every payload is compact UTF-8 JSON with a
`schema` tag and is validated strictly on both ends: size limit, no duplicate keys, no NaN, required fields with
types and ranges, unknown fields refused. Every refusal is a `PayloadError` whose message names the cause.

A match event is a *candidate for human review*, never a verdict (`review_required` is always true), and it never
carries image bytes in clear: the only image it may carry is an optional thumbnail sealed to the operator's X25519
key (`edge.messaging.thumbnail`). The device makes a `MatchEvent` (`new_event`); it is validated once, when the
outbox encodes it (`encode_event`); a re-send only stamps `published_at` into the stored bytes.

Modules: this one holds the event, ack and status schemas; `edge.messaging.watchlist_payloads` the watchlist
state and offer (importable from here too); `edge.messaging.payload_checks` the validator's parts both use.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from edge.ids import uuid7, uuid7_unix_ms
from edge.messaging.payload_checks import (PayloadError, check_fields, check_schema, dump_object, is_num, load_object,
                                           need_int, need_num, need_str, no_control_strings, show)
from edge.messaging.topics import DEVICE_ID, is_int
from edge.messaging.watchlist_payloads import (MAX_CHUNKS, MAX_OFFER_BYTES, MAX_OFFER_RECIPIENTS,
                                               MAX_WATCHLIST_STATE_BYTES, OFFER_SCHEMA, WATCHLIST_STATE_SCHEMA,
                                               WATCHLIST_STATES, Offer, WatchlistState, decode_watchlist_state,
                                               encode_offer, encode_watchlist_state, parse_offer)
from edge.types import MatchEvent

#: The schema API, the watchlist payloads' names included (they are importable from here).
__all__ = ["ACK_SCHEMA", "EVENT_SCHEMA", "MAX_ACK_BYTES", "MAX_ACK_SEQS", "MAX_CHUNKS", "MAX_EVENT_BYTES",
           "MAX_OFFER_BYTES", "MAX_OFFER_RECIPIENTS", "MAX_STATUS_BYTES", "MAX_THUMBNAIL_BYTES",
           "MAX_WATCHLIST_STATE_BYTES", "OFFER_SCHEMA", "Offer", "PayloadError", "STATUS_SCHEMA", "Status",
           "THUMBNAIL_ALG", "WATCHLIST_STATES", "WATCHLIST_STATE_SCHEMA", "WatchlistState", "decode_ack",
           "decode_event", "decode_status", "decode_watchlist_state", "encode_ack", "encode_event", "encode_offer",
           "encode_status", "encode_watchlist_state", "make_event", "new_event", "parse_offer", "stamp_published",
           "uuid7", "uuid7_unix_ms", "validate_event"]

EVENT_SCHEMA = "edge-event/1"
ACK_SCHEMA = "edge-ack/1"
STATUS_SCHEMA = "edge-status/1"
#: Payload size limits in bytes. An event with an encrypted thumbnail of MAX_THUMBNAIL_BYTES still fits.
MAX_EVENT_BYTES = 16 * 1024
MAX_ACK_BYTES = 256 * 1024
MAX_STATUS_BYTES = 64 * 1024
MAX_ACK_SEQS = 10_000
MAX_THUMBNAIL_BYTES = 9 * 1024
THUMBNAIL_ALG = "X25519-HKDF-SHA256/AES-256-GCM"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


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
              quality: dict[str, Any], label: str | None = None, category: str | None = None,
              thumbnail: dict[str, Any] | None = None, thumbnail2: dict[str, Any] | None = None,
              event_id: str | None = None) -> MatchEvent:
    """A `MatchEvent` with a fresh UUIDv7 `event_id` unless given (not validated yet: `encode_event` does that,
    once). thumbnail / thumbnail2: the track's best and second-best face chip, sealed (`seal_evidence`)."""
    return MatchEvent(event_id or str(uuid7()), device_id, captured_at, subject_id, watchlist_id, watchlist_version,
                      embedder_id, similarity, threshold, margin, track_id, chips_used, quality, label, category,
                      thumbnail, thumbnail2)


def make_event(*, seq: int | None = None, **fields: Any) -> dict[str, Any]:
    """A validated edge-event/1 dict (`new_event`'s fields; `review_required: true`) — for callers that want the
    JSON form at once. seq: None until `Outbox.add` assigns it. Raises PayloadError naming the first bad field."""
    return validate_event(new_event(**fields).to_json(seq), allow_no_seq=True)


def validate_event(event: object, allow_no_seq: bool = False) -> dict[str, Any]:
    """`event` if it satisfies edge-event/1 (see module docstring), else PayloadError naming the problem."""
    what = "event"
    if not isinstance(event, dict):
        raise PayloadError(f"event must be a JSON object, got {type(event).__name__}")
    check_schema(event, what, EVENT_SCHEMA)
    check_fields(event, what, _EVENT_REQUIRED, _EVENT_OPTIONAL)
    if event["review_required"] is not True:
        raise PayloadError("event field 'review_required' must be true: an event is a candidate for human review,"
                           " never a verdict")
    if not isinstance(event["event_id"], str) or not _UUID.match(event["event_id"]):
        raise PayloadError(f"event field 'event_id' must be a lowercase UUIDv7 string, got {show(event['event_id'])}")
    if not (allow_no_seq and event["seq"] is None):
        need_int(event, "seq", what, 1)
    if not isinstance(event["device_id"], str) or not DEVICE_ID.match(event["device_id"]):
        raise PayloadError(f"event field 'device_id' must be 1-64 characters from A-Z a-z 0-9 . _ -,"
                           f" got {show(event['device_id'])}")
    need_num(event, "captured_at", what, 0, 1e11)
    need_num(event, "published_at", what, 0, 1e11, nullable=True)
    for key in ("subject_id", "watchlist_id", "embedder_id"):
        need_str(event, key, what)
    need_int(event, "watchlist_version", what, 1)
    need_num(event, "similarity", what, -1, 1)
    need_num(event, "threshold", what, -1, 1)
    need_num(event, "margin", what, 0, 2)
    need_int(event, "track_id", what, 0)
    need_int(event, "chips_used", what, 1)
    _check_quality(event["quality"])
    for key in ("label", "category"):
        if key in event:
            need_str(event, key, what, nullable=True)
    for key in ("thumbnail", "thumbnail2"):
        if event.get(key) is not None:
            _check_thumbnail(event[key])
    return event


def _check_quality(quality: object) -> None:
    if not isinstance(quality, dict) or len(quality) > 32:
        raise PayloadError(f"event field 'quality' must be an object of at most 32 figures, got {show(quality)}")
    for key, value in quality.items():
        scalar = value is None or isinstance(value, (bool, str)) or is_num(value)
        if not isinstance(key, str) or len(key) > 64 or not scalar:
            raise PayloadError(f"event field 'quality.{str(key)[:64]}' must be a number, string, boolean or null,"
                               f" got {show(value)}")
        if isinstance(value, str):
            need_str(quality, key, "event quality")


def encode_event(event: dict[str, Any] | MatchEvent, seq: int | None = None) -> bytes:
    """Validate `event` (with `seq` given here or in the dict: required) and encode it as compact UTF-8 JSON of at
    most MAX_EVENT_BYTES. The device's one validation of an event, when it enters the outbox."""
    obj = event.to_json(seq) if isinstance(event, MatchEvent) else event if seq is None else {**event, "seq": seq}
    # Top-level fields in schema order: scalars first, so the seq and published_at splices hit the top level.
    obj = {**{k: obj[k] for k in _EVENT_ORDER if k in obj}, **{k: v for k, v in obj.items() if k not in _EVENT_ORDER}}
    # room for the sender to stamp published_at into the stored bytes and stay within the consumer's limit
    return dump_object(validate_event(obj), "event", MAX_EVENT_BYTES - _STAMP_ROOM)


def decode_event(data: bytes) -> dict[str, Any]:
    """Parse and validate an edge-event/1 payload; PayloadError on anything else."""
    return validate_event(load_object(data, "event", MAX_EVENT_BYTES))


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
    check_fields(thumb, "event thumbnail", {"alg", "ephemeral_public", "nonce", "ciphertext"})
    if thumb["alg"] != THUMBNAIL_ALG:
        raise PayloadError(f"event thumbnail alg {show(thumb['alg'])} is not supported (expected {THUMBNAIL_ALG})")
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


# ---------------------------------------------------------------------------------------------------- ack, status

def encode_ack(seqs: list[int]) -> bytes:
    """{"schema": "edge-ack/1", "seqs": [...]}: 0–10,000 event seqs (integers ≥ 1) the consumer has stored."""
    return dump_object(_check_ack({"schema": ACK_SCHEMA, "seqs": list(seqs)}), "ack", MAX_ACK_BYTES)


def decode_ack(data: bytes) -> list[int]:
    """The acknowledged seqs, sorted and unique."""
    return sorted(set(_check_ack(load_object(data, "ack", MAX_ACK_BYTES))["seqs"]))


def _check_ack(obj: dict[str, Any]) -> dict[str, Any]:
    check_schema(obj, "ack", ACK_SCHEMA)
    check_fields(obj, "ack", {"schema", "seqs"})
    seqs = obj["seqs"]
    if not isinstance(seqs, list) or len(seqs) > MAX_ACK_SEQS:
        raise PayloadError(f"ack field 'seqs' must be a list of at most {MAX_ACK_SEQS} seqs, got "
                           f"{f'{len(seqs)} seqs' if isinstance(seqs, list) else show(seqs)}")
    for seq in seqs:
        if not is_int(seq, 1):
            raise PayloadError(f"ack seqs must be integers in [1, 2^63-1], got {show(seq)}")
    return obj


@dataclass(frozen=True)
class Status:
    """A device's retained status: state "online" (with health figures) or "offline" (the broker's last will)."""

    state: Literal["online", "offline"]
    health: dict[str, Any]


def encode_status(state: str, health: dict[str, Any] | None = None) -> bytes:
    """{"schema": "edge-status/1", "state": ..., "health": {...}} (health: any JSON object, ≤ 64 KiB in all)."""
    return dump_object(_check_status({"schema": STATUS_SCHEMA, "state": state, "health": {} if health is None
                                 else health}), "status", MAX_STATUS_BYTES)


def decode_status(data: bytes) -> Status:
    obj = _check_status(load_object(data, "status", MAX_STATUS_BYTES))
    return Status(obj["state"], obj["health"])


def _check_status(obj: dict[str, Any]) -> dict[str, Any]:
    check_schema(obj, "status", STATUS_SCHEMA)
    check_fields(obj, "status", {"schema", "state", "health"})
    if obj["state"] not in ("online", "offline"):
        raise PayloadError(f"status field 'state' must be 'online' or 'offline', got {show(obj['state'])}")
    if not isinstance(obj["health"], dict):
        raise PayloadError(f"status field 'health' must be a JSON object, got {show(obj['health'])}")
    no_control_strings(obj["health"], "status field 'health'")
    return obj
