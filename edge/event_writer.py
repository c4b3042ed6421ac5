"""Decisions become match events: written to the audit log first, then committed to the outbox (which the
publisher drains to the broker). Nothing here touches the network, and no image bytes are ever included."""

from __future__ import annotations

from typing import Any

from edge.policy import Decision
from edge.topics import make_event
from edge.types import Frame


class EventWriter:
    """`__call__(decision, frame, watchlist)` from the pipeline's event thread.

    audit: an `edge.audit.AuditLog` (or None). outbox: an `edge.outbox.Outbox`. embedder_id: the embedding
    space's id. on_event: optional callback with the committed event (e.g. for printing in the demo).
    """

    def __init__(self, device_id: str, outbox: Any, audit: Any = None, embedder_id: str = "", on_event: Any = None) -> None:
        self.device_id = device_id
        self.outbox = outbox
        self.audit = audit
        self.embedder_id = embedder_id
        self.on_event = on_event

    def __call__(self, decision: Decision, frame: Frame, watchlist: Any) -> dict:
        manifest = getattr(watchlist, "manifest", {}) or {}
        event = make_event(
            device_id=self.device_id, captured_at=frame.captured_at, subject_id=decision.subject_id,
            watchlist_id=str(manifest.get("watchlist_id", "")), watchlist_version=int(manifest.get("version", 0)),
            embedder_id=self.embedder_id or str(manifest.get("embedder", {}).get("id", "")),
            similarity=float(decision.similarity), threshold=float(decision.threshold), margin=float(decision.margin),
            track_id=int(decision.track_id), chips_used=int(decision.chips_used), quality=dict(decision.quality or {}),
            label=decision.label or None, category=decision.category or None)
        if self.audit is not None:
            self.audit.append("match", {"event_id": event["event_id"], "subject_id": event["subject_id"],
                                        "similarity": event["similarity"], "threshold": event["threshold"],
                                        "track_id": event["track_id"], "watchlist_version": event["watchlist_version"]})
        event["seq"] = self.outbox.add(event)
        if self.on_event:
            self.on_event(event)
        return event
