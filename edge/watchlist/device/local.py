"""The device's local bundle: the version it rebuilt from a delta, kept as the operator's signed header of that
version followed by the full payload encrypted under a key derived from the device key. At start the signature,
the recipient and the content hash in the signed manifest are checked again (`open_local`).

Layout: LOCAL_MAGIC | u32 header length | the signed header (magic … signature) | 12-byte nonce |
AES-256-GCM(key derived from the device key, AAD = header) of the full payload.
"""

from __future__ import annotations

import hashlib
import os
import struct
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.keys import derive_key
from edge.watchlist import manifest as M
from edge.watchlist.device.verify import OperatorKeys, check_audience, parse_verified
from edge.watchlist.frame import (LOCAL_MAGIC, MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES, BundleError, OpenedBundle,
                                  check_content, split)

_LOCAL_PURPOSE = b"edge-watchlist-local-bundle/1"


def seal_local(header: bytes, full_payload: bytes, device_private: X25519PrivateKey) -> bytes:
    """A device's own record of a version it built from a delta: LOCAL_MAGIC | u32 header length | the signed
    header of that version | nonce | AES-256-GCM(key derived from the device key, AAD = header) of the full payload."""
    key = derive_key(device_private, _LOCAL_PURPOSE)
    nonce = os.urandom(12)
    return b"".join([LOCAL_MAGIC, struct.pack(">I", len(header)), header, nonce,
                     AESGCM(key).encrypt(nonce, full_payload, header)])


def open_local(data: bytes, device_private: X25519PrivateKey, operator_keys: OperatorKeys, *,
               expected_device_id: str | None, now: datetime | None = None,
               allow_expired: bool = False) -> OpenedBundle:
    """Open a `seal_local` file: the header's signature and recipient, the payload's decryption and its content
    hash against the signed manifest. The OpenedBundle holds the full payload."""
    view = memoryview(data)
    head = bytes(view[:len(LOCAL_MAGIC)])
    if head != LOCAL_MAGIC and not (len(head) < len(LOCAL_MAGIC) and LOCAL_MAGIC.startswith(head)):
        raise BundleError("bad_magic", f"not a local watchlist bundle (expected {LOCAL_MAGIC!r})")
    if len(view) > MAX_BUNDLE_BYTES + 16:
        raise BundleError("oversized", f"local bundle is {len(view)} bytes; the limit is {MAX_BUNDLE_BYTES}")
    if len(view) < len(LOCAL_MAGIC) + 4:
        raise BundleError("truncated", "local bundle is truncated")
    (n_header,) = struct.unpack(">I", view[len(LOCAL_MAGIC):len(LOCAL_MAGIC) + 4])
    start = len(LOCAL_MAGIC) + 4
    if n_header > MAX_MANIFEST_BYTES + 1024 or len(view) < start + n_header + 12 + 16:
        raise BundleError("truncated", "local bundle is truncated or its header length is invalid")
    header = bytes(view[start:start + n_header])
    frame = split(header)
    if frame.payload_offset != len(header):
        raise BundleError("malformed_manifest", "local bundle header has trailing bytes")
    manifest, signed_by = parse_verified(frame, operator_keys)
    check_audience(manifest, expected_device_id, now, allow_expired)
    nonce = bytes(view[start + n_header:start + n_header + 12])
    try:
        plaintext = AESGCM(derive_key(device_private, _LOCAL_PURPOSE)).decrypt(
            nonce, view[start + n_header + 12:], header)
    except InvalidTag:
        raise BundleError("decrypt_failed", f"local {M.label(manifest)} does not decrypt with this device's key"
                                            " (altered, or another device's)") from None
    check_content(manifest, plaintext)
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=hashlib.sha256(view).hexdigest(), payload=plaintext, signed_by=signed_by,
                        header=header)
