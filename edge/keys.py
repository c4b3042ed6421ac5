"""Key files, key ids and the operator trust store.

Two kinds of keys exist. The *operator* key (Ed25519) signs watchlist manifests; devices pin its public half in a
`TrustStore`. The *device* key (X25519) receives the wrapped content key of each bundle; its private half never
leaves the device. Private keys are PEM PKCS#8, unencrypted, mode 0600 from the moment the file exists; a private
key file readable by group or others is refused (like ssh does).

Rotation: the operator signs a statement "this new key replaces me" with the old key; a device that trusts the old
key verifies it and pins the new one (`TrustStore.accept_rotation`), so a chain old → new → newer is accepted one
link at a time. The old key stays pinned until `TrustStore.remove` is called.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal, Union, cast, overload

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.canonical import canonical_json
from edge.durable import atomic_write, private_dir
from edge.errors import EdgeError
from edge.files import read_file

KeyKind = Literal["operator", "device"]
PublicKey = Union[Ed25519PublicKey, X25519PublicKey]
PrivateKey = Union[Ed25519PrivateKey, X25519PrivateKey]

#: `type` of a rotation statement; also the signature's domain-separation prefix.
ROTATION_TYPE = "edge-operator-key-rotation/1"
_ROTATION_DOMAIN = ROTATION_TYPE.encode() + b"\x00"
#: `format` of a trust-store file.
TRUST_FORMAT = "edge-operator-trust/1"
#: Largest key file (a PEM key is a few hundred bytes) and trust store (4,096 keys fit) read, bytes.
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_TRUST_STORE_BYTES = 1 << 20

_KINDS: dict[str, tuple[str, type, type]] = {
    # kind: (algorithm name, private class, public class)
    "operator": ("Ed25519", Ed25519PrivateKey, Ed25519PublicKey),
    "device": ("X25519", X25519PrivateKey, X25519PublicKey),
}


class KeyFileError(EdgeError):
    """A key file is missing, unreadable, of the wrong type, too permissive, or would be overwritten."""


class SealError(EdgeError):
    """Sealed bytes cannot be opened: the wrong private key, or the ciphertext, nonce or context was altered."""


class RotationError(EdgeError):
    """A key-rotation statement was refused. `reason`: "malformed", "unknown_key" or "bad_signature"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def generate_operator_key() -> Ed25519PrivateKey:
    """A fresh operator signing key."""
    return Ed25519PrivateKey.generate()


def generate_device_key() -> X25519PrivateKey:
    """A fresh device key-agreement key."""
    return X25519PrivateKey.generate()


