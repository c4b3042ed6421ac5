"""MQTT topic tree and payload schemas: pure functions on str, bytes and dicts (no network, no paho).

Topics, under a configurable prefix (default `edge`), one subtree per device (DESIGN §6):

    <prefix>/<device>/events                      match events, QoS 1            device → operator
    <prefix>/<device>/events/ack                  {"seqs": [...]} acknowledgements operator → device
    <prefix>/<device>/status                      retained online/offline + health device → operator
    <prefix>/<device>/watchlist/manifest          retained signed manifest       operator → device
    <prefix>/<device>/watchlist/chunk/<ver>/<n>   bundle chunk n of version ver  operator → device
    <prefix>/<device>/watchlist/state             installed version or rejection device → operator

Every payload is compact UTF-8 JSON with a `schema` tag and is validated strictly on both ends: size limit, no
duplicate keys, no NaN, required fields with types and ranges, unknown fields refused. Every refusal is a
`PayloadError` whose message names the cause. A match event is a *candidate for human review*, never a verdict
(`review_required` is always true), and it never carries image bytes in clear: the only image it may carry is an
optional thumbnail encrypted to the operator's X25519 key (off unless the caller encrypts one).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from edge.errors import EdgeError

EVENT_SCHEMA = "edge-event/1"
ACK_SCHEMA = "edge-ack/1"
STATUS_SCHEMA = "edge-status/1"
WATCHLIST_STATE_SCHEMA = "edge-watchlist-state/1"
#: Payload size limits in bytes. An event with an encrypted thumbnail of MAX_THUMBNAIL_BYTES still fits.
MAX_EVENT_BYTES = 16 * 1024
MAX_ACK_BYTES = 256 * 1024
MAX_STATUS_BYTES = 64 * 1024
MAX_WATCHLIST_STATE_BYTES = 4 * 1024
MAX_ACK_SEQS = 10_000
MAX_THUMBNAIL_BYTES = 9 * 1024
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER range
THUMBNAIL_ALG = "X25519-HKDF-SHA256/AES-256-GCM"
_THUMBNAIL_INFO = b"edge-event-thumbnail/1"
#: States a device reports on <device>/watchlist/state.
WATCHLIST_STATES = ("installed", "rejected", "stale", "none")
KINDS = ("events", "events_ack", "status", "watchlist_manifest", "watchlist_chunk", "watchlist_state")

_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_CANONICAL_UINT = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
# Base64 of the JPEG (FF D8 FF) and PNG (89 50 4E 47 0D 0A 1A 0A) signatures, and the raw signatures as text.
_IMAGE_MARKERS = ("/9j/", "iVBORw0KGgo", "data:image", "\xff\xd8\xff", "\x89PNG")
_IMAGE_WORDS = ("jpeg", "jpg", "png", "image", "img", "photo", "picture", "snapshot", "crop", "chip_pixels")


class TopicError(EdgeError):
    """A device id, topic prefix or topic string is not part of our topic tree."""


class PayloadError(EdgeError):
    """An MQTT payload is refused: too large, not UTF-8 JSON, wrong schema, or a field is missing or out of range."""


# ---------------------------------------------------------------------------------------------------------- topics

def check_device_id(device_id: object) -> str:
    """`device_id` if it is 1–64 of [A-Za-z0-9._-] (so never an MQTT wildcard or a level separator)."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise TopicError(f"device id {device_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
                         " (no '+', '#' or '/')")
    return device_id


def _check_prefix(prefix: object) -> str:
    levels = prefix.split("/") if isinstance(prefix, str) else [None]
    if not all(isinstance(lv, str) and _DEVICE_ID.match(lv) for lv in levels):
        raise TopicError(f"topic prefix {prefix!r} is invalid: use '/'-separated levels of 1-64 characters from"
                         " A-Z a-z 0-9 . _ - (no '+', '#', empty or leading/trailing levels)")
    return prefix


class ParsedTopic(NamedTuple):
    """A topic of our tree: kind is one of KINDS; extra is (version, n) for watchlist_chunk, () otherwise."""

    device_id: str
    kind: str
    extra: tuple[int, ...]


_KIND_SUFFIX = {"events": "events", "events_ack": "events/ack", "status": "status",
                "watchlist_manifest": "watchlist/manifest", "watchlist_chunk": "watchlist/chunk/+/+",
                "watchlist_state": "watchlist/state"}
_SUFFIXES = {tuple(suffix.split("/")): kind for kind, suffix in _KIND_SUFFIX.items() if "+" not in suffix}


