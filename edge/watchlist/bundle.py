"""The watchlist bundle: one signed manifest and one encrypted payload, for one device (bytes in, bytes out).

Layout (all integers big-endian):

    b"EDGEWL1\\n"            8 bytes   magic
    manifest length          u32       ≤ MAX_MANIFEST_BYTES (64 KiB)
    manifest                 canonical JSON (`edge.keys.canonical_json`)
    signature length         u16       always 64
    signature                Ed25519 over b"edge-watchlist-manifest/1\\x00" + manifest bytes
    payload ciphertext       the rest of the file (AES-256-GCM, tag appended); whole file ≤ MAX_BUNDLE_BYTES (2 GiB)

Crypto. Each `seal` draws a fresh 32-byte content key. The payload is AES-256-GCM under it with AAD = the *binding
hash*: sha256 of the canonical JSON of the manifest's binding fields (`BINDING_FIELDS`: everything except `payload`,
`key_wrap` and `signing`, i.e. format, ids, version, device, embedder, dim, metric, counts, times, thresholds). A
ciphertext moved under a manifest for another device, version or model therefore fails to decrypt even if that
manifest were validly signed. The content key is wrapped to the device's X25519 key: an ephemeral X25519 key pair,
KEK = HKDF-SHA256(shared secret, 32 bytes, salt=None, info=b"edge-watchlist-keywrap/1" + device_id UTF-8 + version
as 8 bytes), wrapped = AES-256-GCM(KEK).encrypt(nonce, content key, AAD = binding hash).

Verification (`open_bundle`) never parses what it has not yet authenticated: magic, length fields and limits,
signature against the pinned operator keys, and only then the manifest JSON and its schema, device, expiry, payload
length and hash, key unwrap and decryption. Every failure is a `BundleError` with a stable `reason` code.

Lines: the bundle format, its manifest schema, sealing and verification are one security boundary, read as one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Union

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import EdgeError
from edge.canonical import canonical_json
from edge.keys import SealError, TrustStore, key_id, open_sealed, seal_to

MAGIC = b"EDGEWL1\n"
FORMAT = "edge-watchlist/1"
SIGNATURE_DOMAIN = b"edge-watchlist-manifest/1\x00"
KEYWRAP_INFO = b"edge-watchlist-keywrap/1"
#: Largest manifest accepted, bytes.
MAX_MANIFEST_BYTES = 64 * 1024
#: Largest bundle accepted (whole file), bytes.
MAX_BUNDLE_BYTES = 2 * 1024**3
SIGNATURE_BYTES = 64
CIPHER = "AES-256-GCM"
KEYWRAP_ALG = "X25519-HKDF-SHA256/AES-256-GCM"
SIGNING_ALG = "Ed25519"
METRIC = "angular"
#: Manifest fields covered by the binding hash (AAD of both the payload and the wrapped key).
BINDING_FIELDS = ("format", "watchlist_id", "version", "device_id", "embedder", "dim", "metric", "n_items",
                  "n_subjects", "created", "expires", "thresholds")
MANIFEST_FIELDS = frozenset(BINDING_FIELDS) | {"payload", "key_wrap", "signing"}

_PREFIX = len(MAGIC) + 4  # magic + u32 manifest length
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")
_HEX_RE = re.compile(r"[0-9a-f]+\Z")
_MAX_VERSION = 2**63 - 1
_TAG_BYTES = 16

OperatorKeys = Union[Mapping[str, Ed25519PublicKey], TrustStore]


class BundleError(EdgeError):
    """A bundle was refused. `reason` is a stable short code; `str(err)` names the cause for a person.

    Codes: bad_magic, truncated, oversized, bad_signature, unknown_key, malformed_manifest, unsupported_format,
    wrong_device, expired, payload_mismatch, unwrap_failed, decrypt_failed.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OpenedBundle:
    """A verified, decrypted bundle.

    manifest: the parsed manifest. manifest_sha256 / bundle_sha256: hex sha256 of the manifest bytes / whole file.
    payload: the decrypted plaintext (keep it in memory). signed_by: id of the pinned key that verified it.
    """

    manifest: dict[str, Any]
    manifest_sha256: str
    bundle_sha256: str
    payload: bytes = field(repr=False)
    signed_by: str = ""

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def watchlist_id(self) -> str:
        return str(self.manifest["watchlist_id"])


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


