"""Event thumbnails: the aligned face as a small JPEG or PNG sealed to the operator's X25519 key — the only image
that may ever leave a device, and only when the config enables it (`events.thumbnails`)."""

from __future__ import annotations

import base64
from typing import Any

from edge.keys import SealError, open_sealed, seal_to
from edge.messaging.payloads import MAX_THUMBNAIL_BYTES, THUMBNAIL_ALG, PayloadError, _check_thumbnail

_THUMBNAIL_INFO = b"edge-event-thumbnail/1"


def encrypt_thumbnail(image: bytes, operator_public: Any) -> dict[str, str]:
    """Seal a JPEG or PNG (≤ MAX_THUMBNAIL_BYTES) to the operator's X25519 public key (object or 32 raw bytes):
    ephemeral X25519 → HKDF-SHA256 → AES-256-GCM (`edge.keys.seal_to`). Returns the event's `thumbnail` object."""
    if not isinstance(image, bytes) or not (image.startswith(b"\xff\xd8\xff") or image.startswith(b"\x89PNG\r\n")):
        raise PayloadError("thumbnail must be JPEG or PNG bytes")
    if len(image) > MAX_THUMBNAIL_BYTES:
        raise PayloadError(f"thumbnail is {len(image)} bytes; the limit is {MAX_THUMBNAIL_BYTES} bytes")
    eph_raw, nonce, ciphertext = seal_to(operator_public, image, _THUMBNAIL_INFO, THUMBNAIL_ALG.encode(),
                                         bind_keys=True)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return {"alg": THUMBNAIL_ALG, "ephemeral_public": b64(eph_raw), "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


def decrypt_thumbnail(thumb: dict, operator_private: Any) -> bytes:
    """The image bytes of an event's `thumbnail`, opened with the operator's X25519 private key."""
    raw = _check_thumbnail(thumb)
    try:
        return open_sealed(operator_private, raw["ephemeral_public"], raw["nonce"], raw["ciphertext"], _THUMBNAIL_INFO,
                           THUMBNAIL_ALG.encode(), bind_keys=True)
    except SealError:
        raise PayloadError("thumbnail cannot be decrypted with this operator key (wrong key or altered"
                           " ciphertext)") from None
