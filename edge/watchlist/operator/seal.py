"""The operator's signatures: a watchlist bundle sealed for its recipients (`seal`: the payload encrypted once, its
content key wrapped to each device, the manifest signed; layout and crypto in `edge.watchlist.frame`) and wipe
statements (`sign_wipe`; format in `edge.watchlist.wipe`). Operator side: a device never imports this module."""

from __future__ import annotations

import hashlib
import os
import struct
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.canonical import canonical_json
from edge.keys import key_id, seal_to
from edge.watchlist import manifest as M
from edge.watchlist.frame import (MAGIC, MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES, SIGNATURE_DOMAIN, BundleError, b64,
                                  binding_hash, content_of, keywrap_info)
from edge.watchlist.manifest import FORMAT, format_time
from edge.watchlist.wipe import WIPE_DOMAIN, WIPE_FORMAT, check_wipe


def wrap_content_key(content_key: bytes, device_public: X25519PublicKey, device_id: str, version: int,
                     binding: bytes) -> dict[str, str]:
    """One `recipients` entry: `content_key` sealed to `device_public` (`edge.keys.seal_to`)."""
    eph_raw, nonce, wrapped = seal_to(device_public, content_key, keywrap_info(device_id, version), binding)
    return {"ephemeral_public": b64(eph_raw), "nonce": b64(nonce), "wrapped_key": b64(wrapped)}


def assemble(manifest: Mapping[str, Any], signing_key: Ed25519PrivateKey, ciphertext: bytes) -> bytes:
    """Encode and sign `manifest` and frame it with `ciphertext` (no checks; `seal` is the public way in)."""
    raw = canonical_json(manifest)
    signature = signing_key.sign(SIGNATURE_DOMAIN + raw)
    return b"".join([MAGIC, struct.pack(">I", len(raw)), raw, struct.pack(">H", len(signature)), signature,
                     ciphertext])


def seal(
    payload: bytes,
    *,
    watchlist_id: str,
    version: int,
    signing_key: Ed25519PrivateKey,
    embedder_id: str,
    embedder_sha256: str,
    dim: int,
    n_items: int,
    n_subjects: int,
    thresholds: Mapping[str, float],
    expires: datetime | str,
    recipients: Mapping[str, X25519PublicKey] | None = None,
    device_id: str | None = None,
    device_public: X25519PublicKey | None = None,
    group: str | None = None,
    base: Mapping[str, Any] | None = None,
    content: str | None = None,
    created: datetime | str | None = None,
) -> bytes:
    """Encrypt `payload` once and wrap its key to every recipient; sign the manifest; returns the bundle bytes.

    Audience: `device_id` (+ `device_public`, the one recipient) or `group` with `recipients` (device id → X25519
    public key). A delta passes `base` ({"version", "content_sha256"} of the version it builds on) and `content`,
    the content hash of the full result; a full payload's content hash is computed here. expires / created: aware
    datetimes or "YYYY-MM-DDTHH:MM:SSZ" strings (created defaults to now, UTC). Bad arguments raise
    BundleError("malformed_manifest", "cannot seal watchlist bundle: …").
    """
    try:
        if recipients is None:
            recipients = {device_id: device_public} if device_id is not None and device_public is not None else {}
        if not recipients:
            raise M.SchemaError("malformed_manifest", "a bundle needs at least one recipient device key")
        if base is None:
            if content is not None and content != content_of(payload):
                raise M.SchemaError("malformed_manifest", "the content hash given does not match the full payload")
            content = content_of(payload)
        manifest: dict[str, Any] = {
            "format": FORMAT, "watchlist_id": watchlist_id, "version": version,
            "audience": M.audience_of(device_id, group), "kind": "delta" if base is not None else "full",
            "base": dict(base) if base is not None else None, "content_sha256": content,
            "embedder": {"id": embedder_id, "sha256": embedder_sha256}, "dim": dim, "metric": M.METRIC,
            "n_items": n_items, "n_subjects": n_subjects, "thresholds": dict(thresholds),
            "created": format_time(created if created is not None else datetime.now(timezone.utc)),
            "expires": format_time(expires),
        }
        M.validate_binding(manifest)
        binding = binding_hash(manifest)
        content_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        ciphertext = AESGCM(content_key).encrypt(nonce, bytes(payload), binding)
        manifest["payload"] = {"length": len(ciphertext), "sha256": hashlib.sha256(ciphertext).hexdigest(),
                               "cipher": M.CIPHER, "nonce": b64(nonce)}
        manifest["key_wrap_alg"] = M.KEYWRAP_ALG
        manifest["recipients"] = {d: wrap_content_key(content_key, pub, d, version, binding)
                                  for d, pub in sorted(recipients.items())}
        manifest["signing"] = {"alg": M.SIGNING_ALG, "key_id": key_id(signing_key.public_key())}
        M.validate(manifest)
    except M.SchemaError as err:
        raise BundleError(err.reason, f"cannot seal watchlist bundle: {err}") from None
    data = assemble(manifest, signing_key, ciphertext)
    if len(canonical_json(manifest)) > MAX_MANIFEST_BYTES or len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("oversized", f"cannot seal watchlist bundle: {len(data)} bytes exceeds the limits"
                                       f" (manifest ≤ {MAX_MANIFEST_BYTES}, bundle ≤ {MAX_BUNDLE_BYTES} bytes)")
    return data


def sign_wipe(signing_key: Ed25519PrivateKey, audience: str, upto_version: int,
              issued: datetime | str | None = None) -> bytes:
    """A signed wipe statement: the devices of `audience` ("device:<id>" or "group:<name>") drop the watchlist
    they got from it if its version is ≤ `upto_version`, and accept only newer versions afterwards."""
    statement = {"format": WIPE_FORMAT, "audience": audience, "upto_version": upto_version,
                 "issued": format_time(issued if issued is not None else datetime.now(timezone.utc)),
                 "key_id": key_id(signing_key.public_key())}
    check_wipe(statement)
    raw = canonical_json(statement)
    return canonical_json({"statement": raw.decode("ascii"),
                           "signature": b64(signing_key.sign(WIPE_DOMAIN + raw))})
