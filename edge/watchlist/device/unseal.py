"""Opening a bundle on the device: verify it (`verify`), unwrap this device's copy of the content key, decrypt the
payload and check a full payload against the content hash in the signed manifest. `open_bundle` takes bytes;
`open_bundle_file` streams a full bundle from disk into memfds without ever holding it, or its plaintext, in
Python memory. Every failure is a `BundleError` (`edge.watchlist.frame`)."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.keys import SealError, open_sealed
from edge.watchlist import manifest as M
from edge.watchlist.device.local import open_local
from edge.watchlist.device.verify import (OperatorKeys, check_audience, check_payload_size, parse_verified,
                                          payload_hash_mismatch, verify_bundle)
from edge.watchlist.frame import (LOCAL_MAGIC, MAX_BUNDLE_BYTES, MAX_HEADER_BYTES, BundleError, OpenedBundle,
                                  binding_hash, check_content, keywrap_info, split)
from edge.watchlist.payload import PayloadError, PayloadSink

#: A device's private key: X25519, the key its bundles' content keys are wrapped to.
DeviceKey = X25519PrivateKey


def unwrap_content_key(manifest: Mapping[str, Any], device_id: str, device_private: X25519PrivateKey) -> bytes:
    """The content key from `device_id`'s wrap in a validated manifest, or BundleError not_recipient/unwrap_failed."""
    wrap = manifest["recipients"].get(device_id)
    if wrap is None:
        raise BundleError("not_recipient", f"{M.label(manifest)} for {manifest['audience']} does not list device"
                                           f" {device_id!r} as a recipient (removed from the fleet or group?)")
    try:
        return open_sealed(device_private, base64.b64decode(wrap["ephemeral_public"]), base64.b64decode(wrap["nonce"]),
                           base64.b64decode(wrap["wrapped_key"]), keywrap_info(device_id, manifest["version"]),
                           binding_hash(manifest))
    except SealError:
        raise BundleError("unwrap_failed", f"cannot unwrap the content key: {M.label(manifest)}'s wrap for device"
                                           f" {device_id} was not made for this device's key (or was altered)"
                          ) from None


def find_recipient(manifest: Mapping[str, Any], device_private: X25519PrivateKey) -> str | None:
    """The recipient id whose wrap `device_private` opens in a verified manifest (None if none does)."""
    for device_id in manifest["recipients"]:
        try:
            unwrap_content_key(manifest, device_id, device_private)
            return str(device_id)
        except BundleError:
            continue
    return None


def _content_key(manifest: dict[str, Any], expected_device_id: str | None, device_private: X25519PrivateKey) -> bytes:
    """The content key of this device's wrap (the one `device_private` opens when no id is expected)."""
    if expected_device_id is None:
        expected_device_id = find_recipient(manifest, device_private)
        if expected_device_id is None:
            raise BundleError("not_recipient", f"{M.label(manifest)} for {manifest['audience']} has no key wrap"
                                               " this device key opens (not a recipient)")
    return unwrap_content_key(manifest, expected_device_id, device_private)


def open_bundle(
    data: bytes,
    device_private: X25519PrivateKey,
    operator_keys: OperatorKeys,
    *,
    expected_device_id: str | None = None,
    now: datetime | None = None,
    allow_expired: bool = False,
) -> OpenedBundle:
    """Verify and decrypt a bundle for this device, or raise BundleError (see `edge.watchlist.frame` for the order).

    operator_keys: the pinned operator keys (a TrustStore or key id → Ed25519PublicKey). expected_device_id: this
    device's id; its wrap is the one opened (a device always passes it; None, for operator tools and benches,
    means the recipient whose wrap `device_private` opens). now: the current time (aware; default: the clock).
    allow_expired: accept a bundle whose `expires` has passed (only to keep serving an installed watchlist, marked
    stale). A full payload is also checked against the manifest's content hash. A local bundle goes to `open_local`.
    """
    if bytes(data[:len(LOCAL_MAGIC)]) == LOCAL_MAGIC:
        return open_local(data, device_private, operator_keys, expected_device_id=expected_device_id, now=now,
                          allow_expired=allow_expired)
    manifest, signed_by = verify_bundle(data, operator_keys, expected_device_id=expected_device_id, now=now,
                                        allow_expired=allow_expired)
    view = memoryview(data)
    frame = split(view)
    content_key = _content_key(manifest, expected_device_id, device_private)
    try:
        plaintext = AESGCM(content_key).decrypt(base64.b64decode(manifest["payload"]["nonce"]),
                                                view[frame.payload_offset:], binding_hash(manifest))
    except InvalidTag:
        raise BundleError("decrypt_failed", f"{M.label(manifest)}: payload authentication failed: the encrypted"
                                            " payload does not belong to this manifest (version, audience or"
                                            " model differ)") from None
    if manifest["kind"] == "full":
        check_content(manifest, plaintext)
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=hashlib.sha256(view).hexdigest(), payload=plaintext, signed_by=signed_by,
                        header=bytes(view[:frame.payload_offset]))