def parse_topic(topic: str, prefix: str = "edge") -> ParsedTopic:
    """Split a concrete topic of any device under `prefix` (the operator side); TopicError if it is not ours."""
    _check_prefix(prefix)
    head = prefix + "/"
    if not isinstance(topic, str) or not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    device, _, rest = topic[len(head):].partition("/")
    check_device_id(device)
    levels = tuple(rest.split("/"))
    if levels in _SUFFIXES:
        return ParsedTopic(device, _SUFFIXES[levels], ())
    if len(levels) == 4 and levels[:2] == ("watchlist", "chunk") and all(_CANONICAL_UINT.match(x) for x in levels[2:]):
        version, n = int(levels[2]), int(levels[3])
        if version >= 1 and version <= MAX_SEQ and n <= MAX_SEQ:
            return ParsedTopic(device, "watchlist_chunk", (version, n))
    raise TopicError(f"topic {topic!r} is not one of ours: expected {head}<device>/ followed by events, events/ack,"
                     " status, watchlist/manifest, watchlist/chunk/<version ≥ 1>/<n ≥ 0> or watchlist/state")


def operator_filter(kind: str, prefix: str = "edge") -> str:
    """The subscription filter for `kind` across all devices, e.g. `edge/+/events`."""
    if kind not in _KIND_SUFFIX:
        raise TopicError(f"topic kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    return f"{_check_prefix(prefix)}/+/{_KIND_SUFFIX[kind]}"


@dataclass(frozen=True)
class Topics:
    """The topics of one device. `Topics("cam-01")` or `Topics(prefix="site/edge", device_id="cam-01")`."""

    device_id: str
    prefix: str = "edge"

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        _check_prefix(self.prefix)

    def _topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.device_id}/{_KIND_SUFFIX[kind]}"

    @property
    def events(self) -> str:
        return self._topic("events")

    @property
    def events_ack(self) -> str:
        return self._topic("events_ack")

    @property
    def status(self) -> str:
        return self._topic("status")

    @property
    def watchlist_manifest(self) -> str:
        return self._topic("watchlist_manifest")

    @property
    def watchlist_state(self) -> str:
        return self._topic("watchlist_state")

    @property
    def watchlist_chunks(self) -> str:
        """Subscription filter for every chunk of this device: `<prefix>/<device>/watchlist/chunk/+/+`."""
        return self._topic("watchlist_chunk")

    def watchlist_chunk(self, version: int, n: int) -> str:
        """Topic of chunk `n` (≥ 0) of watchlist version `version` (≥ 1)."""
        if not _is_int(version, 1) or not _is_int(n, 0):
            raise TopicError(f"watchlist chunk needs an integer version ≥ 1 and index ≥ 0, got {version!r}/{n!r}")
        return f"{self.prefix}/{self.device_id}/watchlist/chunk/{version}/{n}"

    def parse(self, topic: str) -> ParsedTopic:
        """`parse_topic(topic, self.prefix)`: any device's topic under this prefix."""
        return parse_topic(topic, self.prefix)


# ------------------------------------------------------------------------------------------------ shared checking

def _is_int(value: object, low: int, high: int = MAX_SEQ) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


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


# ------------------------------------------------------------------------------------------------------- UUIDv7

_uuid_lock = threading.Lock()
_uuid_last = [0, 0]  # [unix ms, 12-bit counter] of the last UUID made in this process


