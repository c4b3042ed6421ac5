"""Decisions become match events: written to the audit log first, then committed to the outbox (which the
publisher drains to the broker). Nothing here touches the network. No image bytes leave in clear: only when the
operator enabled thumbnails is a small JPEG of the aligned face attached, encrypted to the operator's X25519 key.

Events carry the opaque subject id, never a name: the outbox (and its WAL) is on the device's disk until the
consumer acknowledges, so labels are resolved on the operator side from its own copy of the watchlist metadata
(`edge.operator.labels`)."""

from __future__ import annotations

from typing import Any

from edge.messaging.payloads import MAX_THUMBNAIL_BYTES, new_event
from edge.types import Decision, Frame


class EventWriter:
    """`__call__(decision, frame, watchlist)` from the pipeline's event thread.

    audit: an `edge.audit.AuditLog` (or None). outbox: an `edge.messaging.outbox.Outbox`. embedder_id: the embedding
    space's id. on_event: optional callback with the committed event (e.g. for printing in the demo).
    """

    def __init__(self, device_id: str, outbox: Any, audit: Any = None, embedder_id: str = "", on_event: Any = None,
                 thumbnail_key: Any = None) -> None:
        self.thumbnail_key = thumbnail_key  # X25519 public key of the operator, or None: no thumbnails
        self.device_id = device_id
        self.outbox = outbox
        self.audit = audit
        self.embedder_id = embedder_id
        self.on_event = on_event

    def _thumbnail(self, chip: Any) -> dict | None:
        """The chip as a ≤ 9 KiB JPEG sealed to the operator's key (quality lowered until it fits)."""
        if self.thumbnail_key is None or chip is None:
            return None
        import cv2

        from edge.messaging.thumbnail import encrypt_thumbnail

        bgr = cv2.cvtColor(cv2.resize(chip, (96, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
        for quality in (80, 60, 40, 20):
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(jpeg) <= MAX_THUMBNAIL_BYTES:
                return encrypt_thumbnail(jpeg.tobytes(), self.thumbnail_key)
        return None

    def __call__(self, decision: Decision, frame: Frame, watchlist: Any, chip: Any = None) -> dict:
        """Audit, then commit one decision as a `MatchEvent`; returns the event as committed (edge-event/1 dict)."""
        manifest = getattr(watchlist, "manifest", {}) or {}
        event = new_event(
            device_id=self.device_id, captured_at=frame.captured_at, subject_id=decision.subject_id,
            watchlist_id=str(manifest.get("watchlist_id", "")), watchlist_version=int(manifest.get("version", 0)),
            embedder_id=self.embedder_id or str(manifest.get("embedder", {}).get("id", "")),
            similarity=float(decision.similarity), threshold=float(decision.threshold), margin=float(decision.margin),
            track_id=int(decision.track_id), chips_used=int(decision.chips_used), quality=dict(decision.quality or {}),
            thumbnail=self._thumbnail(chip))  # no label or category: the device's disk never holds a name
        if self.audit is not None:
            self.audit.append("match", {"event_id": event.event_id, "subject_id": event.subject_id,
                                        "similarity": event.similarity, "threshold": event.threshold,
                                        "track_id": event.track_id, "watchlist_version": event.watchlist_version})
        committed = event.to_json(self.outbox.add(event))
        if self.on_event:
            self.on_event(committed)
        return committed