def _raw_public(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: PublicKey | bytes) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte public key (given as a key object or its raw bytes)."""
    raw = bytes(public_key) if isinstance(public_key, (bytes, bytearray)) else _raw_public(public_key)
    return hashlib.sha256(raw).hexdigest()[:16]


def x25519_public(raw: bytes) -> X25519PublicKey:
    """An X25519 public key from its 32 raw bytes (KeyFileError when they are not one)."""
    try:
        return X25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError:
        raise KeyFileError(f"not an X25519 public key ({len(raw)} bytes)") from None


def _kind(kind: str) -> tuple[str, type, type]:
    if kind not in _KINDS:
        raise ValueError(f"key kind must be 'operator' or 'device', got {kind!r}")
    return _KINDS[kind]


def _type_name(key: object) -> str:
    """Human name of a key's algorithm ("Ed25519", "RSA", …)."""
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return {"EllipticCurve": "EC"}.get(name, name) or type(key).__name__


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` (O_EXCL: never opens an existing file) and write `data`."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (0644 for public keys)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def save_private_key(path: str | Path, key: PrivateKey, force: bool = False) -> None:
    """Write `key` as unencrypted PEM PKCS#8 with mode 0600; refuse to replace an existing file unless `force`."""
    path = Path(path)
    private_dir(path.parent, chmod_existing=False)  # a new key directory is 0700 whatever the umask
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if force:
        atomic_write(path, pem, 0o600)
        return
    try:
        _write_new(path, pem, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; use --force to replace it") from None


def save_public_key(path: str | Path, key: PublicKey) -> None:
    """Write `key` as PEM SubjectPublicKeyInfo with mode 0644 (replacing any existing file atomically)."""
    path = Path(path)
    private_dir(path.parent, chmod_existing=False)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(path, pem, 0o644)


def _read_key_file(path: Path, check: Callable[[os.stat_result], None] | None = None) -> bytes:
    return read_file(path, "key file", MAX_KEY_FILE_BYTES, KeyFileError, check=check)


@overload
def load_private_key(path: str | Path, kind: Literal["operator"]) -> Ed25519PrivateKey: ...
@overload
def load_private_key(path: str | Path, kind: Literal["device"]) -> X25519PrivateKey: ...
@overload
def load_private_key(path: str | Path, kind: KeyKind) -> PrivateKey: ...
def load_private_key(path: str | Path, kind: KeyKind) -> PrivateKey:
    """Load a PEM private key of `kind` ("operator": Ed25519, "device": X25519).

    Refused, each with its own message: a missing file, a file readable by group or others, a file that is not a
    PEM private key (or is encrypted, or is a public key), a key of another algorithm.
    """
    alg, private_cls, _ = _kind(kind)
    path = Path(path)

    def private(st: os.stat_result) -> None:
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"key file {path} has permissions {mode:04o}; private keys must be 0600"
                               f" (chmod 600 {path})")

    data = _read_key_file(path, check=private)
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"key file {path} is not a PEM file")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise KeyFileError(f"key file {path} holds a public key; the {alg} {kind} private key is needed")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"key file {path} is encrypted; edge keys are stored unencrypted with mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"key file {path} is not a valid PEM private key") from None
    if not isinstance(key, private_cls):
        raise KeyFileError(f"key file {path} is an {_type_name(key)} key; an {alg} {kind} key is needed")
    return cast(PrivateKey, key)  # private_cls is one of the two


@overload
def load_public_key(path: str | Path, kind: Literal["operator"]) -> Ed25519PublicKey: ...
@overload
def load_public_key(path: str | Path, kind: Literal["device"]) -> X25519PublicKey: ...
@overload
def load_public_key(path: str | Path, kind: KeyKind) -> PublicKey: ...
def load_public_key(path: str | Path, kind: KeyKind) -> PublicKey:
    """Load a PEM public key of `kind` ("operator": Ed25519, "device": X25519); a private key file is refused."""
    alg, _, public_cls = _kind(kind)
    path = Path(path)
    data = _read_key_file(path)
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"key file {path} is not a PEM file")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"key file {path} holds a private key; give the public key file (.pub) instead")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"key file {path} is not a valid PEM public key") from None
    if not isinstance(key, public_cls):
        raise KeyFileError(f"key file {path} is an {_type_name(key)} key; an {alg} {kind} key is needed")
    return cast(PublicKey, key)  # public_cls is one of the two


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str, length: int) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise ValueError(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_rotation(old_private: Ed25519PrivateKey, new_public: Ed25519PublicKey, created: str | None = None) -> bytes:
    """A rotation statement: `old_private` vouches for `new_public`.

    Returns canonical JSON {"statement": {...}, "signature": base64}; the Ed25519 signature covers
    b"edge-operator-key-rotation/1\\x00" + canonical JSON of the statement.
    """
    statement = {
        "type": ROTATION_TYPE,
        "new_key": _b64(_raw_public(new_public)),
        "new_key_id": key_id(new_public),
        "signed_by": key_id(old_private.public_key()),
        "created": created or _utc_now_iso(),
    }
    signature = old_private.sign(_ROTATION_DOMAIN + canonical_json(statement))
    return canonical_json({"statement": statement, "signature": _b64(signature)})


class TrustStore:
    """The operator public keys a device accepts manifests from, by key id.

    Saved as JSON {"format": "edge-operator-trust/1", "keys": {key_id: base64 raw key}}, written atomically. A store
    loaded from (or saved to) a file re-saves itself after each change, so an accepted rotation survives a restart.
    """

    def __init__(self, keys: list[Ed25519PublicKey] | None = None, path: str | Path | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.path: Path | None = Path(path) if path is not None else None
        for key in keys or []:
            self._keys[key_id(key)] = key

    @classmethod
    def load(cls, path: str | Path) -> "TrustStore":
        """Read a trust-store file; every entry's key id must match its key."""
        path = Path(path)
        data = read_file(path, "trust store", MAX_TRUST_STORE_BYTES, KeyFileError)
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as err:
            raise KeyFileError(f"trust store {path} is not readable JSON: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != TRUST_FORMAT or not isinstance(doc.get("keys"), dict):
            raise KeyFileError(f"trust store {path} is not an {TRUST_FORMAT} file")
        store = cls(path=path)
        for kid, text in doc["keys"].items():
            try:
                key = Ed25519PublicKey.from_public_bytes(_unb64(text, f"key {kid}", 32))
            except ValueError as err:
                raise KeyFileError(f"trust store {path}: {err}") from None
            if key_id(key) != kid:
                raise KeyFileError(f"trust store {path}: entry {kid} holds key {key_id(key)}")
            store._keys[kid] = key
        return store

    def save(self, path: str | Path | None = None) -> None:
        """Write the store atomically to `path` (default: where it was loaded from); remembers the path."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise ValueError("TrustStore.save: no path given and the store was not loaded from a file")
        private_dir(self.path.parent, chmod_existing=False)
        doc = {"format": TRUST_FORMAT, "keys": {kid: _b64(_raw_public(k)) for kid, k in self._keys.items()}}
        atomic_write(self.path, canonical_json(doc) + b"\n", 0o644)

    def keys(self) -> dict[str, Ed25519PublicKey]:
        """A copy of the pinned keys: key id → public key."""
        return dict(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def pin(self, key: Ed25519PublicKey) -> str:
        """Pin `key` directly (first provisioning); returns its key id."""
        kid = key_id(key)
        self._keys[kid] = key
        self._autosave()
        return kid

    def remove(self, kid: str) -> None:
        """Unpin a key (e.g. the old key after a rotation); the last key cannot be removed."""
        if kid not in self._keys:
            raise KeyFileError(f"operator key {kid} is not pinned")
        if len(self._keys) == 1:
            raise KeyFileError(f"operator key {kid} is the only pinned key; pin its successor first")
        del self._keys[kid]
        self._autosave()

    def accept_rotation(self, statement_bytes: bytes) -> str:
        """Verify a rotation statement against a pinned key and pin the new key; returns the new key id.

        Raises RotationError: "malformed" (not a rotation statement), "unknown_key" (signer not pinned),
        "bad_signature" (the signature does not verify).
        """
        try:
            doc = json.loads(statement_bytes)
            statement, sig_text = doc["statement"], doc["signature"]
            if not isinstance(statement, dict) or set(statement) != {"type", "new_key", "new_key_id", "signed_by",
                                                                     "created"}:
                raise ValueError("statement must have exactly type, new_key, new_key_id, signed_by, created")
            if statement["type"] != ROTATION_TYPE:
                raise ValueError(f"type is {statement['type']!r}, expected {ROTATION_TYPE!r}")
            if not all(isinstance(v, str) for v in statement.values()):
                raise ValueError("statement fields must be strings")
            new_key = Ed25519PublicKey.from_public_bytes(_unb64(statement["new_key"], "new_key", 32))
            signature = _unb64(sig_text, "signature", 64)
            message = _ROTATION_DOMAIN + canonical_json(statement)
        except (ValueError, KeyError, TypeError) as err:
            raise RotationError("malformed", f"rotation statement is malformed: {err}") from None
        if key_id(new_key) != statement["new_key_id"]:
            raise RotationError("malformed", f"rotation statement is malformed: new_key_id {statement['new_key_id']}"
                                             f" does not match the new key ({key_id(new_key)})")
        signer = self._keys.get(statement["signed_by"])
        if signer is None:
            raise RotationError("unknown_key", f"rotation statement is signed by operator key"
                                               f" {statement['signed_by']}, which this device does not trust"
                                               f" (pinned: {', '.join(sorted(self._keys)) or 'none'})")
        try:
            signer.verify(signature, message)
        except InvalidSignature:
            raise RotationError("bad_signature", f"rotation statement signature does not verify with pinned key"
                                                 f" {statement['signed_by']}: the statement was altered or forged"
                                 ) from None
        return self.pin(new_key)

    def _autosave(self) -> None:
        if self.path is not None:
            self.save()


# --------------------------------------------------------------------------------------------------- sealing

def raw_public(key: X25519PublicKey | bytes) -> bytes:
    """The 32 raw bytes of an X25519 public key (given as a key object or as the raw bytes themselves)."""
    return bytes(key) if isinstance(key, (bytes, bytearray)) else _raw_public(key)


def _seal_key(shared: bytes, info: bytes, ephemeral_raw: bytes, recipient_raw: bytes, bind_keys: bool) -> bytes:
    context = info + ephemeral_raw + recipient_raw if bind_keys else info
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)


def seal_to(recipient: X25519PublicKey | bytes, plaintext: bytes, info: bytes, aad: bytes,
            bind_keys: bool = False) -> tuple[bytes, bytes, bytes]:
    """Seal `plaintext` to an X25519 public key: a fresh ephemeral key, X25519 → HKDF-SHA256 (context `info`, and
    with `bind_keys` both public keys after it) → AES-256-GCM with `aad`. The one sealing of the product: bundle
    content keys and event thumbnails. Returns (ephemeral public key, 32 raw bytes; nonce, 12; ciphertext+tag)."""
    if isinstance(recipient, (bytes, bytearray)):
        recipient = X25519PublicKey.from_public_bytes(bytes(recipient))
    ephemeral = X25519PrivateKey.generate()
    eph_raw = _raw_public(ephemeral.public_key())
    key = _seal_key(ephemeral.exchange(recipient), info, eph_raw, _raw_public(recipient), bind_keys)
    nonce = os.urandom(12)
    return eph_raw, nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(private: X25519PrivateKey, ephemeral_public: bytes, nonce: bytes, ciphertext: bytes, info: bytes,
                aad: bytes, bind_keys: bool = False) -> bytes:
    """The plaintext of a `seal_to` result, with the recipient's private key; SealError when it does not open."""
    try:
        ephemeral = X25519PublicKey.from_public_bytes(ephemeral_public)
        key = _seal_key(private.exchange(ephemeral), info, ephemeral_public, _raw_public(private.public_key()),
                        bind_keys)
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise SealError("sealed data cannot be opened with this key (wrong key, or altered data)") from None


def derive_key(private: X25519PrivateKey, purpose: bytes) -> bytes:
    """32 bytes for one purpose (e.g. the MAC of the device's install record), derived from the device's private
    key with HKDF-SHA256 (info = `purpose`): nothing new to store, and useless without the device key."""
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(raw)
