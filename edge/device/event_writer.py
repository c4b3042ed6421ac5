"""Decisions become match events: each is committed to the outbox (held from the sender), then written to the audit
log, then released to the publisher — so an event is never published without its audit record, and after a crash
between the two `reconcile` writes the missing record at start. Nothing here touches the network, and no image
bytes are ever in clear: when the device holds the operator's evidence key, an event carries the track's best face
chip — and the second best, when the event still fits its size limit — as small JPEGs sealed to that X25519 key
and bound to the event id. The chips live in memory until sealed; only ciphertext reaches the disk or the wire.

When the disk refuses (full, I/O error), nothing is lost quietly: events wait in a bounded in-memory queue
(`MAX_HELD`) and are retried in order by every new event and by the control loop (`retry`); the first "no space
left" gives back the space reserve (`SpaceReserve`) and says "disk full". If the queue overflows, the oldest held
event is dropped and counted, and once the disk takes writes again an `events_dropped` audit record says how many,
of which subjects and when; health reports `events_held` and `events_dropped_storage` in the status heartbeat.

Events carry the opaque subject id, never a name: the outbox (and its WAL) is on the device's disk until the
consumer acknowledges, so labels are resolved on the operator side from its own copy of the watchlist metadata
(`edge.operator.labels`)."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edge.audit import AuditError, tail
from edge.device.space_reserve import is_disk_full
from edge.ids import uuid7
from edge.messaging.outbox import MAX_SEQ, OutboxError
from edge.messaging.payloads import PayloadError, encode_event, new_event
from edge.types import Decision, Frame, MatchEvent

log = logging.getLogger(__name__)

#: Largest JPEG of one evidence chip, bytes: two of them, base64, still fit an event (MAX_EVENT_BYTES, 16 KiB).
EVIDENCE_BYTES = 5 * 1024
#: Most events held in memory while the disk refuses them (each ≤ 16 KiB: ≤ 16 MiB in all).
MAX_HELD = 1000
#: JPEG qualities tried in turn until a chip fits EVIDENCE_BYTES.
JPEG_QUALITIES = (85, 75, 60, 45, 30)


def evidence_jpeg(chip: np.ndarray, limit: int = EVIDENCE_BYTES) -> bytes | None:
    """An aligned face chip (RGB uint8, any size) as a JPEG of at most `limit` bytes: quality lowered until it
    fits, then (a grainy chip) at 96×96 pixels; None when even that does not fit."""
    from edge.vision.jpeg import fit_jpeg

    return fit_jpeg(chip, JPEG_QUALITIES, limit) or fit_jpeg(chip, JPEG_QUALITIES, limit, (96, 96))


@dataclass
class _Held:
    """An event not yet both in the outbox and in the audit log: `seq` once the outbox has it (held there)."""

    event: MatchEvent
    seq: int | None = None


class EventWriter:
    """`__call__(decision, frame, watchlist, chips)` from the pipeline's event thread; `retry()` from the control
    loop while events are held.

    audit: an `edge.audit.AuditLog` (or None). outbox: an `edge.messaging.outbox.Outbox`. embedder_id: the embedding
    space's id. on_event: optional callback with each committed event (e.g. for printing in the demo).
    thumbnail_key: the operator's X25519 evidence public key, or None: events carry no face at all.
    health: an `edge.device.health.Health` for the counters (or None). reserve: a `SpaceReserve` (or None).
    """

    def __init__(self, device_id: str, outbox: Any, audit: Any = None, embedder_id: str = "", on_event: Any = None,
                 thumbnail_key: Any = None, health: Any = None, reserve: Any = None,
                 max_held: int = MAX_HELD) -> None:
        self.thumbnail_key = thumbnail_key
        self.device_id = device_id
        self.outbox = outbox
        self.audit = audit
        self.embedder_id = embedder_id
        self.on_event = on_event
        self.health = health
        self.reserve = reserve
        self.max_held = max_held
        self._held: deque[_Held] = deque()
        self._dropped: dict | None = None  # events given up while the disk refused: audited once it takes writes
        self._failing = False
        self._lock = threading.Lock()

    def _sealed(self, chips: Sequence[np.ndarray], event_id: str) -> list[dict]:
        """The chips (best first, at most two) as sealed JPEGs bound to `event_id`, slots 1 and 2."""
        if self.thumbnail_key is None:
            return []
        from edge.messaging.thumbnail import encrypt_thumbnail, evidence_context

        out: list[dict[str, Any]] = []
        for chip in list(chips)[:2]:
            jpeg = evidence_jpeg(chip)
            if jpeg is not None:
                out.append(encrypt_thumbnail(jpeg, self.thumbnail_key, evidence_context(event_id, len(out) + 1)))
        return out

    def make_event(self, decision: Decision, frame: Frame, watchlist: Any,
                   chips: Sequence[np.ndarray] = ()) -> MatchEvent:
        """The `MatchEvent` of a decision, with its evidence sealed (validated when the outbox stores it)."""
        manifest = getattr(watchlist, "manifest", {}) or {}
        event_id = str(uuid7())
        sealed = self._sealed(chips, event_id)
        fields: dict[str, Any] = dict(
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
                encode_event(event, seq=MAX_SEQ)  # checked as the outbox will: at the widest seq
            except PayloadError:  # the second chip does not fit the event's size limit: the best one alone
                event = new_event(**fields)
        return event

    def __call__(self, decision: Decision, frame: Frame, watchlist: Any, chips: Sequence[np.ndarray] = ()) -> dict:
        """Queue one decision's event and write what the disk takes, in order; returns the event (edge-event/1
        dict; `seq` None while it is held in memory)."""
        held = _Held(self.make_event(decision, frame, watchlist, chips))
        with self._lock:
            self._held.append(held)
            while len(self._held) > self.max_held:
                self._drop(self._held.popleft())
            self._drain()
        return held.event.to_json(held.seq)

    def retry(self) -> int:
        """Write the held events the disk now takes (in order); returns how many are still held."""
        with self._lock:
            if self._held or self._dropped:
                self._drain()
            elif self.reserve is not None and not self._failing:
                self.reserve.restore()
            return len(self._held)

    @property
    def held(self) -> int:
        """Events waiting in memory for the disk."""
        return len(self._held)

    # ------------------------------------------------------------------------------------------------ internals

    def _drop(self, h: _Held) -> None:
        """Give up the oldest held event (the queue is full): count it for the `events_dropped` record."""
        d = self._dropped or {"count": 0, "first_captured_at": h.event.captured_at, "subjects": Counter()}
        d["count"] += 1
        d["last_captured_at"] = h.event.captured_at
        d["subjects"][h.event.subject_id] += 1
        self._dropped = d
        if h.seq is not None:  # in the outbox but never audited: the audit record says it was dropped, so release
            self.outbox.release(h.seq)
        if self.health is not None:
            self.health.inc("events_dropped_storage")
        log.error("event %s of %s dropped: %d events already held in memory while the disk refuses writes",
                  h.event.event_id, h.event.subject_id, self.max_held)

    def _drain(self) -> None:
        """Outbox (held) → audit record → release, for each held event in order; stop at the first refusal."""
        while self._held:
            h = self._held[0]
            try:
                if h.seq is None:
                    h.seq = self.outbox.add(h.event, hold=True)
                if self.audit is not None:
                    e = h.event
                    self.audit.append("match", {"event_id": e.event_id, "subject_id": e.subject_id,
                                                "similarity": e.similarity, "threshold": e.threshold,
                                                "track_id": e.track_id, "watchlist_version": e.watchlist_version,
                                                "seq": h.seq, "evidence_chips": sum(
                                                    x is not None for x in (e.thumbnail, e.thumbnail2))})
                self.outbox.release(h.seq)
            except PayloadError as err:  # not the disk: an event the schema refuses (a bug) — say so, go on
                self._held.popleft()
                log.error("event %s not stored: %s", h.event.event_id, err)
                continue
            except (OutboxError, AuditError, OSError) as err:
                if self._refused(err):
                    continue  # the space reserve was just given back: try again at once
                return
            self._held.popleft()
            if self.on_event:
                self.on_event(h.event.to_json(h.seq))
        self._flush_dropped()
        if self._failing:
            self._failing = False
            log.warning("storage writes again: every held event is in the outbox and the audit log")
        self._gauge()

    def _refused(self, err: Exception) -> bool:
        """Note a refused write (logged once per outage, "disk full" when it is); True when the space reserve was
        just given back, so one more try is worth it."""
        first, full = not self._failing, is_disk_full(err)
        self._failing = True
        if first:
            log.error("%s: %d match event(s) held in memory (at most %d) and retried in order: %s",
                      "disk full" if full else "storage write failed", len(self._held), self.max_held, err)
        self._gauge()
        return first and full and self.reserve is not None and self.reserve.release()

    def _flush_dropped(self) -> None:
        if self._dropped is None or self.audit is None:
            return
        d = self._dropped
        try:
            self.audit.append("events_dropped", {
                "count": d["count"], "reason": "storage refused writes and the in-memory queue was full",
                "first_captured_at": d["first_captured_at"], "last_captured_at": d["last_captured_at"],
                "subjects": dict(d["subjects"].most_common(50))})
        except (AuditError, OSError) as err:
            if self._refused(err):
                self._flush_dropped()
            return
        log.error("%d match event(s) were lost while the disk refused writes; the audit log records it", d["count"])
        self._dropped = None

    def _gauge(self) -> None:
        if self.health is not None:
            self.health.set("events_held", len(self._held))


def reconcile(outbox: Any, audit: Any, max_rows: int = 100_000) -> int:
    """At start, before anything is published: audit every outbox event that has no `match` record (the device
    stopped between the outbox commit and the audit append). Returns how many records it wrote."""
    if audit is None or not outbox.depth():
        return 0
    stored = {}
    for entry in outbox.entries(max_rows):
        try:
            stored[json.loads(entry.payload)["event_id"]] = (entry.seq, json.loads(entry.payload))
        except (ValueError, KeyError, TypeError):
            continue
    for _, record, _ in tail(audit.path):
        if record is not None and record.get("kind") == "match":
            stored.pop(record["data"].get("event_id"), None)
    for event_id, (seq, ev) in sorted(stored.items(), key=lambda kv: kv[1][0]):
        audit.append("match", {"event_id": event_id, "subject_id": ev.get("subject_id"), "seq": seq,
                               "similarity": ev.get("similarity"), "threshold": ev.get("threshold"),
                               "track_id": ev.get("track_id"), "watchlist_version": ev.get("watchlist_version"),
                               "recovered": "in the outbox without an audit record after a stop"})
    if stored:
        log.warning("audit log: %d event(s) in the outbox had no audit record (stopped between the two writes);"
                    " recorded now", len(stored))
    return len(stored)
