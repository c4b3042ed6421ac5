"""The watchlist bundle, format 2, as bytes: its layout, limits and error codes, shared by the operator's sealing
(`edge.watchlist.operator.seal`) and the device's verification and opening (`edge.watchlist.device`). No keys and
no cryptography here: this module only frames, hashes and names.

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

Verification (`edge.watchlist.device.verify`, `.unseal`) never parses what it has not yet authenticated: magic,
length fields and limits, signature against the pinned operator keys, and only then the manifest JSON and its
schema, recipient, expiry, payload length and hash, key unwrap and decryption. Every failure is a `BundleError`
with a stable `reason`.

A device that applied a delta keeps the result as a *local bundle* (`edge.watchlist.device.local`):
LOCAL_MAGIC | u32 header length | the operator's signed header of that version | nonce | the rebuilt full payload
encrypted under a key derived from the device key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from edge.canonical import canonical_json
from edge.errors import EdgeError
from edge.install_state import InstallReason
from edge.watchlist import manifest as M
from edge.watchlist.payload import OPAQUE_DOMAIN, MappedPayload, PayloadError, content_sha256

MAGIC = b"EDGEWL2\n"
OLD_MAGIC = b"EDGEWL1\n"
LOCAL_MAGIC = b"EDGEWLL\n"
SIGNATURE_DOMAIN = b"edge-watchlist-manifest/2\x00"
KEYWRAP_INFO = b"edge-watchlist-keywrap/2"
#: Largest manifest accepted, bytes (room for ~5,000 recipients).
MAX_MANIFEST_BYTES = 1024 * 1024
#: Largest bundle accepted (whole file), bytes.
MAX_BUNDLE_BYTES = 2 * 1024**3
SIGNATURE_BYTES = 64
#: magic + u32 manifest length
PREFIX = len(MAGIC) + 4
#: Enough of a file's head to hold its magic, manifest and signature.
MAX_HEADER_BYTES = PREFIX + MAX_MANIFEST_BYTES + 2 + SIGNATURE_BYTES

#: A decrypted payload: bytes, or (a full bundle streamed from disk) the index and templates in memfds.
Plaintext = Union[bytes, MappedPayload]


class BundleError(EdgeError):
    """A bundle was refused. `reason` is a stable short code (an `InstallReason`); `str(err)` names the cause for a
    person.

    Codes: bad_magic, truncated, oversized, bad_signature, unknown_key, malformed_manifest, unsupported_format,
    not_recipient, expired, payload_mismatch, unwrap_failed, decrypt_failed, content_mismatch, bad_wipe.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = InstallReason(reason)


@dataclass(frozen=True)
class OpenedBundle:
    """A verified, decrypted bundle.

    manifest: the parsed manifest. manifest_sha256 / bundle_sha256: hex sha256 of the manifest bytes / whole file.
    payload: the decrypted plaintext (keep it in memory): a full payload, or a delta when manifest kind is "delta"
    (a `MappedPayload` when a full bundle was streamed from disk). signed_by: id of the pinned key that verified it.
    header: the file up to the payload (magic … signature).
    """

    manifest: dict[str, Any]
    manifest_sha256: str
    bundle_sha256: str
    payload: Plaintext = field(repr=False)
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

    @property
    def payload_bytes(self) -> bytes:
        """The payload as bytes: a delta's, or a full one `open_bundle` decrypted (only `open_bundle_file` maps a
        full payload into memfds); TypeError for a mapped one."""
        if isinstance(self.payload, MappedPayload):
            raise TypeError(f"watchlist {self.watchlist_id} v{self.version}: the payload is mapped, not bytes")
        return self.payload


@dataclass(frozen=True)
class Frame:
    """The parts of a bundle's head: manifest bytes (unverified), signature, and where the payload starts."""

    manifest: bytes
    signature: bytes
    payload_offset: int


def split(data: bytes | memoryview) -> Frame:
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
    if n < PREFIX:
        raise BundleError("truncated", f"bundle is truncated: {n} bytes, shorter than the file header")
    (manifest_len,) = struct.unpack(">I", data[len(MAGIC):PREFIX])
    if manifest_len > MAX_MANIFEST_BYTES:
        raise BundleError("oversized", f"bundle manifest length field says {manifest_len} bytes;"
                                       f" the limit is {MAX_MANIFEST_BYTES} bytes")
    sig_len_at = PREFIX + manifest_len
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
    return Frame(bytes(data[PREFIX:sig_len_at]), bytes(data[sig_len_at + 2:payload_at]), payload_at)


def claimed_key_id(manifest: bytes) -> str | None:
    """signing.key_id of an *unverified* manifest, only to word an error message; None if unreadable."""
    try:
        kid = json.loads(manifest)["signing"]["key_id"]
        return kid if isinstance(kid, str) and len(kid) <= 64 else None
    except Exception:  # noqa: BLE001 - untrusted bytes; any failure just means "no hint"
        return None


def binding_hash(manifest: Mapping[str, Any]) -> bytes:
    """sha256 (32 raw bytes) of the canonical JSON of the manifest's binding fields; the AEAD AAD."""
    return hashlib.sha256(canonical_json({k: manifest[k] for k in M.BINDING_FIELDS})).digest()


def keywrap_info(device_id: str, version: int) -> bytes:
    """The HKDF info of a device's key wrap of one version."""
    return KEYWRAP_INFO + device_id.encode("utf-8") + version.to_bytes(8, "big")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def content_of(plaintext: bytes) -> str:
    """The content hash of a full payload: `payload.content_sha256` for a watchlist payload; for any other bytes
    (this layer does not judge the plaintext; the loader refuses what is no watchlist) sha256 of them, domain
    separated so it never equals a payload's."""
    try:
        return content_sha256(plaintext)
    except PayloadError:
        return hashlib.sha256(OPAQUE_DOMAIN + bytes(plaintext)).hexdigest()


def check_content(manifest: Mapping[str, Any], plaintext: bytes) -> None:
    """BundleError content_mismatch unless `plaintext` is the full content the signed manifest names."""
    if content_of(plaintext) != manifest["content_sha256"]:
        raise BundleError("content_mismatch", f"{M.label(manifest)}: the decrypted watchlist does not match the"
                                              " content hash in its signed manifest")


def peek_manifest(data: bytes) -> dict[str, Any]:
    """The manifest as written in the file (or local bundle), WITHOUT verifying anything: for display only."""
    view = memoryview(data)
    if bytes(view[:len(LOCAL_MAGIC)]) == LOCAL_MAGIC and len(view) >= len(LOCAL_MAGIC) + 4:
        (n_header,) = struct.unpack(">I", view[len(LOCAL_MAGIC):len(LOCAL_MAGIC) + 4])
        view = view[len(LOCAL_MAGIC) + 4:len(LOCAL_MAGIC) + 4 + n_header]
    frame = split(view)
    try:
        manifest = json.loads(frame.manifest)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError("malformed_manifest", f"bundle manifest is malformed: not JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BundleError("malformed_manifest", "bundle manifest is malformed: not a JSON object")
    return manifest
