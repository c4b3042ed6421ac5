"""The watchlist bundle, format 2: one signed manifest and one encrypted payload per version (bytes in, bytes out).

Layout (all integers big-endian):

    b"EDGEWL2\\n"            8 bytes   magic (format 1, b"EDGEWL1\\n", is refused with "unsupported_format")
    manifest length          u32       ≤ MAX_MANIFEST_BYTES (1 MiB)
    manifest                 canonical JSON (`edge.watchlist.manifest`)
    signature length         u16       always 64
    signature                Ed25519 over b"edge-watchlist-manifest/2\\x00" + manifest bytes
    payload ciphertext       the rest of the file (AES-256-GCM, tag appended); whole file ≤ MAX_BUNDLE_BYTES (2 GiB)

Crypto. Each `seal` draws a fresh 32-byte content key K_v and encrypts the payload (a full payload or a delta)
once under it, AAD = the *binding hash* (sha256 of the canonical JSON of the manifest's binding fields: format,
ids, version, audience, kind, base, content hash, embedder, dim, counts, times, thresholds). For each recipient
device, K_v is wrapped to its X25519 key: an ephemeral key pair, KEK = HKDF-SHA256(shared secret, info =
b"edge-watchlist-keywrap/2" + device id UTF-8 + version as 8 bytes), wrap = AES-256-GCM(KEK)(K_v, AAD = binding
hash). A wrap moved to another device id, a wrap of another version, or a recipients list edited after signing all
fail (the last one at the signature). A device that is not listed cannot open the version.

Verification (`verify_bundle`, `open_bundle`) never parses what it has not yet authenticated: magic, length fields
and limits, signature against the pinned operator keys, and only then the manifest JSON and its schema, recipient,
expiry, payload length and hash, key unwrap and decryption. Every failure is a `BundleError` with a stable `reason`.

A device that applied a delta keeps the result as a *local bundle* (`seal_local`/`open_local`): the operator's
signed header of that version followed by the rebuilt full payload, encrypted under a key derived from the device
key; at start the signature, the recipient and the content hash in the signed manifest are checked again.

Wipe statements (`sign_wipe`/`verify_wipe`) are small signed JSON documents telling one device, or the members of
a group, to drop the watchlist they hold up to a version.

Lines: the bundle format, sealing, verification, local bundles and wipe statements are one security boundary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Mapping, Union

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.canonical import canonical_json
from edge.errors import EdgeError
from edge.keys import SealError, TrustStore, derive_key, key_id, open_sealed, seal_to
from edge.watchlist import manifest as M
from edge.watchlist.manifest import FORMAT, format_time, parse_time  # noqa: F401 - re-exported
from edge.watchlist.payload import OPAQUE_DOMAIN, PayloadError, PayloadSink, content_sha256

MAGIC = b"EDGEWL2\n"
OLD_MAGIC = b"EDGEWL1\n"
LOCAL_MAGIC = b"EDGEWLL\n"
SIGNATURE_DOMAIN = b"edge-watchlist-manifest/2\x00"
KEYWRAP_INFO = b"edge-watchlist-keywrap/2"
WIPE_FORMAT = "edge-wl-wipe/1"
WIPE_DOMAIN = b"edge-watchlist-wipe/1\x00"
_LOCAL_PURPOSE = b"edge-watchlist-local-bundle/1"
#: Largest manifest accepted, bytes (room for ~5,000 recipients).
MAX_MANIFEST_BYTES = 1024 * 1024
#: Largest bundle accepted (whole file), bytes.
MAX_BUNDLE_BYTES = 2 * 1024**3
#: Largest wipe statement accepted, bytes.
MAX_WIPE_BYTES = 4096
SIGNATURE_BYTES = 64

_PREFIX = len(MAGIC) + 4  # magic + u32 manifest length

OperatorKeys = Union[Mapping[str, Ed25519PublicKey], TrustStore]


class BundleError(EdgeError):
    """A bundle was refused. `reason` is a stable short code; `str(err)` names the cause for a person.

    Codes: bad_magic, truncated, oversized, bad_signature, unknown_key, malformed_manifest, unsupported_format,
    not_recipient, expired, payload_mismatch, unwrap_failed, decrypt_failed, content_mismatch, bad_wipe.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OpenedBundle:
    """A verified, decrypted bundle.

    manifest: the parsed manifest. manifest_sha256 / bundle_sha256: hex sha256 of the manifest bytes / whole file.
    payload: the decrypted plaintext (keep it in memory): a full payload, or a delta when manifest kind is "delta".
    signed_by: id of the pinned key that verified it. header: the file up to the payload (magic … signature).
    """

    manifest: dict[str, Any]
    manifest_sha256: str
    bundle_sha256: str
    payload: bytes = field(repr=False)
    signed_by: str = ""
    header: bytes = field(default=b"", repr=False)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def watchlist_id(self) -> str:
        return str(self.manifest["watchlist_id"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def content_sha256(self) -> str:
        return str(self.manifest["content_sha256"])


# ---------------------------------------------------------------- framing


@dataclass(frozen=True)
class _Frame:
    manifest: bytes
    signature: bytes
    payload_offset: int


def _split(data: bytes | memoryview) -> _Frame:
    """Check magic, length fields and limits; never reads past what the length fields allow."""
    n = len(data)
    if n > MAX_BUNDLE_BYTES:
        raise BundleError("oversized", f"bundle is {n} bytes; the limit is {MAX_BUNDLE_BYTES} bytes")
    head = bytes(data[: len(MAGIC)])
    if head != MAGIC:
        if head == OLD_MAGIC:
            raise BundleError("unsupported_format", "bundle format 1 (sealed for one device) is no longer accepted:"
                                                    " re-seal the watchlist with this version's `edge watchlist"
                                                    " seal` (format 2)")
        if n == 0:
            raise BundleError("truncated", "bundle is truncated: the file is empty")
        if n < len(MAGIC) and MAGIC.startswith(head):
            raise BundleError("truncated", f"bundle is truncated: {n} bytes, shorter than the file header")
        raise BundleError("bad_magic", f"not a watchlist bundle: the file starts with {head[:8]!r},"
                                       f" expected {MAGIC!r}")
    if n < _PREFIX:
        raise BundleError("truncated", f"bundle is truncated: {n} bytes, shorter than the file header")
    (manifest_len,) = struct.unpack(">I", data[len(MAGIC):_PREFIX])
    if manifest_len > MAX_MANIFEST_BYTES:
        raise BundleError("oversized", f"bundle manifest length field says {manifest_len} bytes;"
                                       f" the limit is {MAX_MANIFEST_BYTES} bytes")
    sig_len_at = _PREFIX + manifest_len
    if n < sig_len_at + 2:
        raise BundleError("truncated", f"bundle is truncated: {n} bytes, it ends inside the manifest"
                                       f" ({manifest_len} bytes declared)")
    (sig_len,) = struct.unpack(">H", data[sig_len_at:sig_len_at + 2])
    if sig_len != SIGNATURE_BYTES:
        raise BundleError("bad_signature", f"bundle signature length field says {sig_len} bytes;"
                                           f" Ed25519 signatures are {SIGNATURE_BYTES}")
    payload_at = sig_len_at + 2 + SIGNATURE_BYTES
    if n < payload_at:
        raise BundleError("truncated", f"bundle is truncated: {n} bytes, it ends inside the signature")
    return _Frame(bytes(data[_PREFIX:sig_len_at]), bytes(data[sig_len_at + 2:payload_at]), payload_at)


def _pinned(operator_keys: OperatorKeys) -> dict[str, Ed25519PublicKey]:
    """Pinned keys by the id computed from each key (a caller's dict labels are not trusted)."""
    keys = operator_keys.keys() if isinstance(operator_keys, TrustStore) else dict(operator_keys)
    return {key_id(k): k for k in keys.values()}


def _claimed_key_id(manifest: bytes) -> str | None:
    """signing.key_id of an *unverified* manifest, only to word an error message; None if unreadable."""
    try:
        kid = json.loads(manifest)["signing"]["key_id"]
        return kid if isinstance(kid, str) and len(kid) <= 64 else None
    except Exception:  # noqa: BLE001 - untrusted bytes; any failure just means "no hint"
        return None


def _verify(frame: _Frame, keys: dict[str, Ed25519PublicKey]) -> str:
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
    pinned = ", ".join(sorted(keys))
    claimed = _claimed_key_id(frame.manifest)
    if claimed is not None and claimed not in keys:
        raise BundleError("unknown_key", f"bundle is signed by operator key {claimed}, which this device does not"
                                         f" trust (pinned: {pinned}); pin it or accept a key-rotation statement")
    raise BundleError("bad_signature", f"bundle signature does not verify with any pinned operator key ({pinned}):"
                                       " the manifest was altered after signing or the signature is forged")


# ---------------------------------------------------------------- crypto


def binding_hash(manifest: Mapping[str, Any]) -> bytes:
    """sha256 (32 raw bytes) of the canonical JSON of the manifest's binding fields; the AEAD AAD."""
    return hashlib.sha256(canonical_json({k: manifest[k] for k in M.BINDING_FIELDS})).digest()


def _keywrap_info(device_id: str, version: int) -> bytes:
    return KEYWRAP_INFO + device_id.encode("utf-8") + version.to_bytes(8, "big")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def wrap_content_key(content_key: bytes, device_public: X25519PublicKey, device_id: str, version: int,
                     binding: bytes) -> dict[str, str]:
    """One `recipients` entry: `content_key` sealed to `device_public` (`edge.keys.seal_to`)."""
    eph_raw, nonce, wrapped = seal_to(device_public, content_key, _keywrap_info(device_id, version), binding)
    return {"ephemeral_public": _b64(eph_raw), "nonce": _b64(nonce), "wrapped_key": _b64(wrapped)}


def unwrap_content_key(manifest: Mapping[str, Any], device_id: str, device_private: X25519PrivateKey) -> bytes:
    """The content key from `device_id`'s wrap in a validated manifest, or BundleError not_recipient/unwrap_failed."""
    wrap = manifest["recipients"].get(device_id)
    if wrap is None:
        raise BundleError("not_recipient", f"{M.label(manifest)} for {manifest['audience']} does not list device"
                                           f" {device_id!r} as a recipient (removed from the fleet or group?)")
    try:
        return open_sealed(device_private, base64.b64decode(wrap["ephemeral_public"]), base64.b64decode(wrap["nonce"]),
                           base64.b64decode(wrap["wrapped_key"]), _keywrap_info(device_id, manifest["version"]),
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
            return device_id
        except BundleError:
            continue
    return None


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
                               "cipher": M.CIPHER, "nonce": _b64(nonce)}
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


def _parse_verified(frame: _Frame, operator_keys: OperatorKeys) -> tuple[dict[str, Any], str]:
    signed_by = _verify(frame, _pinned(operator_keys))
    try:
        manifest = M.parse(frame.manifest)
    except M.SchemaError as err:
        raise BundleError(err.reason, f"bundle manifest is malformed: {err}" if err.reason == "malformed_manifest"
                          else f"unsupported bundle: {err}; update the device software") from None
    if manifest["signing"]["key_id"] != signed_by:
        raise BundleError("bad_signature", f"{M.label(manifest)} names signing key {manifest['signing']['key_id']}"
                                           f" but was signed by pinned key {signed_by}")
    return manifest, signed_by


def _check_audience(manifest: dict[str, Any], expected_device_id: str | None, now: datetime | None,
                    allow_expired: bool) -> None:
    if expected_device_id is not None and expected_device_id not in manifest["recipients"]:
        raise BundleError("not_recipient", f"{M.label(manifest)} is for {manifest['audience']} and does not list"
                                           f" this device ({expected_device_id!r}) as a recipient")
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("verify_bundle: `now` must be a timezone-aware datetime")
    if not allow_expired and parse_time(manifest["expires"]) <= now:
        raise BundleError("expired", f"{M.label(manifest)} expired at {manifest['expires']}: the watchlist is stale;"
                                     " ask the operator for a fresh bundle")


def verify_bundle(data: bytes, operator_keys: OperatorKeys, *, expected_device_id: str | None = None,
                  now: datetime | None = None, allow_expired: bool = False) -> tuple[dict[str, Any], str]:
    """Everything about a bundle that needs no device key: framing, the pinned operator's signature, the manifest's
    schema, that it lists `expected_device_id` as a recipient, expiry, and the payload's length and sha256.
    Returns (the validated manifest, the id of the pinned key that signed it), or raises BundleError."""
    view = memoryview(data)
    frame = _split(view)
    manifest, signed_by = _parse_verified(frame, operator_keys)
    _check_audience(manifest, expected_device_id, now, allow_expired)
    label = M.label(manifest)
    ciphertext = view[frame.payload_offset:]
    declared = manifest["payload"]["length"]
    if len(ciphertext) < declared:
        raise BundleError("truncated", f"{label} is truncated: the payload has {len(ciphertext)} of {declared}"
                                       " bytes")
    if len(ciphertext) > declared:
        raise BundleError("payload_mismatch", f"{label} has {len(ciphertext) - declared} unexpected bytes after"
                                              f" its {declared}-byte payload")
    if hashlib.sha256(ciphertext).hexdigest() != manifest["payload"]["sha256"]:
        raise BundleError("payload_mismatch", f"{label}: the payload does not match the manifest's sha256"
                                              " (corrupted or replaced)")
    return manifest, signed_by


def open_bundle(
    data: bytes,
    device_private: X25519PrivateKey,
    operator_keys: OperatorKeys,
    *,
    expected_device_id: str | None = None,
    now: datetime | None = None,
    allow_expired: bool = False,
) -> OpenedBundle:
    """Verify and decrypt a bundle for this device, or raise BundleError (see the module docstring for the order).

    operator_keys: the pinned operator keys (a TrustStore or key id → Ed25519PublicKey). expected_device_id: this
    device's id; its wrap is the one opened (a device always passes it; None, for operator tools and benches,
    means the recipient whose wrap `device_private` opens). now: the current time (aware; default: the clock). allow_expired:
    accept a bundle whose `expires` has passed (only to keep serving an installed watchlist, marked stale).
    A full payload is also checked against the manifest's content hash.
    """
    if bytes(data[:len(LOCAL_MAGIC)]) == LOCAL_MAGIC:
        return open_local(data, device_private, operator_keys, expected_device_id=expected_device_id, now=now,
                          allow_expired=allow_expired)
    manifest, signed_by = verify_bundle(data, operator_keys, expected_device_id=expected_device_id, now=now,
                                        allow_expired=allow_expired)
    view = memoryview(data)
    frame = _split(view)
    if expected_device_id is None:
        expected_device_id = find_recipient(manifest, device_private)
        if expected_device_id is None:
            raise BundleError("not_recipient", f"{M.label(manifest)} for {manifest['audience']} has no key wrap"
                                               " this device key opens (not a recipient)")
    content_key = unwrap_content_key(manifest, expected_device_id, device_private)
    try:
        plaintext = AESGCM(content_key).decrypt(base64.b64decode(manifest["payload"]["nonce"]),
                                                view[frame.payload_offset:], binding_hash(manifest))
    except InvalidTag:
        raise BundleError("decrypt_failed", f"{M.label(manifest)}: payload authentication failed: the encrypted"
                                            " payload does not belong to this manifest (version, audience or"
                                            " model differ)") from None
    if manifest["kind"] == "full":
        _check_content(manifest, plaintext)
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=hashlib.sha256(view).hexdigest(), payload=plaintext, signed_by=signed_by,
                        header=bytes(view[:frame.payload_offset]))


def content_of(plaintext: bytes) -> str:
    """The content hash of a full payload: `payload.content_sha256` for a watchlist payload; for any other bytes
    (this layer does not judge the plaintext; the loader refuses what is no watchlist) sha256 of them, domain
    separated so it never equals a payload's."""
    try:
        return content_sha256(plaintext)
    except PayloadError:
        return hashlib.sha256(OPAQUE_DOMAIN + bytes(plaintext)).hexdigest()


def open_bundle_file(path: str | os.PathLike, device_private: X25519PrivateKey, operator_keys: OperatorKeys, *,
                     expected_device_id: str | None = None, now: datetime | None = None, allow_expired: bool = False,
                     chunk_bytes: int = 1 << 20) -> OpenedBundle:
    """`open_bundle` for a full bundle on disk without ever holding it, or its plaintext, in Python memory: the
    file is read in chunks twice (its sha256, then AES-GCM decryption into `PayloadSink`, which writes the index and
    templates into memfds and hashes the content); nothing is parsed before the tag verified. The OpenedBundle's
    `payload` is a `MappedPayload`. Deltas and local bundles fall back to `open_bundle` (they are small, or
    already the device's own)."""
    path = Path(path)
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a symbolic link: OSError ELOOP
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError("oversized", f"bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES} bytes")
        head = f.read(min(size, _PREFIX + MAX_MANIFEST_BYTES + 2 + SIGNATURE_BYTES))
        if head[:len(LOCAL_MAGIC)] == LOCAL_MAGIC:
            return open_bundle(head + f.read(), device_private, operator_keys, expected_device_id=expected_device_id,
                               now=now, allow_expired=allow_expired)
        frame = _split(head)
        manifest, signed_by = _parse_verified(frame, operator_keys)
        if manifest["kind"] != "full":
            f.seek(0)
            return open_bundle(f.read(), device_private, operator_keys, expected_device_id=expected_device_id,
                               now=now, allow_expired=allow_expired)
        _check_audience(manifest, expected_device_id, now, allow_expired)
        label, declared = M.label(manifest), manifest["payload"]["length"]
        n = size - frame.payload_offset
        if n < declared:
            raise BundleError("truncated", f"{label} is truncated: the payload has {n} of {declared} bytes")
        if n > declared:
            raise BundleError("payload_mismatch", f"{label} has {n - declared} unexpected bytes after its"
                                                  f" {declared}-byte payload")

        def chunks(limit: int):
            f.seek(frame.payload_offset)
            left = limit
            while left:
                block = f.read(min(chunk_bytes, left))
                if not block:
                    raise BundleError("truncated", f"{label} shrank while it was read")
                left -= len(block)
                yield block

        digest, whole = hashlib.sha256(), hashlib.sha256()
        whole.update(head[:frame.payload_offset])
        for block in chunks(n):
            digest.update(block)
            whole.update(block)
        if digest.hexdigest() != manifest["payload"]["sha256"]:
            raise BundleError("payload_mismatch", f"{label}: the payload does not match the manifest's sha256"
                                                  " (corrupted or replaced)")
        if expected_device_id is None:
            expected_device_id = find_recipient(manifest, device_private)
            if expected_device_id is None:
                raise BundleError("not_recipient", f"{label} for {manifest['audience']} has no key wrap this device"
                                                   " key opens (not a recipient)")
        key = unwrap_content_key(manifest, expected_device_id, device_private)
        f.seek(size - 16)
        tag = f.read(16)
        decryptor = Cipher(algorithms.AES(key), modes.GCM(base64.b64decode(manifest["payload"]["nonce"]),
                                                          tag)).decryptor()
        decryptor.authenticate_additional_data(binding_hash(manifest))
        sink = PayloadSink(n - 16)
        try:
            for block in chunks(n - 16):
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


def _check_content(manifest: dict[str, Any], plaintext: bytes) -> None:
    if content_of(plaintext) != manifest["content_sha256"]:
        raise BundleError("content_mismatch", f"{M.label(manifest)}: the decrypted watchlist does not match the"
                                              " content hash in its signed manifest")


# ---------------------------------------------------------------- local bundles (the result of a delta)


def seal_local(header: bytes, full_payload: bytes, device_private: X25519PrivateKey) -> bytes:
    """A device's own record of a version it built from a delta: LOCAL_MAGIC | u32 header length | the signed
    header of that version | nonce | AES-256-GCM(key derived from the device key, AAD = header) of the full payload."""
    key = derive_key(device_private, _LOCAL_PURPOSE)
    nonce = os.urandom(12)
    return b"".join([LOCAL_MAGIC, struct.pack(">I", len(header)), header, nonce,
                     AESGCM(key).encrypt(nonce, full_payload, header)])


def open_local(data: bytes, device_private: X25519PrivateKey, operator_keys: OperatorKeys, *,
               expected_device_id: str, now: datetime | None = None, allow_expired: bool = False) -> OpenedBundle:
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
    frame = _split(header)
    if frame.payload_offset != len(header):
        raise BundleError("malformed_manifest", "local bundle header has trailing bytes")
    manifest, signed_by = _parse_verified(frame, operator_keys)
    _check_audience(manifest, expected_device_id, now, allow_expired)
    nonce = bytes(view[start + n_header:start + n_header + 12])
    try:
        plaintext = AESGCM(derive_key(device_private, _LOCAL_PURPOSE)).decrypt(
            nonce, view[start + n_header + 12:], header)
    except InvalidTag:
        raise BundleError("decrypt_failed", f"local {M.label(manifest)} does not decrypt with this device's key"
                                            " (altered, or another device's)") from None
    _check_content(manifest, plaintext)
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=hashlib.sha256(view).hexdigest(), payload=plaintext, signed_by=signed_by,
                        header=header)


