"""End-to-end event delivery: the device's outbox pump and the operator's consumer.

Device (`EventPublisher`): events are already committed to the outbox; the pump publishes the due ones with
QoS 1 and re-sends any that stay unacknowledged for `resend_after` seconds. Rows leave the outbox only when the
central consumer acknowledges their `seq` on `edge/<device>/events/ack` — a broker PUBACK is not durable end to
end (mosquitto saves its state only periodically).

Operator (`EventConsumer`): validates each event, stores it once (the injected store keys it by `event_id`, so
duplicates from re-sends are dropped and counted), appends new ones to a JSONL log, and only then acknowledges the seq.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge.durable import private_file
from edge.messaging.topics import TopicError, Topics, parse_topic
from edge.messaging.payloads import (PayloadError, decode_ack, decode_event, decode_status, decode_watchlist_state,
                                     encode_ack, stamp_published)

log = logging.getLogger("edge.messaging.delivery")


class EventPublisher:
    """Moves committed events from the outbox to the broker. `client` is an `edge.messaging.mqtt.MqttClient`."""

    def __init__(self, outbox: Any, client: Any, topics: Topics, resend_after: float = 10.0, batch: int = 200) -> None:
        self.outbox = outbox
        self.client = client
        self.topics = topics
        self.resend_after = resend_after
        self.batch = batch
        self.bad_acks = 0

    def pump(self, now: float | None = None) -> int:
        """Publish what is due; returns how many were handed to the broker (0 while disconnected)."""
        if not self.client.connected:
            return 0
        now = time.time() if now is None else now
        sent = []
        for seq, payload in self.outbox.due(now, self.resend_after, self.batch):
            if self.client.publish(self.topics.events, stamp_published(payload, now), qos=1) is None:
                break
            sent.append(seq)
        if sent:
            self.outbox.mark_sent(sent, now)
        return len(sent)

    def on_ack(self, payload: bytes) -> int:
        """Delete the acknowledged events; a malformed ack is counted and ignored."""
        try:
            seqs = decode_ack(payload)
        except PayloadError:
            self.bad_acks += 1
            return 0
        return self.outbox.ack(seqs)


@dataclass
class ConsumerStats:
    """Operator-side counters."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_rejection: str | None = None
    per_device: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class EventConsumer:
    """Drains an MqttClient subscribed to `<prefix>/+/events`: validate, store once, log, then acknowledge.
    store: an operator event store (`edge.operator.event_store.EventStore`): `add(events)` returns the new ones."""

    def __init__(self, client: Any, store: Any, prefix: str = "edge", jsonl: Path | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 on_status: Callable[[str, Any], None] | None = None,
                 on_watchlist: Callable[[str, Any], None] | None = None) -> None:
        self.on_status = on_status  # (device id, Status) for each status message (subscribe to them as well)
        self.on_watchlist = on_watchlist  # (device id, WatchlistState) for each watchlist/state message
        self.client = client
        self.store = store
        self.prefix = prefix
        self.jsonl = open(private_file(jsonl), "a", encoding="utf-8") if jsonl else None  # events: 0600
        self.on_event = on_event
        self.stats = ConsumerStats()

    def _report(self, kind: str, device_id: str, payload: bytes) -> None:
        """Hand a status or watchlist-state report to its callback. A report is informational and often retained:
        one the callback cannot take (e.g. a string the database refuses) is counted, logged in one line and
        skipped — it must never stop the consumer, or every device's events would wait behind it."""
        decode, callback = ((decode_status, self.on_status) if kind == "status"
                            else (decode_watchlist_state, self.on_watchlist))
        report = decode(payload)  # a PayloadError is the caller's: counted as a rejection
        if callback is None:
            return
        try:
            callback(device_id, report)
        except Exception as err:  # noqa: BLE001 - any failure of one report is that report's, not the consumer's
            self.stats.rejected += 1
            self.stats.last_rejection = f"{kind} report of {device_id} not stored: {type(err).__name__}: {err}"
            log.warning("%s", self.stats.last_rejection[:300])

    def poll(self, timeout: float = 0.2, max_batch: int = 500) -> int:
        """Handle the messages that arrive within `timeout` seconds (up to `max_batch`); returns events stored."""
        batch: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(batch) < max_batch:
            try:
                msg = self.client.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.stats.received += 1
            try:
                parsed = parse_topic(msg.topic, self.prefix)
                if parsed.kind in ("status", "watchlist_state"):
                    self.stats.received -= 1  # not an event
                    self._report(parsed.kind, parsed.device_id, msg.payload)
                    continue
                event = decode_event(msg.payload)
                device = parsed.device_id
                if event["device_id"] != device:
                    raise PayloadError(f"event claims device {event['device_id']!r} but came on {msg.topic!r}")
            except (PayloadError, TopicError) as err:
                self.stats.rejected += 1
                self.stats.last_rejection = str(err)
                continue
            batch.append(event)
        if not batch:
            return 0
        new = self.store.add(batch)
        self.stats.stored += len(new)
        self.stats.duplicates += len(batch) - len(new)
        for ev in new:
            self.stats.per_device[ev["device_id"]] += 1
            if self.jsonl:
                self.jsonl.write(json.dumps(ev) + "\n")
            if self.on_event:
                self.on_event(ev)
        if self.jsonl:
            self.jsonl.flush()
        acks: dict[str, list[int]] = defaultdict(list)
        for ev in batch:  # duplicates are acknowledged too, so the device can forget them
            acks[ev["device_id"]].append(ev["seq"])
        for device, seqs in acks.items():
            self.client.publish(Topics(device, self.prefix).events_ack, encode_ack(seqs), qos=1)
        return len(new)
