"""Every topic the device subscribes to, fed malformed and oversized payloads (hypothesis): nothing crashes,
every bad message is rejected and counted, and the device's state is untouched."""

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from edge.messaging.delivery import EventPublisher
from edge.messaging.outbox import Outbox
from edge.messaging.sync import WatchlistSync
from edge.messaging.topics import Topics
from edge.messaging.payloads import PayloadError, decode_ack, make_event

TOPICS = Topics("cam-a")
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                       max_leaves=20)


class FakeStore:
    def __init__(self):
        self.installs = 0

    def current(self):
        return object(), {"version": 4}

    def install_file(self, path):
        from pathlib import Path

        return self.install(Path(path).read_bytes())

    def install(self, data):
        self.installs += 1
        raise AssertionError("a malformed offer must never reach install")

    def state(self):
        from edge.install_state import InstalledState

        return InstalledState("ok", 4)


class Recorder:
    def __init__(self):
        self.calls = []

    def subscribe(self, topic, qos=1):
        self.calls.append(("sub", topic))

    def unsubscribe(self, topic):
        self.calls.append(("unsub", topic))

    def publish(self, topic, payload, qos=1, retain=False):
        self.calls.append(("pub", topic))


class Disconnected:
    connected = False


def _outbox(tmp_path_factory):
    box = Outbox(tmp_path_factory.mktemp("fuzz") / "outbox.db")
    box.add(make_event(device_id="cam-a", captured_at=time.time(), subject_id="s", watchlist_id="w",
                       watchlist_version=1, embedder_id="e", similarity=0.9, threshold=0.8, margin=0.1, track_id=1,
                       chips_used=1, quality={}))
    return box


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=4096) | JSONISH.map(lambda v: __import__("json").dumps(v).encode()))
def test_ack_topic_fuzz(tmp_path_factory, payload):
    box = _outbox(tmp_path_factory)
    publisher = EventPublisher(box, Disconnected(), TOPICS)
    try:
        seqs = decode_ack(payload)
    except PayloadError:
        seqs = None
    deleted = publisher.on_ack(payload)
    if seqs is None:  # malformed: counted, nothing deleted
        assert deleted == 0 and publisher.bad_acks == 1 and box.depth() == 1
    else:  # well formed: deletes exactly what it names
        assert deleted == (1 in seqs) and publisher.bad_acks == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic_suffix=st.sampled_from(["manifest", "chunk/5/0", "chunk/x/y", "chunk/4/0", "state", "other"]),
       payload=st.binary(max_size=4096) | JSONISH.map(lambda v: __import__("json").dumps(v).encode()))
def test_watchlist_topics_fuzz(tmp_path_factory, topic_suffix, payload):
    store = FakeStore()
    sync = WatchlistSync(store, Recorder(), "cam-a", tmp_path_factory.mktemp("inc"))
    sync.handle(f"edge/cam-a/watchlist/{topic_suffix}", payload)
    s = sync.stats
    assert store.installs == 0
    assert s.malformed + s.chunks_ignored + s.offers >= 1  # every message is accounted for


def test_oversized_offer_is_rejected_with_a_reason(tmp_path):
    sync = WatchlistSync(FakeStore(), Recorder(), "cam-a", tmp_path)
    sync.handle(TOPICS.watchlist_manifest, b"{" + b" " * (2 << 20) + b"}")
    assert sync.stats.malformed == 1 and "exceeds" in sync.stats.last_reason


def test_oversized_and_huge_acks_are_rejected(tmp_path_factory):
    box = _outbox(tmp_path_factory)
    publisher = EventPublisher(box, Disconnected(), TOPICS)
    assert publisher.on_ack(b'{"schema":"edge-ack/1","seqs":[' + b"1," * 200_000 + b"1]}") == 0
    assert publisher.bad_acks == 1 and box.depth() == 1
