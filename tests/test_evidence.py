"""Evidence on the device (issue 21): the track keeps its two best chips in memory; the event writer seals them to
the operator's evidence key, bound to the event id and slot; the second is dropped when the event would not fit."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.device.event_writer import EVIDENCE_BYTES, EventWriter, evidence_jpeg
from edge.messaging.payloads import MAX_EVENT_BYTES, PayloadError, decode_event
from edge.messaging.thumbnail import decrypt_thumbnail, encrypt_thumbnail, evidence_context
from edge.types import Decision, Detection, Frame, Track


def chip(seed: int, size: int = 112, noise: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size)[None, :, None] * np.ones((size, 1, 3))
    return np.clip(ramp + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)


def decision(**kw) -> Decision:
    fields = dict(track_id=4, subject_id="obama", label=None, category=None, similarity=0.71, threshold=0.62,
                  margin=0.2, chips_used=2,
                  similarities=(0.7, 0.71), margin_required=0.02, first_seen=0.0, decided_at=1.0,
                  quality={"eye_distance_px": 48.3, "sharpness": 0.6, "yaw": -0.1, "roll_deg": 7.0})
    fields.update(kw)
    return Decision(**fields)


def write(chips, key=None, **kw):
    import tempfile
    from pathlib import Path

    from edge.messaging.outbox import Outbox

    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.db")
        writer = EventWriter("cam-a", outbox, None, "mobilefacenet", thumbnail_key=key)
        frame = Frame(np.zeros((4, 4, 3), np.uint8), 1, 1.76e9, 0.0)
        wl = type("WL", (), {"manifest": {"watchlist_id": "wl", "version": 3}})()
        writer(decision(**kw), frame, wl, chips)
        (payload,) = [p for _, p in outbox.pending()]
        outbox.close()
        return decode_event(payload)


def test_the_track_keeps_its_two_best_chips_in_memory_best_first():
    t = Track(1, Detection((0, 0, 10, 10), 0.9, np.zeros((6, 2))), 0.0, 0.0)
    for score, seed in ((3.0, 1), (9.0, 2), (1.0, 3), (5.0, 4)):
        t.keep_chip(score, chip(seed))
    t.keep_chip(99.0, None)  # no chip (an embedder without one): nothing kept
    assert [s for s, _ in t.best_chips] == [9.0, 5.0]
    assert np.array_equal(t.evidence()[0], chip(2)) and np.array_equal(t.evidence()[1], chip(4))


def test_events_carry_both_chips_sealed_and_bound_to_the_event():
    key = X25519PrivateKey.generate()
    ev = write([chip(1), chip(2)], key.public_key())
    for slot, field in ((1, "thumbnail"), (2, "thumbnail2")):
        jpeg = decrypt_thumbnail(ev[field], key, evidence_context(ev["event_id"], slot))
        assert jpeg.startswith(b"\xff\xd8\xff") and len(jpeg) <= EVIDENCE_BYTES
    other = write([chip(1)], key.public_key())
    with pytest.raises(PayloadError, match="not sealed for this event"):  # replayed into another event
        decrypt_thumbnail(ev["thumbnail"], key, evidence_context(other["event_id"], 1))
    with pytest.raises(PayloadError, match="not sealed for this event"):  # slots swapped
        decrypt_thumbnail(ev["thumbnail2"], key, evidence_context(ev["event_id"], 1))


def test_no_key_no_face_and_one_chip_when_two_do_not_fit():
    assert "thumbnail" not in write([chip(1), chip(2)]) and "thumbnail2" not in write([chip(1)])
    key = X25519PrivateKey.generate()
    long_id = "s" * 128  # the longest subject id and a full quality object leave less room
    quality = {f"figure_{i:02d}": "x" * 200 for i in range(32)}
    ev = write([chip(1, noise=80), chip(2, noise=80)], key.public_key(), subject_id=long_id, quality=quality)
    assert "thumbnail" in ev and "thumbnail2" not in ev  # the best chip alone: the event stays within its limit
    assert len(decrypt_thumbnail(ev["thumbnail"], key, evidence_context(ev["event_id"], 1))) <= EVIDENCE_BYTES


def test_evidence_jpeg_lowers_quality_to_fit_and_gives_up_past_the_lowest():
    import cv2

    for noise, size in ((20, 112), (60, 150), (120, 150)):  # smooth to grainy: the grainy ones fit only at 96 px
        jpeg = evidence_jpeg(chip(5, size=size, noise=noise))
        assert jpeg is not None and len(jpeg) <= EVIDENCE_BYTES, noise
        shape = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape
        assert shape == ((size, size, 3) if noise == 20 else (96, 96, 3))
    assert evidence_jpeg(chip(5, size=150, noise=120), limit=200) is None
    assert len(encrypt_thumbnail(jpeg, X25519PrivateKey.generate().public_key())["ciphertext"]) * 2 < MAX_EVENT_BYTES
