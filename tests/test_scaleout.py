"""Scale-out consumers, exactly once: 5 devices (real outboxes and publishers) send 10,000 events through the real
broker to 2 `edge events consume` processes sharing one MQTT shared subscription into a real PostgreSQL; one
consumer is SIGKILLed twice mid-run and restarted. Every event must be in the database exactly once, none lost.
Run with `pytest -s` to see the counts and the duration."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge.messaging.delivery import EventPublisher
from edge.messaging.mqtt import MqttClient
from edge.messaging.outbox import Outbox
from edge.messaging.payloads import make_event
from edge.messaging.topics import Topics
from edge.operator.event_store import EventStore
from edge.operator.fleet import Fleet, acl_text

DEVICES = ("cam-a", "cam-b", "cam-c", "cam-d", "cam-e")
PER_DEVICE = int(os.environ.get("EDGE_SCALEOUT_EVENTS", "10000")) // len(DEVICES)


def consumer(broker, url, cn, log):
    pki = broker.pki
    return subprocess.Popen([sys.executable, "-m", "edge", "events", "consume", "--store", url, "--group", "central",
                             "--host", broker.host, "--port", str(broker.port), "--ca", str(pki.ca), "--cert",
                             str(pki.cert(cn)), "--key", str(pki.key(cn)), "--json"],
                            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)


def device(broker, name, tmp_path, done, stop, per_loop=50):
    outbox = Outbox(tmp_path / f"{name}.db")
    topics = Topics(name)
    client = MqttClient(broker.client_settings(name), [(topics.events_ack, 1)])
    client.start()
    client.wait_connected(10)
    publisher = EventPublisher(outbox, client, topics, resend_after=3.0)
    added = 0
    try:
        while not stop.is_set():
            for _ in range(min(per_loop, PER_DEVICE - added)):  # a steady trickle: per_loop events per 20 ms
                added += 1
                outbox.add(make_event(device_id=name, captured_at=1_764_000_000.0 + added, subject_id=f"S-{added}",
                                      watchlist_id="wl", watchlist_version=1, embedder_id="dlib", similarity=0.7,
                                      threshold=0.6, margin=0.1, track_id=added, chips_used=2,
                                      quality={"sharpness": 80.0}))
            publisher.pump()
            while not client.inbox.empty():
                publisher.on_ack(client.inbox.get().payload)
            if added == PER_DEVICE and outbox.depth() == 0:
                done[name] = True
                return
            time.sleep(0.02)
    finally:
        client.stop()
        outbox.close()


@pytest.mark.slow
def test_two_consumers_one_killed_twice_store_every_event_exactly_once(broker, postgres_url, tmp_path):
    broker.load_acl(acl_text(Fleet(), consumers=("operator-2",)))
    EventStore(postgres_url).close()  # migrate once, before two processes race to
    log = open(tmp_path / "consumers.log", "w")
    consumers = [consumer(broker, postgres_url, "operator", log), consumer(broker, postgres_url, "operator-2", log)]
    time.sleep(1.5)  # both subscribed
    done, stop = {}, threading.Event()
    threads = [threading.Thread(target=device, args=(broker, d, tmp_path, done, stop), daemon=True) for d in DEVICES]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    store = EventStore(postgres_url)
    kills = 0
    try:
        for fraction in (0.3, 0.65):  # SIGKILL the second consumer mid-run, twice, and start it again
            deadline = time.monotonic() + 120
            while store.count() < fraction * PER_DEVICE * len(DEVICES) and time.monotonic() < deadline:
                time.sleep(0.05)
            consumers[1].send_signal(signal.SIGKILL)
            consumers[1].wait()
            kills += 1
            time.sleep(0.5)
            consumers[1] = consumer(broker, postgres_url, "operator-2", log)
        for t in threads:
            t.join(timeout=240)
        duration = time.monotonic() - t0
        assert len(done) == len(DEVICES), f"devices still holding unacknowledged events: {set(DEVICES) - set(done)}"
        total = store.count()
        distinct = store.db.query("SELECT COUNT(DISTINCT event_id) FROM events")[0][0]
        per_device = {d: store.seqs(d) for d in DEVICES}
        print(f"\nscale-out: {total} events in PostgreSQL ({distinct} distinct) from {len(DEVICES)} devices, "
              f"2 consumers, {kills} SIGKILLs, {duration:.1f} s")
        assert total == distinct == PER_DEVICE * len(DEVICES)
        for d, seqs in per_device.items():
            assert seqs == list(range(1, PER_DEVICE + 1)), f"{d}: lost or doubled seqs"
    finally:
        stop.set()
        for c in consumers:
            c.send_signal(signal.SIGTERM)
        for c in consumers:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
        store.close()
        log.close()
    # The two survivors' closing summaries (the never-killed one and the last restart): each stored a share.
    summaries = [json.loads(line) for line in (tmp_path / "consumers.log").read_text().splitlines()
                 if line.startswith("{")]
    print(f"surviving consumers' summaries: {summaries}")
    assert len(summaries) == 2 and all(0 < x["stored"] < PER_DEVICE * len(DEVICES) for x in summaries)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_one_consumer_throughput(broker, tmp_path, request, engine):
    """Benchmark (printed, not asserted): 10,000 events from 5 devices through one consumer into each engine; the
    check is that all of them arrive once."""
    url = str(tmp_path / "events.db") if engine == "sqlite" else request.getfixturevalue("postgres_url")
    EventStore(url).close()
    with open(tmp_path / "consumer.log", "w") as log:
        proc = consumer(broker, url, "operator", log)
        time.sleep(1.5)
        done, stop = {}, threading.Event()
        threads = [threading.Thread(target=device, args=(broker, d, tmp_path, done, stop, 500), daemon=True)
                   for d in DEVICES]
        store = EventStore(url)
        t0 = time.monotonic()
        try:
            for t in threads:
                t.start()
            total = PER_DEVICE * len(DEVICES)
            deadline = time.monotonic() + 240
            while store.count() < total and time.monotonic() < deadline:
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            for t in threads:
                t.join(timeout=60)
            assert store.count() == total and len(done) == len(DEVICES)
            print(f"\none consumer into {engine}: {total} events in {seconds:.2f} s = {total / seconds:.0f} events/s"
                  " (devices, broker and consumer on the same 2 cores)")
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            store.close()