def _chunks(f: IO[bytes], start: int, limit: int, chunk_bytes: int, label: str) -> Iterator[bytes]:
    """`limit` bytes of `f` from `start`, `chunk_bytes` at a time."""
    f.seek(start)
    left = limit
    while left:
        block = f.read(min(chunk_bytes, left))
        if not block:
            raise BundleError("truncated", f"{label} shrank while it was read")
        left -= len(block)
        yield block


def open_bundle_file(path: str | os.PathLike[str], device_private: X25519PrivateKey, operator_keys: OperatorKeys, *,
                     expected_device_id: str | None = None, now: datetime | None = None, allow_expired: bool = False,
                     chunk_bytes: int = 1 << 20) -> OpenedBundle:
    """`open_bundle` for a full bundle on disk without ever holding it, or its plaintext, in Python memory: the
    file is read in chunks twice (its sha256, then AES-GCM decryption into `PayloadSink`, which writes the index and
    templates into memfds and hashes the content). The ciphertext's sha256 is checked against the signed manifest
    before any decryption, so the only fields read before the GCM tag is checked at the end (the payload's section
    lengths, bounded by the declared length) come from signed bytes; the metadata is parsed after it. The
    OpenedBundle's `payload` is a `MappedPayload`. Deltas and local bundles fall back to `open_bundle` (they are
    small, or already the device's own)."""
    path = Path(path)
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a symbolic link: OSError ELOOP
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError("oversized", f"bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES} bytes")
        head = f.read(min(size, MAX_HEADER_BYTES))
        if head[:len(LOCAL_MAGIC)] == LOCAL_MAGIC:
            return open_bundle(head + f.read(), device_private, operator_keys, expected_device_id=expected_device_id,
                               now=now, allow_expired=allow_expired)
        frame = split(head)
        manifest, signed_by = parse_verified(frame, operator_keys)
        if manifest["kind"] != "full":
            f.seek(0)
            return open_bundle(f.read(), device_private, operator_keys, expected_device_id=expected_device_id,
                               now=now, allow_expired=allow_expired)
        check_audience(manifest, expected_device_id, now, allow_expired)
        label = M.label(manifest)
        n = size - frame.payload_offset
        check_payload_size(manifest, n)
        digest, whole = hashlib.sha256(), hashlib.sha256()
        whole.update(head[:frame.payload_offset])
        for block in _chunks(f, frame.payload_offset, n, chunk_bytes, label):
            digest.update(block)
            whole.update(block)
        if digest.hexdigest() != manifest["payload"]["sha256"]:
            raise payload_hash_mismatch(manifest)
        key = _content_key(manifest, expected_device_id, device_private)
        f.seek(size - 16)
        tag = f.read(16)
        decryptor = Cipher(algorithms.AES(key), modes.GCM(base64.b64decode(manifest["payload"]["nonce"]),
                                                          tag)).decryptor()
        decryptor.authenticate_additional_data(binding_hash(manifest))
        sink = PayloadSink(n - 16)
        try:
            for block in _chunks(f, frame.payload_offset, n - 16, chunk_bytes, label):
                sink.write(decryptor.update(block))
            try:
                decryptor.finalize()
            except InvalidTag:
                raise BundleError("decrypt_failed", f"{label}: payload authentication failed: the encrypted payload"
                                                    " does not belong to this manifest") from None
            if sink.content_sha256() != manifest["content_sha256"]:
                raise BundleError("content_mismatch", f"{label}: the decrypted watchlist does not match the content"
                                                      " hash in its signed manifest")
            payload = sink.result()
        except PayloadError as err:
            sink.close()
            raise BundleError("content_mismatch", f"{label}: {err}") from None
        except BaseException:
            sink.close()
            raise
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=whole.hexdigest(), payload=payload, signed_by=signed_by,
                        header=head[:frame.payload_offset])