# ---------------------------------------------------------------- manifest schema


class _SchemaError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _bad(detail: str) -> _SchemaError:
    return _SchemaError("malformed_manifest", detail)


def _need_str(obj: dict, key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise _bad(f"{where}{key} must be a non-empty string of at most 256 characters")
    return value


def _need_int(obj: dict, key: str, low: int, where: str = "") -> int:
    value = obj.get(key)
    if type(value) is not int or not low <= value <= _MAX_VERSION:
        raise _bad(f"{where}{key} must be an integer ≥ {low}, got {value!r}")
    return value


def _need_hex(obj: dict, key: str, digits: int, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != digits or not _HEX_RE.match(value):
        raise _bad(f"{where}{key} must be {digits} lowercase hex digits")
    return value


def _need_b64(obj: dict, key: str, length: int, where: str = "") -> bytes:
    value = obj.get(key)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != length:
        raise _bad(f"{where}{key} must be base64 of {length} bytes")
    return raw


def _need_obj(obj: dict, key: str, fields: set[str]) -> dict:
    value = obj.get(key)
    if not isinstance(value, dict) or set(value) != fields:
        raise _bad(f"{key} must be an object with exactly the fields {', '.join(sorted(fields))}")
    return value


def _need_const(obj: dict, key: str, expected: str, where: str = "") -> None:
    if obj.get(key) != expected:
        raise _SchemaError("unsupported_format", f"{where}{key} {obj.get(key)!r} is not supported"
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


def _validate_binding(m: dict) -> None:
    _need_const(m, "format", FORMAT, "bundle ")
    _need_str(m, "watchlist_id")
    _need_int(m, "version", 1)
    _need_str(m, "device_id")
    embedder = _need_obj(m, "embedder", {"id", "sha256"})
    _need_str(embedder, "id", "embedder.")
    _need_hex(embedder, "sha256", 64, "embedder.")
    _need_int(m, "dim", 1)
    _need_const(m, "metric", METRIC, "embedding ")
    _need_int(m, "n_items", 0)
    _need_int(m, "n_subjects", 0)
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


def _validate(m: object) -> dict:
    """The manifest as a dict, or _SchemaError naming the first problem."""
    if not isinstance(m, dict):
        raise _bad("the manifest is not a JSON object")
    _need_const(m, "format", FORMAT, "bundle ")
    missing, unknown = MANIFEST_FIELDS - set(m), set(m) - MANIFEST_FIELDS
    if missing:
        raise _bad(f"missing field(s) {', '.join(sorted(missing))}")
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(sorted(unknown))}")
    _validate_binding(m)
    payload = _need_obj(m, "payload", {"length", "sha256", "cipher", "nonce"})
    _need_int(payload, "length", _TAG_BYTES, "payload.")
    _need_hex(payload, "sha256", 64, "payload.")
    _need_const(payload, "cipher", CIPHER, "payload ")
    _need_b64(payload, "nonce", 12, "payload.")
    wrap = _need_obj(m, "key_wrap", {"alg", "ephemeral_public", "nonce", "wrapped_key"})
    _need_const(wrap, "alg", KEYWRAP_ALG, "key_wrap ")
    _need_b64(wrap, "ephemeral_public", 32, "key_wrap.")
    _need_b64(wrap, "nonce", 12, "key_wrap.")
    _need_b64(wrap, "wrapped_key", 32 + _TAG_BYTES, "key_wrap.")
    signing = _need_obj(m, "signing", {"alg", "key_id"})
    _need_const(signing, "alg", SIGNING_ALG, "signing ")
    _need_hex(signing, "key_id", 16, "signing.")
    return m


def _parse_manifest(raw: bytes) -> dict:
    """Parse and validate *verified* manifest bytes; they must be exactly their canonical encoding."""
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    try:
        manifest = json.loads(raw.decode("ascii"), parse_constant=no_constants)
        canonical = canonical_json(manifest) == raw
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError("malformed_manifest", f"bundle manifest is malformed: not JSON ({err})") from None
    if not canonical:
        raise BundleError("malformed_manifest", "bundle manifest is malformed: not canonical JSON")
    try:
        return _validate(manifest)
    except _SchemaError as err:
        raise BundleError(err.reason, f"bundle manifest is malformed: {err}" if err.reason == "malformed_manifest"
                          else f"unsupported bundle: {err}; update the device software") from None


# ---------------------------------------------------------------- crypto


def binding_hash(manifest: Mapping[str, Any]) -> bytes:
    """sha256 (32 raw bytes) of the canonical JSON of the manifest's binding fields; the AEAD AAD."""
    return hashlib.sha256(canonical_json({k: manifest[k] for k in BINDING_FIELDS})).digest()


def _keywrap_info(device_id: str, version: int) -> bytes:
    return KEYWRAP_INFO + device_id.encode("utf-8") + version.to_bytes(8, "big")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def wrap_content_key(content_key: bytes, device_public: X25519PublicKey, device_id: str, version: int,
                     binding: bytes) -> dict[str, str]:
    """The manifest's `key_wrap` object: `content_key` sealed to `device_public` (`edge.keys.seal_to`)."""
    eph_raw, nonce, wrapped = seal_to(device_public, content_key, _keywrap_info(device_id, version), binding)
    return {"alg": KEYWRAP_ALG, "ephemeral_public": _b64(eph_raw), "nonce": _b64(nonce), "wrapped_key": _b64(wrapped)}


def unwrap_content_key(manifest: Mapping[str, Any], device_private: X25519PrivateKey) -> bytes:
    """The content key of a validated manifest, or BundleError unwrap_failed."""
    wrap = manifest["key_wrap"]
    try:
        return open_sealed(device_private, base64.b64decode(wrap["ephemeral_public"]), base64.b64decode(wrap["nonce"]),
                           base64.b64decode(wrap["wrapped_key"]),
                           _keywrap_info(manifest["device_id"], manifest["version"]), binding_hash(manifest))
    except SealError:
        raise BundleError("unwrap_failed", f"cannot unwrap the content key: bundle {manifest['watchlist_id']}"
                                           f" v{manifest['version']} for device {manifest['device_id']} was not"
                                           " sealed for this device's key (or its key wrap was altered)") from None


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
    device_id: str,
    device_public: X25519PublicKey,
    signing_key: Ed25519PrivateKey,
    embedder_id: str,
    embedder_sha256: str,
    dim: int,
    n_items: int,
    n_subjects: int,
    thresholds: Mapping[str, float],
    expires: datetime | str,
    created: datetime | str | None = None,
) -> bytes:
    """Encrypt `payload` for one device and sign the manifest; returns the bundle bytes.

    expires / created: aware datetimes or "YYYY-MM-DDTHH:MM:SSZ" strings (created defaults to now, UTC).
    Bad arguments raise BundleError("malformed_manifest", "cannot seal watchlist bundle: …").
    """
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT, "watchlist_id": watchlist_id, "version": version, "device_id": device_id,
            "embedder": {"id": embedder_id, "sha256": embedder_sha256}, "dim": dim, "metric": METRIC,
            "n_items": n_items, "n_subjects": n_subjects, "thresholds": dict(thresholds),
            "created": format_time(created if created is not None else datetime.now(timezone.utc)),
            "expires": format_time(expires),
        }
        _validate_binding(manifest)
    except _SchemaError as err:
        raise BundleError(err.reason, f"cannot seal watchlist bundle: {err}") from None
    binding = binding_hash(manifest)
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(content_key).encrypt(nonce, bytes(payload), binding)
    manifest["payload"] = {"length": len(ciphertext), "sha256": hashlib.sha256(ciphertext).hexdigest(),
                           "cipher": CIPHER, "nonce": _b64(nonce)}
    manifest["key_wrap"] = wrap_content_key(content_key, device_public, device_id, version, binding)
    manifest["signing"] = {"alg": SIGNING_ALG, "key_id": key_id(signing_key.public_key())}
    _validate(manifest)
    data = assemble(manifest, signing_key, ciphertext)
    if len(canonical_json(manifest)) > MAX_MANIFEST_BYTES or len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("oversized", f"cannot seal watchlist bundle: {len(data)} bytes exceeds the limits"
                                       f" (manifest ≤ {MAX_MANIFEST_BYTES}, bundle ≤ {MAX_BUNDLE_BYTES} bytes)")
    return data


