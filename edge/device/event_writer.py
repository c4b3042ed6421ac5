"""Decisions become match events: written to the audit log first, then committed to the outbox (which the
publisher drains to the broker). Nothing here touches the network, and no image bytes are ever in clear: when the
device holds the operator's evidence key, an event carries the track's best face chip — and the second best, when
the event still fits its size limit — as small JPEGs sealed to that X25519 key and bound to the event id. The
chips live in memory until sealed; only ciphertext reaches the outbox (and so the disk) or the wire.

Events carry the opaque subject id, never a name: the outbox (and its WAL) is on the device's disk until the
consumer acknowledges, so labels are resolved on the operator side from its own copy of the watchlist metadata
(`edge.operator.labels`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edge.ids import uuid7
from edge.messaging.payloads import PayloadError, encode_event, new_event
from edge.types import Decision, Frame

#: Largest JPEG of one evidence chip, bytes: two of them, base64, still fit an event (MAX_EVENT_BYTES, 16 KiB).
EVIDENCE_BYTES = 5 * 1024
#: JPEG qualities tried in turn until a chip fits EVIDENCE_BYTES.
JPEG_QUALITIES = (85, 75, 60, 45, 30)


def evidence_jpeg(chip: np.ndarray, limit: int = EVIDENCE_BYTES) -> bytes | None:
    """An aligned face chip (RGB uint8, any size) as a JPEG of at most `limit` bytes: quality lowered until it
    fits, then (a grainy chip) at 96×96 pixels; None when even that does not fit."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(chip, np.uint8), cv2.COLOR_RGB2BGR)
    for image in (bgr, cv2.resize(bgr, (96, 96), interpolation=cv2.INTER_AREA)):
        for quality in JPEG_QUALITIES:
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(jpeg) <= limit:
                return jpeg.tobytes()
    return None


class EventWriter:
    """`__call__(decision, frame, watchlist, chips)` from the pipeline's event thread.

    audit: an `edge.audit.AuditLog` (or None). outbox: an `edge.messaging.outbox.Outbox`. embedder_id: the embedding
    space's id. on_event: optional callback with the committed event (e.g. for printing in the demo).
    thumbnail_key: the operator's X25519 evidence public key, or None: events carry no face at all.
    """

    def __init__(self, device_id: str, outbox: Any, audit: Any = None, embedder_id: str = "", on_event: Any = None,
                 thumbnail_key: Any = None) -> None:
        self.thumbnail_key = thumbnail_key
        self.device_id = device_id
        self.outbox = outbox
        self.audit = audit
        self.embedder_id = embedder_id
        self.on_event = on_event

    def _sealed(self, chips: Sequence[np.ndarray], event_id: str) -> list[dict]:
        """The chips (best first, at most two) as sealed JPEGs bound to `event_id`, slots 1 and 2."""
        if self.thumbnail_key is None:
            return []
        from edge.messaging.thumbnail import encrypt_thumbnail, evidence_context

        out = []
        for chip in list(chips)[:2]:
            jpeg = evidence_jpeg(chip)
            if jpeg is not None:
                out.append(encrypt_thumbnail(jpeg, self.thumbnail_key, evidence_context(event_id, len(out) + 1)))
        return out

    def __call__(self, decision: Decision, frame: Frame, watchlist: Any, chips: Sequence[np.ndarray] = ()) -> dict:
        """Audit, then commit one decision as a `MatchEvent`; returns the event as committed (edge-event/1 dict)."""
        manifest = getattr(watchlist, "manifest", {}) or {}
        event_id = str(uuid7())
        sealed = self._sealed(chips, event_id)
        fields = dict(
            event_id=event_id, device_id=self.device_id, captured_at=frame.captured_at,
            subject_id=decision.subject_id, watchlist_id=str(manifest.get("watchlist_id", "")),
            watchlist_version=int(manifest.get("version", 0)),
            embedder_id=self.embedder_id or str(manifest.get("embedder", {}).get("id", "")),
            similarity=float(decision.similarity), threshold=float(decision.threshold), margin=float(decision.margin),
            track_id=int(decision.track_id), chips_used=int(decision.chips_used), quality=dict(decision.quality or {}),
            thumbnail=sealed[0] if sealed else None)  # no label or category: the device's disk never holds a name
        event = new_event(**fields, thumbnail2=sealed[1] if len(sealed) > 1 else None)
        if event.thumbnail2 is not None:
            try:
                encode_event(event, seq=10**15)  # the longest seq it may get
            except PayloadError:  # the second chip does not fit the event's size limit: the best one alone
                event = new_event(**fields)
        if self.audit is not None:
            self.audit.append("match", {"event_id": event.event_id, "subject_id": event.subject_id,
                                        "similarity": event.similarity, "threshold": event.threshold,
                                        "track_id": event.track_id, "watchlist_version": event.watchlist_version,
                                        "evidence_chips": len(sealed) if event.thumbnail2 else min(1, len(sealed))})
        committed = event.to_json(self.outbox.add(event))
        if self.on_event:
            self.on_event(committed)
        return committed