def uuid7() -> uuid.UUID:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, 12-bit counter (method 1, random start), variant 10,
    62 random bits. Monotonic within the process: same ms → counter + 1; counter overflow or clock going backwards
    → continue from the last timestamp + 1 ms."""
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid_last
        if ms > last_ms:
            counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # top bit clear leaves room to count
        else:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        _uuid_last[:] = [ms, counter]
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def uuid7_unix_ms(value: uuid.UUID | str) -> int:
    """The 48-bit Unix-millisecond timestamp of a UUIDv7."""
    return (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).int >> 80


# ------------------------------------------------------------------------------------------------------- events

_EVENT_REQUIRED = {"schema", "event_id", "seq", "device_id", "captured_at", "published_at", "subject_id",
                   "watchlist_id", "watchlist_version", "embedder_id", "similarity", "threshold", "margin",
                   "track_id", "chips_used", "quality", "review_required"}
_EVENT_OPTIONAL = {"label", "category", "thumbnail"}


def make_event(*, device_id: str, captured_at: float, subject_id: str, watchlist_id: str, watchlist_version: int,
               embedder_id: str, similarity: float, threshold: float, margin: float, track_id: int,
               chips_used: int, quality: dict, seq: int | None = None, label: str | None = None,
               category: str | None = None, thumbnail: dict | None = None) -> dict:
    """A validated match event (schema edge-event/1) with a fresh UUIDv7 `event_id` and `review_required: true`.

    captured_at / published_at: Unix seconds. similarity, threshold: cosine in [-1, 1]; margin: top minus the best
    other subject, in [0, 2]. seq: the per-device sequence number; None until `Outbox.add` assigns it (the outbox
    is the authority on seq). published_at stays None for the sender to stamp (`stamp_published`). thumbnail:
    only an `encrypt_thumbnail` result. Raises PayloadError naming the first bad field.
    """
    event = {"schema": EVENT_SCHEMA, "event_id": str(uuid7()), "seq": seq, "device_id": device_id,
             "captured_at": captured_at, "published_at": None, "subject_id": subject_id,
             "watchlist_id": watchlist_id, "watchlist_version": watchlist_version, "embedder_id": embedder_id,
             "similarity": similarity, "threshold": threshold, "margin": margin, "track_id": track_id,
             "chips_used": chips_used, "quality": quality, "review_required": True}
    for key, value in (("label", label), ("category", category), ("thumbnail", thumbnail)):
        if value is not None:
            event[key] = value
    validate_event(event, allow_no_seq=True)
    return event


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
    if event.get("thumbnail") is not None:
        _check_thumbnail(event["thumbnail"])
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


def encode_event(event: dict) -> bytes:
    """Validate `event` (seq required) and encode it as compact UTF-8 JSON of at most MAX_EVENT_BYTES."""
    return _dumps(validate_event(event), "event", MAX_EVENT_BYTES)


def decode_event(data: bytes) -> dict:
    """Parse and validate an edge-event/1 payload; PayloadError on anything else."""
    return validate_event(_loads(data, "event", MAX_EVENT_BYTES))


def stamp_published(data: bytes, published_at: float) -> bytes:
    """The encoded event `data` with `published_at` (Unix seconds) set, for the sender at publish time."""
    event = decode_event(data)
    event["published_at"] = published_at
    return encode_event(event)


# --------------------------------------------------------------------------------------------------- thumbnails

def _thumbnail_key(shared: bytes, ephemeral_public: bytes, operator_public: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = _THUMBNAIL_INFO + ephemeral_public + operator_public
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _raw(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encrypt_thumbnail(image: bytes, operator_public: Any) -> dict[str, str]:
    """Seal a JPEG or PNG (≤ MAX_THUMBNAIL_BYTES) to the operator's X25519 public key (object or 32 raw bytes):
    ephemeral X25519 → HKDF-SHA256 → AES-256-GCM. Returns the event's `thumbnail` object (base64 fields)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(image, bytes) or not (image.startswith(b"\xff\xd8\xff") or image.startswith(b"\x89PNG\r\n")):
        raise PayloadError("thumbnail must be JPEG or PNG bytes")
    if len(image) > MAX_THUMBNAIL_BYTES:
        raise PayloadError(f"thumbnail is {len(image)} bytes; the limit is {MAX_THUMBNAIL_BYTES} bytes")
    if isinstance(operator_public, (bytes, bytearray)):
        operator_public = X25519PublicKey.from_public_bytes(bytes(operator_public))
    ephemeral = X25519PrivateKey.generate()
    eph_raw, op_raw = _raw(ephemeral.public_key()), _raw(operator_public)
    key = _thumbnail_key(ephemeral.exchange(operator_public), eph_raw, op_raw)
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, image, THUMBNAIL_ALG.encode())
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return {"alg": THUMBNAIL_ALG, "ephemeral_public": b64(eph_raw), "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


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


def decrypt_thumbnail(thumb: dict, operator_private: Any) -> bytes:
    """The image bytes of an event's `thumbnail`, opened with the operator's X25519 private key."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = _check_thumbnail(thumb)
    shared = operator_private.exchange(X25519PublicKey.from_public_bytes(raw["ephemeral_public"]))
    key = _thumbnail_key(shared, raw["ephemeral_public"], _raw(operator_private.public_key()))
    try:
        return AESGCM(key).decrypt(raw["nonce"], raw["ciphertext"], THUMBNAIL_ALG.encode())
    except InvalidTag:
        raise PayloadError("thumbnail cannot be decrypted with this operator key (wrong key or altered"
                           " ciphertext)") from None


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
    return obj


@dataclass(frozen=True)
class WatchlistState:
    """What a device reports after a sync: its installed version (None if none) and the outcome.

    state: "installed" (version now live), "rejected" (reason = a BundleError code), "stale" (the installed
    watchlist expired), "none" (nothing installed). message: one human-readable line, or None.
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
    if state == "none" and version is not None:
        raise PayloadError("watchlist state 'none' cannot have an installed_version")
    if reason is not None and (not isinstance(reason, str) or not _TOKEN.match(reason)):
        raise PayloadError(f"watchlist state field 'reason' must be a short code like 'bad_signature',"
                           f" got {_show(reason)}")
    if state == "rejected" and reason is None:
        raise PayloadError("watchlist state 'rejected' needs a reason")
    if obj["message"] is not None:
        _need_str(obj, "message", what, max_len=1024)
    return obj
