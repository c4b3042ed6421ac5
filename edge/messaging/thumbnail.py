"""Event evidence: the aligned face as a small JPEG or PNG sealed to the operator's X25519 key — the only image
that ever leaves a device, and only when the device holds the operator's evidence key (`events.thumbnails`).

A sealed chip is bound to its place (`evidence_context`: the event id and the slot, 1 = best, 2 = second best) by
the AEAD's associated data: moved to another event, or swapped between slots, it no longer opens."""

from __future__ import annotations

import base64
from typing import Any

from edge.keys import SealError, open_sealed, seal_to
from edge.messaging.payloads import MAX_THUMBNAIL_BYTES, THUMBNAIL_ALG, PayloadError, _check_thumbnail

_THUMBNAIL_INFO = b"edge-event-thumbnail/1"


def evidence_context(event_id: str, slot: int) -> bytes:
    """The associated data binding a sealed chip to event `event_id`, slot 1 (`thumbnail`) or 2 (`thumbnail2`)."""
    return f"{event_id}/{slot}".encode("ascii", "replace")


def encrypt_thumbnail(image: bytes, operator_public: Any, context: bytes = b"") -> dict[str, str]:
    """Seal a JPEG or PNG (≤ MAX_THUMBNAIL_BYTES) to the operator's X25519 public key (object or 32 raw bytes):
    ephemeral X25519 → HKDF-SHA256 → AES-256-GCM (`edge.keys.seal_to`), `context` (`evidence_context`) bound as
    associated data. Returns the event's `thumbnail` object."""
    if not isinstance(image, bytes) or not (image.startswith(b"\xff\xd8\xff") or image.startswith(b"\x89PNG\r\n")):
        raise PayloadError("thumbnail must be JPEG or PNG bytes")
    if len(image) > MAX_THUMBNAIL_BYTES:
        raise PayloadError(f"thumbnail is {len(image)} bytes; the limit is {MAX_THUMBNAIL_BYTES} bytes")
    eph_raw, nonce, ciphertext = seal_to(operator_public, image, _THUMBNAIL_INFO, _aad(context), bind_keys=True)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return {"alg": THUMBNAIL_ALG, "ephemeral_public": b64(eph_raw), "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


def decrypt_thumbnail(thumb: dict, operator_private: Any, context: bytes = b"") -> bytes:
    """The image bytes of an event's `thumbnail`, opened with the operator's X25519 private key and the `context`
    it was sealed with; PayloadError if it does not open (wrong key, altered, or moved from another event)."""
    raw = _check_thumbnail(thumb)
    try:
        image = open_sealed(operator_private, raw["ephemeral_public"], raw["nonce"], raw["ciphertext"],
                            _THUMBNAIL_INFO, _aad(context), bind_keys=True)
    except SealError:
        raise PayloadError("thumbnail cannot be decrypted with this operator key (wrong key or altered"
                           " ciphertext" + (", or not sealed for this event" if context else "") + ")") from None
    if not (image.startswith(b"\xff\xd8\xff") or image.startswith(b"\x89PNG\r\n")):
        raise PayloadError("thumbnail opened but is not a JPEG or PNG image")
    return image


def _aad(context: bytes) -> bytes:
    return THUMBNAIL_ALG.encode() + (b"\n" + context if context else b"")
