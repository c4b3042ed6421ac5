"""The signed manifest of a watchlist bundle, format 2: its fields, their schema and times (pure; no crypto).

One manifest describes one version of a watchlist for an *audience* (one device, ``device:<id>``, or a group,
``group:<name>``): the payload is encrypted once, and ``recipients`` holds the content key wrapped to each member
device's key. ``kind`` is ``full`` (the whole list) or ``delta`` (changes on top of exactly ``base.version``, whose
content hash is ``base.content_sha256``). ``content_sha256`` is the hash of the *full* content of this version
(`edge.watchlist.payload.content_sha256`): a delta and a full bundle of the same version carry the same one, and
a device checks it against what it decrypted or rebuilt.

Binding fields (`BINDING_FIELDS`) are hashed into the AAD of both the payload and every key wrap; the rest
(payload description, recipients, signing) are covered by the signature only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from edge.canonical import canonical_json

FORMAT = "edge-watchlist/2"
CIPHER = "AES-256-GCM"
KEYWRAP_ALG = "X25519-HKDF-SHA256/AES-256-GCM"
SIGNING_ALG = "Ed25519"
METRIC = "angular"
KINDS = ("full", "delta")
#: Most devices one manifest may list (each wrap costs ~200 bytes of manifest).
MAX_RECIPIENTS = 4096
BINDING_FIELDS = ("format", "watchlist_id", "version", "audience", "kind", "base", "content_sha256", "embedder",
                  "dim", "metric", "n_items", "n_subjects", "created", "expires", "thresholds")
MANIFEST_FIELDS = frozenset(BINDING_FIELDS) | {"payload", "recipients", "key_wrap_alg", "signing"}
MAX_VERSION = 2**63 - 1
TAG_BYTES = 16

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")
_HEX_RE = re.compile(r"[0-9a-f]+\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
AUDIENCE_RE = re.compile(r"(device|group):[A-Za-z0-9._-]{1,64}\Z")


class SchemaError(Exception):
    """A manifest field is wrong. reason: "malformed_manifest" or "unsupported_format"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _bad(detail: str) -> SchemaError:
    return SchemaError("malformed_manifest", detail)