def peek_manifest(data: bytes) -> dict[str, Any]:
    """The manifest as written in the file (or local bundle), WITHOUT verifying anything: for display only."""
    view = memoryview(data)
    if bytes(view[:len(LOCAL_MAGIC)]) == LOCAL_MAGIC and len(view) >= len(LOCAL_MAGIC) + 4:
        (n_header,) = struct.unpack(">I", view[len(LOCAL_MAGIC):len(LOCAL_MAGIC) + 4])
        view = view[len(LOCAL_MAGIC) + 4:len(LOCAL_MAGIC) + 4 + n_header]
    frame = _split(view)
    try:
        manifest = json.loads(frame.manifest)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError("malformed_manifest", f"bundle manifest is malformed: not JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BundleError("malformed_manifest", "bundle manifest is malformed: not a JSON object")
    return manifest


# ---------------------------------------------------------------- wipe statements


def sign_wipe(signing_key: Ed25519PrivateKey, audience: str, upto_version: int,
              issued: datetime | str | None = None) -> bytes:
    """A signed wipe statement: the devices of `audience` ("device:<id>" or "group:<name>") drop the watchlist
    they got from it if its version is ≤ `upto_version`, and accept only newer versions afterwards."""
    statement = {"format": WIPE_FORMAT, "audience": audience, "upto_version": upto_version,
                 "issued": format_time(issued if issued is not None else datetime.now(timezone.utc)),
                 "key_id": key_id(signing_key.public_key())}
    _check_wipe(statement)
    raw = canonical_json(statement)
    return canonical_json({"statement": raw.decode("ascii"),
                           "signature": _b64(signing_key.sign(WIPE_DOMAIN + raw))})


def _check_wipe(st: object) -> dict:
    if not isinstance(st, dict) or set(st) != {"format", "audience", "upto_version", "issued", "key_id"} \
            or st["format"] != WIPE_FORMAT:
        raise BundleError("bad_wipe", f"wipe statement is not a {WIPE_FORMAT} statement")
    try:
        if not isinstance(st["audience"], str) or not M.AUDIENCE_RE.match(st["audience"]):
            raise M.SchemaError("malformed_manifest", "audience must be 'device:<id>' or 'group:<name>'")
        M.need_int(st, "upto_version", 1)
        parse_time(st["issued"], "issued")
        M.need_hex(st, "key_id", 16)
    except M.SchemaError as err:
        raise BundleError("bad_wipe", f"wipe statement is malformed: {err}") from None
    return st


def verify_wipe(data: bytes, operator_keys: OperatorKeys) -> dict[str, Any]:
    """The statement of a signed wipe (audience, upto_version, issued), or BundleError bad_wipe / unknown_key /
    bad_signature. Whether it applies to this device is the store's decision."""
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
    keys = _pinned(operator_keys)
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
        statement = _check_wipe(json.loads(raw))
    except (ValueError, RecursionError):
        raise BundleError("bad_wipe", "wipe statement is not JSON") from None
    if statement["key_id"] != signed_by:
        raise BundleError("bad_signature", f"wipe statement names signing key {statement['key_id']} but was signed"
                                           f" by pinned key {signed_by}")
    return statement
