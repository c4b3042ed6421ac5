"""Property (issue 22 item 7): whatever arrives on a device's events, status and watchlist/state topics, the
real `edge events consume` process keeps running and stores only valid rows into a real PostgreSQL. Five batches
of 200 generated hostile messages (1,000 in all: arbitrary JSON, valid messages with one field made hostile, control
characters and NUL, huge numbers, deep nesting, non-UTF-8 bytes) go through the real broker with the production
ACL; after each batch a valid event must still be stored, and every stored row must pass the event schema."""

import json
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.messaging.mqtt import MqttClient
from edge.messaging.payloads import PayloadError, make_event, validate_event
from edge.operator.event_store import EventStore

DEVICE = "cam-a"
TOPICS = (f"edge/{DEVICE}/events", f"edge/{DEVICE}/status", f"edge/{DEVICE}/watchlist/state")
HOSTILE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["\x00", "a\x00b", "\x1b[31m", "\u202e", "/9j/4AAQ", "x" * 5000, "", "null", "NaN"])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | HOSTILE_TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner,
                                                                                         max_size=4), max_leaves=12)


def valid_event(seq: int, **changes) -> dict:
    ev = make_event(seq=seq, device_id=DEVICE, captured_at=1.77e9 + seq, subject_id=f"s-{seq}", watchlist_id="wl",
                    watchlist_version=1, embedder_id="mobilefacenet", similarity=0.7, threshold=0.6, margin=0.1,
                    track_id=seq, chips_used=2, quality={"sharpness": 0.6})
    ev.update(changes)
    return ev


@st.composite
def hostile(draw) -> tuple[str, bytes]:
    """(topic, payload): raw JSON, a valid message with one field hostile, or bytes that are not JSON at all."""
    topic = draw(st.sampled_from(TOPICS))
    kind = draw(st.sampled_from(["json", "field", "bytes", "deep"]))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=300))
    if kind == "deep":
        return topic, b"[" * draw(st.integers(1, 5000)) + b"]" * draw(st.integers(0, 5000))
    if kind == "json":
        return topic, json.dumps(draw(JSON), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if topic.endswith("/events"):
        base = valid_event(draw(st.integers(1, 10**6)))
    elif topic.endswith("/status"):
        base = {"schema": "edge-status/1", "state": "online", "health": {"fps": 10.0, "reported_at": "x"}}
    else:
        base = {"schema": "edge-watchlist-state/1", "installed_version": 1, "state": "installed", "reason": None,
                "message": None}
    key = draw(st.sampled_from(sorted(base)))
    base[key] = draw(JSON)
    if topic.endswith("/status") and draw(st.booleans()):
        base["health"] = {"reported_at": draw(HOSTILE_TEXT), "gauges": draw(JSON)}
    return topic, json.dumps(base, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.fixture
def consumer(broker, postgres_url, tmp_path):
    pki = broker.pki
    log = open(tmp_path / "consumer.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "events", "consume", "--store", postgres_url, "--host",
                             broker.host, "--port", str(broker.port), "--ca", str(pki.ca), "--cert",
                             str(pki.cert("operator")), "--key", str(pki.key("operator"))],
                            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    device = MqttClient(broker.client_settings(DEVICE), [])
    device.start()
    device.wait_connected(10)
    time.sleep(1.0)  # subscribed
    state = {"proc": proc, "device": device, "url": postgres_url, "log": tmp_path / "consumer.log", "sent": 0,
             "seq": 0}
    try:
        yield state
    finally:
        device.stop()
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.slow
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(hostile(), min_size=200, max_size=200))
def test_the_consumer_survives_any_message_and_stores_only_valid_rows(consumer, batch):
    device = consumer["device"]
    for topic, payload in batch:
        device.publish(topic, payload, qos=1, retain=topic.endswith(("/status", "/watchlist/state")))
    consumer["sent"] += len(batch)
    consumer["seq"] += 1
    probe = valid_event(10**7 + consumer["seq"])
    device.publish(TOPICS[0], json.dumps(probe).encode(), qos=1)
    store = EventStore(consumer["url"])
    try:
        deadline = time.monotonic() + 60
        while store.event(probe["event_id"]) is None:
            assert consumer["proc"].poll() is None, consumer["log"].read_text()[-3000:]
            assert time.monotonic() < deadline, "the valid event after the hostile batch was never stored"
            time.sleep(0.1)
        assert consumer["proc"].poll() is None, consumer["log"].read_text()[-3000:]
        for row in store.queue(500, status="pending"):  # every stored event passes the schema
            try:
                validate_event(row["event"])
            except PayloadError as err:
                pytest.fail(f"stored an invalid event ({err}): {row['event']}")
        for d in store.devices():  # device reports: only what the schemas let through
            assert d["device_id"] == DEVICE and "\x00" not in json.dumps(d["health"])
    finally:
        store.close()
    print(f"\n{consumer['sent']} hostile messages sent; consumer alive; valid event stored")