def need_str(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise _bad(f"{where}{key} must be a non-empty string of at most 256 characters")
    return value


def need_int(obj: dict[str, Any], key: str, low: int, where: str = "") -> int:
    value = obj.get(key)
    if type(value) is not int or not low <= value <= MAX_VERSION:
        raise _bad(f"{where}{key} must be an integer ≥ {low}, got {value!r}")
    return value


def need_hex(obj: dict[str, Any], key: str, digits: int, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != digits or not _HEX_RE.match(value):
        raise _bad(f"{where}{key} must be {digits} lowercase hex digits")
    return value


def need_b64(obj: dict[str, Any], key: str, length: int, where: str = "") -> bytes:
    value = obj.get(key)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != length:
        raise _bad(f"{where}{key} must be base64 of {length} bytes")
    return raw


def need_obj(obj: dict[str, Any], key: str, fields: set[str], where: str = "") -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict) or set(value) != fields:
        raise _bad(f"{where}{key} must be an object with exactly the fields {', '.join(sorted(fields))}")
    return value


def need_const(obj: dict[str, Any], key: str, expected: str, where: str = "") -> None:
    if obj.get(key) != expected:
        raise SchemaError("unsupported_format", f"{where}{key} {obj.get(key)!r} is not supported"
                                                f" (this device supports {expected!r})")


def parse_time(text: object, what: str = "time") -> datetime:
    """Parse an ISO-8601 UTC timestamp of the form 2025-01-31T12:00:00Z (fractional seconds allowed)."""
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise _bad(f"{what} must be an ISO-8601 UTC time like 2025-01-31T12:00:00Z, got {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
    except ValueError:
        raise _bad(f"{what} {text!r} is not a valid date and time") from None


def format_time(value: datetime | str) -> str:
    """Manifest form of a time: an aware datetime (converted to UTC, whole seconds) or an already valid string."""
    if isinstance(value, str):
        parse_time(value)
        return value
    if value.tzinfo is None:
        raise _bad("times must be timezone-aware datetimes (e.g. datetime.now(timezone.utc))")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def audience_of(device_id: str | None = None, group: str | None = None) -> str:
    """"device:<id>" or "group:<name>" (exactly one of the two given)."""
    if (device_id is None) == (group is None):
        raise _bad("a bundle is sealed for one device or one group: give exactly one")
    text = f"device:{device_id}" if device_id is not None else f"group:{group}"
    if not AUDIENCE_RE.match(text):
        raise _bad(f"audience {text!r} is invalid: ids and group names are 1-64 of A-Z a-z 0-9 . _ -")
    return text


def validate_binding(m: dict[str, Any]) -> None:
    """Check the binding fields of a manifest (SchemaError naming the first problem)."""
    need_const(m, "format", FORMAT, "bundle ")
    need_str(m, "watchlist_id")
    need_int(m, "version", 1)
    if not isinstance(m.get("audience"), str) or not AUDIENCE_RE.match(m["audience"]):
        raise _bad(f"audience must be 'device:<id>' or 'group:<name>', got {m.get('audience')!r}")
    if m.get("kind") not in KINDS:
        raise _bad(f"kind must be one of {', '.join(KINDS)}, got {m.get('kind')!r}")
    if m["kind"] == "full":
        if m.get("base") is not None:
            raise _bad("a full bundle has base null")
    else:
        base = need_obj(m, "base", {"version", "content_sha256"})
        need_int(base, "version", 1, "base.")
        need_hex(base, "content_sha256", 64, "base.")
        if base["version"] >= m["version"]:
            raise _bad(f"delta v{m['version']} must build on an older version, not v{base['version']}")
    need_hex(m, "content_sha256", 64)
    embedder = need_obj(m, "embedder", {"id", "sha256"})
    need_str(embedder, "id", "embedder.")
    need_hex(embedder, "sha256", 64, "embedder.")
    need_int(m, "dim", 1)
    need_const(m, "metric", METRIC, "embedding ")
    need_int(m, "n_items", 0)
    need_int(m, "n_subjects", 0)
    if parse_time(m.get("created"), "created") > parse_time(m.get("expires"), "expires"):
        raise _bad(f"created {m['created']} is after expires {m['expires']}")
    thresholds = m.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds:
        raise _bad("thresholds must be a non-empty object of numbers")
    for name, value in thresholds.items():
        if not isinstance(name, str):
            raise _bad(f"threshold names must be strings, got {name!r}")
        if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
            raise _bad(f"thresholds.{name} must be a finite number, got {value!r}")


def validate(m: object) -> dict[str, Any]:
    """The manifest as a dict, or SchemaError naming the first problem."""
    if not isinstance(m, dict):
        raise _bad("the manifest is not a JSON object")
    need_const(m, "format", FORMAT, "bundle ")
    missing, unknown = MANIFEST_FIELDS - set(m), set(m) - MANIFEST_FIELDS
    if missing:
        raise _bad(f"missing field(s) {', '.join(sorted(missing))}")
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(sorted(unknown))}")
    validate_binding(m)
    payload = need_obj(m, "payload", {"length", "sha256", "cipher", "nonce"})
    need_int(payload, "length", TAG_BYTES, "payload.")
    need_hex(payload, "sha256", 64, "payload.")
    need_const(payload, "cipher", CIPHER, "payload ")
    need_b64(payload, "nonce", 12, "payload.")
    need_const(m, "key_wrap_alg", KEYWRAP_ALG, "")
    recipients = m.get("recipients")
    if not isinstance(recipients, dict) or not 0 < len(recipients) <= MAX_RECIPIENTS:
        raise _bad(f"recipients must be an object of 1-{MAX_RECIPIENTS} device ids")
    for device_id, wrap in recipients.items():
        if not _NAME_RE.match(device_id):
            raise _bad(f"recipient {device_id!r} is not a valid device id")
        where = f"recipients.{device_id}."
        if not isinstance(wrap, dict) or set(wrap) != {"ephemeral_public", "nonce", "wrapped_key"}:
            raise _bad(f"{where[:-1]} must be an object with exactly ephemeral_public, nonce, wrapped_key")
        need_b64(wrap, "ephemeral_public", 32, where)
        need_b64(wrap, "nonce", 12, where)
        need_b64(wrap, "wrapped_key", 32 + TAG_BYTES, where)
    audience = m["audience"]
    if audience.startswith("device:") and set(recipients) != {audience[len("device:"):]}:
        raise _bad(f"a bundle for {audience} must list exactly that device as its recipient")
    signing = need_obj(m, "signing", {"alg", "key_id"})
    need_const(signing, "alg", SIGNING_ALG, "signing ")
    need_hex(signing, "key_id", 16, "signing.")
    return m


def parse(raw: bytes) -> dict[str, Any]:
    """Parse *verified* manifest bytes, which must be exactly their canonical encoding, and validate them."""
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    try:
        manifest = json.loads(raw.decode("ascii"), parse_constant=no_constants)
        canonical = canonical_json(manifest) == raw
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _bad(f"not JSON ({err})") from None
    if not canonical:
        raise _bad("not canonical JSON")
    return validate(manifest)


def label(manifest: Mapping[str, Any]) -> str:
    """"bundle <id> v<version>" (+ " (delta on vN)") for messages."""
    text = f"bundle {manifest['watchlist_id']} v{manifest['version']}"
    return text + (f" (delta on v{manifest['base']['version']})" if manifest.get("kind") == "delta" else "")
