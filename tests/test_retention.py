"""The console's retention schedule: events and decisions older than the configured age are purged at start (and
every hour), and every purge that removed something is in the hash-chained audit log."""

import threading
import time

from edge.audit import AuditLog, tail, verify
from edge.cli.console import _retention
from edge.messaging.payloads import make_event
from edge.operator.event_store import EventStore


def test_old_events_are_purged_and_the_purge_is_audited(tmp_path):
    store = EventStore(tmp_path / "events.db")
    ev = make_event(seq=1, device_id="cam-a", captured_at=1.76e9, subject_id="S-1", watchlist_id="wl",
                    watchlist_version=1, embedder_id="dlib", similarity=0.7, threshold=0.6, margin=0.1, track_id=1,
                    chips_used=2, quality={})
    store.add([ev])
    store.decide(ev["event_id"], "alice", "unsure", "too dark")
    time.sleep(0.05)
    audit = AuditLog(tmp_path / "audit.log")
    stop = threading.Event()
    stop.set()  # one pass: the start-up purge
    _retention(store, audit, 0.01 / 86400, stop)  # older than 10 ms
    assert store.count() == 0 and store.event(ev["event_id"]) is None
    audit.close()
    records = [r for _, r, _ in tail(tmp_path / "audit.log")]
    assert records[-1]["kind"] == "retention_purge"
    assert (records[-1]["data"]["events"], records[-1]["data"]["decisions"]) == (1, 1)
    assert verify(tmp_path / "audit.log").ok
    store.close()
