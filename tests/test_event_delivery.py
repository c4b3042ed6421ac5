"""Match events through the real broker: outbox → QoS 1 → consumer (dedup by event_id) → ack → outbox delete,
including the fault test: broker SIGKILLed 20 times and the device 5 times while 10,000 events flow."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.messaging.delivery import EventConsumer, EventPublisher
from edge.operator.event_store import EventStore
from edge.messaging.mqtt import MqttClient
from edge.messaging.outbox import Outbox
from edge.messaging.topics import Topics
from edge.messaging.payloads import make_event

HERE = Path(__file__).resolve().parent


def _consumer(broker, tmp_path):
    client = MqttClient(broker.client_settings("operator", clean_session=False, inbox_size=20_000),
                        [("edge/+/events", 1)])
    client.start()
    client.wait_connected(5)
    return EventConsumer(client, EventStore(tmp_path / "events.db"), jsonl=tmp_path / "events.jsonl")


def _event(device="cam-a"):
    return make_event(device_id=device, captured_at=time.time(), subject_id="s1", watchlist_id="wl",
                      watchlist_version=1, embedder_id="dlib_resnet_v1", similarity=0.97, threshold=0.95, margin=0.1,
                      track_id=7, chips_used=3, quality={"eye_distance_px": 40.0})


def test_events_are_delivered_acknowledged_and_deleted(broker, tmp_path):
    consumer = _consumer(broker, tmp_path)
    outbox = Outbox(tmp_path / "outbox.db")
    topics = Topics("cam-a")
    device = MqttClient(broker.client_settings("cam-a"), [(topics.events_ack, 1)])
    device.start()
    device.wait_connected(5)
    publisher = EventPublisher(outbox, device, topics, resend_after=2.0)
    seqs = [outbox.add(_event()) for _ in range(100)]
    deadline = time.monotonic() + 20
    while outbox.depth() and time.monotonic() < deadline:
        publisher.pump()
        consumer.poll(0.05)
        while not device.inbox.empty():
            publisher.on_ack(device.inbox.get().payload)
    assert outbox.depth() == 0
    assert consumer.store.seqs("cam-a") == seqs
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 100 and all(json.loads(line)["review_required"] is True for line in lines)
    assert all(json.loads(line)["published_at"] is not None for line in lines)
    # A malformed ack is counted, not fatal; an ack cannot delete what it does not name.
    publisher.on_ack(b"{]")
    assert publisher.bad_acks == 1
    device.stop()
    consumer.client.stop()


def test_consumer_rejects_events_on_the_wrong_topic_and_counts_duplicates(broker, tmp_path):
    consumer = _consumer(broker, tmp_path)
    outbox = Outbox(tmp_path / "outbox.db")
    seq = outbox.add(_event("cam-b"))  # an event claiming cam-b …
    (_, payload), = outbox.due(time.time(), 0, 10)
    cam_a = MqttClient(broker.client_settings("cam-a"))
    cam_a.start()
    cam_a.wait_connected(5)
    cam_a.publish("edge/cam-a/events", payload)  # … sent by cam-a on its own topic
    good = Outbox(tmp_path / "good.db")
    good.add(_event("cam-a"))
    (_, ok), = good.due(time.time(), 0, 10)
    cam_a.publish("edge/cam-a/events", ok)
    cam_a.publish("edge/cam-a/events", ok)  # a re-send
    deadline = time.monotonic() + 5
    while consumer.stats.received < 3 and time.monotonic() < deadline:
        consumer.poll(0.1)
    assert seq == 1 and consumer.stats.rejected == 1
    assert "claims device 'cam-b' but came on 'edge/cam-a/events'" in consumer.stats.last_rejection
    assert consumer.stats.stored == 1 and consumer.stats.duplicates == 1
    cam_a.stop()
    consumer.client.stop()


#: The fault test's length (full in CI and by default): broker kill cycles, the longest broker downtime (seconds),
#: events. A developer's quick run: EDGE_FAULT_CYCLES=3 EDGE_FAULT_DOWNTIME_S=2 bash tests/run.sh -k fault
FAULT_CYCLES = int(os.environ.get("EDGE_FAULT_CYCLES", "20"))
FAULT_DOWNTIME_S = float(os.environ.get("EDGE_FAULT_DOWNTIME_S", "10"))
FAULT_EVENTS = int(os.environ.get("EDGE_FAULT_EVENTS", "10000"))


@pytest.mark.slow
def test_fault_broker_and_device_killed_while_10000_events_flow(broker, tmp_path):
    total, rng = FAULT_EVENTS, random.Random(7)
    consumer = _consumer(broker, tmp_path)
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            consumer.poll(0.1)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    settings = dataclasses.asdict(broker.client_settings("cam-a"))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items() if k != "will_payload"}
    cmd = [sys.executable, str(HERE / "fault_device.py"), "--outbox", str(tmp_path / "outbox.db"), "--total",
           str(total), "--rate", "70", "--settings", json.dumps(settings)]
    device = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    device_kills = set(rng.sample(range(FAULT_CYCLES), max(1, FAULT_CYCLES // 4)))
    for i in range(FAULT_CYCLES):
        time.sleep(rng.uniform(0.5, 3.0))
        broker.kill()
        time.sleep(rng.uniform(min(1.0, FAULT_DOWNTIME_S), FAULT_DOWNTIME_S))
        if i in device_kills:
            device.send_signal(signal.SIGKILL)
            device.wait()
            device = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        broker.start()
    last_restart = time.monotonic()
    out, _ = device.communicate(timeout=180)
    drained_after = time.monotonic() - last_restart
    stop.set()
    thread.join()
    seqs = consumer.store.seqs("cam-a")
    print(f"fault test: {len(seqs)} events stored, {consumer.stats.duplicates} raw duplicates dropped, "
          f"drained {drained_after:.1f} s after the last restart")
    assert device.returncode == 0 and "DRAINED" in out
    assert seqs == list(range(1, total + 1))  # 0 gaps, 0 duplicates after dedup
    assert drained_after <= 60
    assert Outbox(tmp_path / "outbox.db").depth() == 0
    consumer.client.stop()


def test_last_will_marks_a_vanished_device_offline(broker, tmp_path):
    from edge.messaging.payloads import decode_status, encode_status

    settings = dataclasses.asdict(broker.client_settings("cam-a"))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items() if k != "will_payload"}
    code = ("import json, sys, time; from pathlib import Path; "
            "from edge.messaging.mqtt import MqttClient, MqttSettings; "
            "from edge.messaging.payloads import encode_status; f = json.loads(sys.argv[1]); "
            "f.update({k: Path(f[k]) for k in ('ca_file', 'cert_file', 'key_file')}); "
            "f.update(will_topic='edge/cam-a/status', will_payload=encode_status('offline', {})); "
            "c = MqttClient(MqttSettings(**f)); c.start(); c.wait_connected(5); print('up', flush=True); "
            "time.sleep(60)")
    device = subprocess.Popen([sys.executable, "-c", code, json.dumps(settings)], stdout=subprocess.PIPE, text=True,
                              cwd=HERE.parent)
    assert device.stdout.readline().strip() == "up"
    device.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the will once keepalive lapses
    device.wait()
    operator = MqttClient(broker.client_settings("operator"), [("edge/cam-a/status", 1)])
    operator.start()
    operator.wait_connected(5)
    msg = operator.inbox.get(timeout=30)
    assert msg.retained and decode_status(msg.payload).state == "offline"
    assert encode_status("offline", {}) == msg.payload
    operator.stop()


def test_events_tail_command_stores_prints_and_acks(broker, tmp_path, capsys):
    from edge.cli import main

    pki = broker.pki
    argv = ["events", "tail", "--host", broker.host, "--port", str(broker.port), "--ca", str(pki.ca), "--cert",
            str(pki.cert("operator")), "--key", str(pki.key("operator")), "--store", str(tmp_path / "ev.db"),
            "--count", "3", "--json"]
    result = {}
    tail = threading.Thread(target=lambda: result.setdefault("code", main(argv)))
    tail.start()
    outbox = Outbox(tmp_path / "outbox.db")
    topics = Topics("cam-a")
    device = MqttClient(broker.client_settings("cam-a"), [(topics.events_ack, 1)])
    device.start()
    device.wait_connected(5)
    publisher = EventPublisher(outbox, device, topics, resend_after=1.0)
    for _ in range(3):
        outbox.add(_event())
    deadline = time.monotonic() + 20
    while (outbox.depth() or tail.is_alive()) and time.monotonic() < deadline:
        publisher.pump()
        while not device.inbox.empty():
            publisher.on_ack(device.inbox.get().payload)
        time.sleep(0.05)
    tail.join(5)
    device.stop()
    out, err = capsys.readouterr()
    assert result["code"] == 0 and outbox.depth() == 0
    assert sorted(json.loads(line)["seq"] for line in out.splitlines()) == [1, 2, 3]
    assert "stored 3 events" in err
