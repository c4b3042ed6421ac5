"""The watchlist payload schemas: the state a device reports on <device>/watchlist/state
(`edge-watchlist-state/1`) and the retained offer announcing a bundle's chunks (`edge-wl-offer/2`), checked as
strictly as every payload (`edge.messaging.payloads`: size limit, no duplicate keys, no NaN, known fields only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge.messaging.payload_checks import (PayloadError, check_fields, check_schema, dump_object, load_object, need_int,
                                           need_str, show)
from edge.messaging.topics import DEVICE_ID

WATCHLIST_STATE_SCHEMA = "edge-watchlist-state/1"
OFFER_SCHEMA = "edge-wl-offer/2"
#: Payload size limits in bytes.
MAX_WATCHLIST_STATE_BYTES = 4 * 1024
MAX_OFFER_BYTES = 1 << 20
#: Most chunks one watchlist offer may announce.
MAX_CHUNKS = 4096
#: States a device reports on <device>/watchlist/state.
WATCHLIST_STATES = ("installed", "rejected", "stale", "none", "wiped")

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


# ------------------------------------------------------------------------------------------------ watchlist state

@dataclass(frozen=True)
class WatchlistState:
    """What a device reports after a sync: its installed version (None if none) and the outcome.

    state: "installed" (version now live), "rejected" (reason = a BundleError code), "stale" (the installed
    watchlist expired), "none" (nothing installed), "wiped" (dropped by a signed wipe statement). message: one
    human-readable line, or None.
    """

    installed_version: int | None
    state: str
    reason: str | None = None
    message: str | None = None


def encode_watchlist_state(installed_version: int | None, state: str, reason: str | None = None,
                           message: str | None = None) -> bytes:
    obj = {"schema": WATCHLIST_STATE_SCHEMA, "installed_version": installed_version, "state": state,
           "reason": reason, "message": message}
    return dump_object(_check_watchlist_state(obj), "watchlist state", MAX_WATCHLIST_STATE_BYTES)


def decode_watchlist_state(data: bytes) -> WatchlistState:
    obj = _check_watchlist_state(load_object(data, "watchlist state", MAX_WATCHLIST_STATE_BYTES))
    return WatchlistState(obj["installed_version"], obj["state"], obj["reason"], obj["message"])


def _check_watchlist_state(obj: dict[str, Any]) -> dict[str, Any]:
    what = "watchlist state"
    check_schema(obj, what, WATCHLIST_STATE_SCHEMA)
    check_fields(obj, what, {"schema", "installed_version", "state", "reason", "message"})
    state, version, reason = obj["state"], obj["installed_version"], obj["reason"]
    if state not in WATCHLIST_STATES:
        raise PayloadError(f"watchlist state field 'state' must be one of {', '.join(WATCHLIST_STATES)},"
                           f" got {show(state)}")
    if version is not None:
        need_int(obj, "installed_version", what, 1)
    if state in ("installed", "stale") and version is None:
        raise PayloadError(f"watchlist state {state!r} needs an installed_version")
    if state in ("none", "wiped") and version is not None:
        raise PayloadError(f"watchlist state {state!r} cannot have an installed_version")
    if reason is not None and (not isinstance(reason, str) or not _TOKEN.match(reason)):
        raise PayloadError(f"watchlist state field 'reason' must be a short code like 'bad_signature',"
                           f" got {show(reason)}")
    if state == "rejected" and reason is None:
        raise PayloadError("watchlist state 'rejected' needs a reason")
    if obj["message"] is not None:
        need_str(obj, "message", what, max_len=1024)
    return obj


# ------------------------------------------------------------------------------------------------ watchlist offer

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
    return dump_object(obj, "watchlist offer", MAX_OFFER_BYTES)


def parse_offer(data: bytes, audience: str) -> Offer:
    """Parse and validate an offer that arrived on `audience`'s topics; PayloadError naming the problem."""
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_OFFER_BYTES:
        raise PayloadError(f"watchlist offer of {len(data)} bytes exceeds the limit of {MAX_OFFER_BYTES} bytes")
    obj = _check_offer(load_object(data, "watchlist offer", MAX_OFFER_BYTES), audience)
    return Offer(obj["audience"], obj["version"], obj["base"], obj["bundle_sha256"], obj["bundle_bytes"],
                 obj["chunk_bytes"], list(obj["chunks"]), list(obj["recipients"]))


def _check_offer(obj: dict[str, Any], audience: str) -> dict[str, Any]:
    what = "watchlist offer"
    check_schema(obj, what, OFFER_SCHEMA)
    check_fields(obj, what, {"schema", "audience", "version", "base", "bundle_sha256", "bundle_bytes",
                              "chunk_bytes", "chunks", "recipients"})
    if obj["audience"] != audience:
        raise PayloadError(f"watchlist offer is for {show(obj['audience'])}, not {audience!r}")
    for key in ("version", "bundle_bytes", "chunk_bytes"):
        need_int(obj, key, what, 1)
    if obj["base"] is not None:
        need_int(obj, "base", what, 1)
        if obj["base"] >= obj["version"]:
            raise PayloadError(f"watchlist offer of a delta v{obj['version']} names a base that is not older")
    if not isinstance(obj["bundle_sha256"], str) or not _SHA256.match(obj["bundle_sha256"]):
        raise PayloadError(f"watchlist offer field 'bundle_sha256' must be 64 lowercase hex digits,"
                           f" got {show(obj['bundle_sha256'])}")
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
            or not all(isinstance(r, str) and DEVICE_ID.match(r) for r in recipients):
        raise PayloadError(f"watchlist offer field 'recipients' must list at most {MAX_OFFER_RECIPIENTS} device ids")
    return obj
