"""What a device checks of what the operator signed, before any device key is used: a bundle's framing, its
signature against the pinned operator keys, its manifest's schema, audience, expiry and payload hash
(`verify_bundle`), and a wipe statement's signature and schema (`verify_wipe`). Every failure is a `BundleError`
with a stable reason (`edge.watchlist.frame`); nothing is parsed before its signature verified."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Mapping, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.keys import TrustStore, key_id
from edge.watchlist import manifest as M
from edge.watchlist.frame import SIGNATURE_DOMAIN, BundleError, Frame, claimed_key_id, split
from edge.watchlist.wipe import MAX_WIPE_BYTES, WIPE_DOMAIN, check_wipe

#: The pinned operator keys: a TrustStore, or key id → Ed25519 public key.
OperatorKeys = Union[Mapping[str, Ed25519PublicKey], TrustStore]


def pinned(operator_keys: OperatorKeys) -> dict[str, Ed25519PublicKey]:
    """Pinned keys by the id computed from each key (a caller's dict labels are not trusted)."""
    keys = operator_keys.keys() if isinstance(operator_keys, TrustStore) else dict(operator_keys)
    return {key_id(k): k for k in keys.values()}


def _verify(frame: Frame, keys: dict[str, Ed25519PublicKey]) -> str:
    """Id of the pinned key whose signature verifies, or BundleError unknown_key / bad_signature."""
    if not keys:
        raise BundleError("unknown_key", "no operator keys are pinned on this device, so no bundle can be trusted")
    message = SIGNATURE_DOMAIN + frame.manifest
    for kid, key in keys.items():
        try:
            key.verify(frame.signature, message)
            return kid
        except InvalidSignature:
            continue
    shown = ", ".join(sorted(keys))
    claimed = claimed_key_id(frame.manifest)
    if claimed is not None and claimed not in keys:
        raise BundleError("unknown_key", f"bundle is signed by operator key {claimed}, which this device does not"
                                         f" trust (pinned: {shown}); pin it or accept a key-rotation statement")
    raise BundleError("bad_signature", f"bundle signature does not verify with any pinned operator key ({shown}):"
                                       " the manifest was altered after signing or the signature is forged")


def parse_verified(frame: Frame, operator_keys: OperatorKeys) -> tuple[dict[str, Any], str]:
    """(the validated manifest, the id of the pinned key that signed it): the signature first, then the schema."""
    signed_by = _verify(frame, pinned(operator_keys))
    try:
        manifest = M.parse(frame.manifest)
    except M.SchemaError as err:
        raise BundleError(err.reason, f"bundle manifest is malformed: {err}" if err.reason == "malformed_manifest"
                          else f"unsupported bundle: {err}; update the device software") from None
    if manifest["signing"]["key_id"] != signed_by:
        raise BundleError("bad_signature", f"{M.label(manifest)} names signing key {manifest['signing']['key_id']}"
                                           f" but was signed by pinned key {signed_by}")
    return manifest, signed_by


def check_audience(manifest: dict[str, Any], expected_device_id: str | None, now: datetime | None,
                   allow_expired: bool) -> None:
    """BundleError not_recipient / expired unless the manifest lists the device and (unless allowed) is current."""
    if expected_device_id is not None and expected_device_id not in manifest["recipients"]:
        raise BundleError("not_recipient", f"{M.label(manifest)} is for {manifest['audience']} and does not list"
                                           f" this device ({expected_device_id!r}) as a recipient")
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("verify_bundle: `now` must be a timezone-aware datetime")
    if not allow_expired and M.parse_time(manifest["expires"]) <= now:
        raise BundleError("expired", f"{M.label(manifest)} expired at {manifest['expires']}: the watchlist is stale;"
                                     " ask the operator for a fresh bundle")


def check_payload_size(manifest: dict[str, Any], n: int) -> None:
    """BundleError truncated / payload_mismatch unless the payload is as long as the manifest says."""
    label, declared = M.label(manifest), manifest["payload"]["length"]
    if n < declared:
        raise BundleError("truncated", f"{label} is truncated: the payload has {n} of {declared} bytes")
    if n > declared:
        raise BundleError("payload_mismatch", f"{label} has {n - declared} unexpected bytes after its"
                                              f" {declared}-byte payload")


def payload_hash_mismatch(manifest: dict[str, Any]) -> BundleError:
    """The error for a payload whose sha256 is not the manifest's."""
    return BundleError("payload_mismatch", f"{M.label(manifest)}: the payload does not match the manifest's sha256"
                                           " (corrupted or replaced)")


def verify_bundle(data: bytes, operator_keys: OperatorKeys, *, expected_device_id: str | None = None,
                  now: datetime | None = None, allow_expired: bool = False) -> tuple[dict[str, Any], str]:
    """Everything about a bundle that needs no device key: framing, the pinned operator's signature, the manifest's
    schema, that it lists `expected_device_id` as a recipient, expiry, and the payload's length and sha256.
    Returns (the validated manifest, the id of the pinned key that signed it), or raises BundleError."""
    view = memoryview(data)
    frame = split(view)
    manifest, signed_by = parse_verified(frame, operator_keys)
    check_audience(manifest, expected_device_id, now, allow_expired)
    ciphertext = view[frame.payload_offset:]
    check_payload_size(manifest, len(ciphertext))
    if hashlib.sha256(ciphertext).hexdigest() != manifest["payload"]["sha256"]:
        raise payload_hash_mismatch(manifest)
    return manifest, signed_by


def verify_wipe(data: bytes, operator_keys: OperatorKeys) -> dict[str, Any]:
    """The statement of a signed wipe (audience, upto_version, issued), or BundleError bad_wipe / unknown_key /
    bad_signature. Whether it applies to this device is the install policy's decision."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleError("bad_wipe", "wipe statement must be bytes")
    if len(data) > MAX_WIPE_BYTES:
        raise BundleError("bad_wipe", f"wipe statement exceeds {MAX_WIPE_BYTES} bytes")
    try:
        doc = json.loads(bytes(data))
        raw = doc["statement"].encode("ascii")
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeError):
        raise BundleError("bad_wipe", "wipe statement is not signed JSON {statement, signature}") from None
    keys = pinned(operator_keys)
    if not keys:
        raise BundleError("unknown_key", "no operator keys are pinned on this device, so no wipe can be trusted")
    for kid, key in keys.items():
        try:
            key.verify(signature, WIPE_DOMAIN + raw)
            signed_by = kid
            break
        except InvalidSignature:
            continue
    else:
        try:
            claimed = json.loads(raw).get("key_id")
        except (ValueError, RecursionError, AttributeError):
            claimed = None
        if isinstance(claimed, str) and len(claimed) <= 64 and claimed not in keys:
            raise BundleError("unknown_key", f"wipe statement is signed by operator key {claimed}, which this"
                                             f" device does not trust (pinned: {', '.join(sorted(keys))})")
        raise BundleError("bad_signature", "wipe statement is not signed by a pinned operator key")
    try:
        statement = check_wipe(json.loads(raw))
    except (ValueError, RecursionError):
        raise BundleError("bad_wipe", "wipe statement is not JSON") from None
    if statement["key_id"] != signed_by:
        raise BundleError("bad_signature", f"wipe statement names signing key {statement['key_id']} but was signed"
                                           f" by pinned key {signed_by}")
    return statement