def verify_bundle(data: bytes, operator_keys: OperatorKeys, *, expected_device_id: str | None = None,
                  now: datetime | None = None, allow_expired: bool = False) -> tuple[dict[str, Any], str]:
    """Everything about a bundle that needs no device key: framing, the pinned operator's signature, the manifest's
    schema, the device it is for, expiry, and the payload's length and sha256. Returns (the validated manifest,
    the id of the pinned key that signed it), or raises BundleError. `open_bundle` runs this first; `edge watchlist publish` runs it before sending."""
    view = memoryview(data)
    frame = _split(view)
    signed_by = _verify(frame, _pinned(operator_keys))
    manifest = _parse_manifest(frame.manifest)
    label = f"bundle {manifest['watchlist_id']} v{manifest['version']}"
    if manifest["signing"]["key_id"] != signed_by:
        raise BundleError("bad_signature", f"{label} names signing key {manifest['signing']['key_id']} but was"
                                           f" signed by pinned key {signed_by}")
    if expected_device_id is not None and manifest["device_id"] != expected_device_id:
        raise BundleError("wrong_device", f"{label} is for device {manifest['device_id']!r}; this device is"
                                          f" {expected_device_id!r}")
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("verify_bundle: `now` must be a timezone-aware datetime")
    if not allow_expired and parse_time(manifest["expires"]) <= now:
        raise BundleError("expired", f"{label} expired at {manifest['expires']}: the watchlist is stale; ask the"
                                     " operator for a fresh bundle")
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

    operator_keys: the pinned operator keys (a TrustStore or key id → Ed25519PublicKey). expected_device_id: refuse
    bundles for any other device. now: the current time (aware; default: the clock). allow_expired: accept a bundle
    whose `expires` has passed (used only to keep serving an already-installed watchlist, marked stale).
    """
    manifest, signed_by = verify_bundle(data, operator_keys, expected_device_id=expected_device_id, now=now,
                                        allow_expired=allow_expired)
    view = memoryview(data)
    frame = _split(view)
    ciphertext = view[frame.payload_offset:]
    label = f"bundle {manifest['watchlist_id']} v{manifest['version']}"
    content_key = unwrap_content_key(manifest, device_private)
    try:
        plaintext = AESGCM(content_key).decrypt(base64.b64decode(manifest["payload"]["nonce"]), ciphertext,
                                                binding_hash(manifest))
    except InvalidTag:
        raise BundleError("decrypt_failed", f"{label}: payload authentication failed: the encrypted payload does"
                                            " not belong to this manifest (device, version or model differ)"
                          ) from None
    return OpenedBundle(manifest=manifest, manifest_sha256=hashlib.sha256(frame.manifest).hexdigest(),
                        bundle_sha256=hashlib.sha256(view).hexdigest(), payload=plaintext, signed_by=signed_by)


def peek_manifest(data: bytes) -> dict[str, Any]:
    """The manifest as written in the file, WITHOUT verifying anything: untrusted, for display only."""
    frame = _split(memoryview(data))
    try:
        manifest = json.loads(frame.manifest)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError("malformed_manifest", f"bundle manifest is malformed: not JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BundleError("malformed_manifest", "bundle manifest is malformed: not a JSON object")
    return manifest
