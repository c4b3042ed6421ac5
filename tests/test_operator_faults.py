"""Issue 22, "nothing stops when the database does" — the operator side under faults, with the real parts only: a
real mosquitto (tests/broker.py) and a real PostgreSQL (tests/postgres.py), stopped and started under the running
programs.

* `edge events consume` started before its broker waits for it (one line per attempt, pauses doubling), consumes
  once it is up, outlives the broker being killed and restarted, and stops only on a configuration the broker
  will never accept (its certificate not trusted, ours refused): one line, exit 1.
* `edge console` on PostgreSQL answers 503 with one line (page, or JSON under /api) while the database is away and
  serves again once it is back, without a restart; a console that cannot reach its database at start says so in
  one line and exits 1 (systemd restarts it: systemd/edge-console.service).
* Ten consumers started at once on a fresh database all run (the migrations take an advisory lock), and an event
  published once is stored once.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker import Broker, _load_cert_tool
from edge.evaluation.loopback_broker import free_port
from edge.messaging.mqtt import MqttClient
from edge.messaging.payloads import encode_event, make_event
from edge.messaging.topics import Topics
from edge.operator.event_store import EventStore

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), EDGE_TRACEBACK="")  # this tree's `edge`, whatever is installed


def consume(broker: Broker, store: str, log, cn: str = "operator", *extra: str) -> subprocess.Popen:
    pki = broker.pki
    args = ["--ca", str(pki.ca), "--cert", str(pki.cert(cn)), "--key", str(pki.key(cn)), *extra]
    return subprocess.Popen([sys.executable, "-m", "edge", "events", "consume", "--store", store, "--group", "central",
                             "--host", broker.host, "--port", str(broker.port), "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=ENV, cwd=REPO)


def wait_for(check, timeout: float, what: str, step: float = 0.1, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g} s\n{log()}")
        time.sleep(step)


def event(seq: int, device: str = "cam-a") -> dict:
    return make_event(seq=seq, device_id=device, captured_at=time.time(), subject_id="S-1", watchlist_id="wl",
                      watchlist_version=1, embedder_id="dlib", similarity=0.71, threshold=0.62, margin=0.05,
                      track_id=seq, chips_used=2, quality={"sharpness": 80.0})


def send_until_acked(broker: Broker, ev: dict, timeout: float = 30.0, resend_after: float = 2.0) -> None:
    """Publish `ev` as its device does — again every `resend_after` seconds until acknowledged (a shared
    subscription whose consumer is not connected drops it) — and wait for the consumer's acknowledgement, which it
    sends only after the commit."""
    topics = Topics(ev["device_id"])
    device = MqttClient(broker.client_settings(ev["device_id"]), [(topics.events_ack, 1)])
    device.start()
    try:
        device.wait_connected(10)
        time.sleep(0.3)  # the ack subscription is in place
        deadline, sent = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - sent > resend_after:
                assert device.publish(topics.events, encode_event(ev, ev["seq"]), qos=1) is not None
                sent = time.monotonic()
            try:
                msg = device.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev["seq"] in json.loads(msg.payload)["seqs"]:
                return
        raise AssertionError(f"event {ev['seq']} of {ev['device_id']} not acknowledged within {timeout:g} s")
    finally:
        device.stop()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(20)


# --- item 1: the consumer and its broker ------------------------------------------------------------------------

@pytest.mark.slow
def test_consume_waits_for_a_broker_that_is_not_up_and_outlives_its_restart(tls_certs, tmp_path):
    broker = Broker(tls_certs, tmp_path / "broker")  # its port is chosen; nothing listens on it yet
    store_url = str(tmp_path / "events.db")
    log_path = tmp_path / "consume.log"
    with open(log_path, "w") as log:
        proc = consume(broker, store_url, log)
    text = lambda: log_path.read_text()  # noqa: E731
    try:
        where = f"broker 127.0.0.1:{broker.port} unreachable (cannot connect to the broker: Connection refused)"
        wait_for(lambda: "attempt 3," in text(), 20, "three failed attempts", log=text)
        assert proc.poll() is None, text()
        lines = text().splitlines()
        assert lines[:3] == [f"{where}; attempt 1, next in 1 s", f"{where}; attempt 2, next in 2 s",
                             f"{where}; attempt 3, next in 4 s"], lines

        broker.start()
        wait_for(lambda: "consuming edge/+/events" in text(), 15, "consuming after the broker came up", log=text)
        assert f"broker 127.0.0.1:{broker.port} reachable again after" in text()
        send_until_acked(broker, event(1))

        broker.kill()  # a broker crash mid-run: paho reconnects, the consumer reports and keeps running
        wait_for(lambda: "connection lost; reconnecting" in text(), 10, "the lost connection reported", log=text)
        time.sleep(2.5)
        assert proc.poll() is None, text()
        broker.start()
        send_until_acked(broker, event(2))
        store = EventStore(store_url)
        try:
            assert store.seqs("cam-a") == [1, 2]
        finally:
            store.close()
        assert stop(proc) == 0, text()
        summary = json.loads(text().splitlines()[-1])
        assert summary["stored"] == 2, text()
        assert "Traceback" not in text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize(("case", "says"), [
    ("broker certificate from another CA", "the broker's certificate is not trusted (self-signed certificate in "
                                           "certificate chain): check the CA file and the broker's host name"),
    ("client certificate from another CA", "the broker refused this client's certificate (TLS alert: "
                                           "TLSV1_ALERT_UNKNOWN_CA)"),
])
def test_consume_stops_at_once_on_a_certificate_the_broker_will_never_accept(broker, tmp_path, case, says):
    pki = broker.pki
    if case.startswith("broker"):
        tls = ["--ca", str(pki.rogue_ca), "--cert", str(pki.cert("operator")), "--key", str(pki.key("operator"))]
    else:
        tls = ["--ca", str(pki.ca), "--cert", str(pki.cert("rogue")), "--key", str(pki.key("rogue"))]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edge", "events", "consume", "--store", str(tmp_path / "e.db"),
                        "--host", broker.host, "--port", str(broker.port), *tls], capture_output=True, text=True,
                       env=ENV, cwd=REPO, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [f"edge: error: broker 127.0.0.1:{broker.port}: {says}; not retrying (fix the "
                                     "configuration)"], r.stderr
    assert time.monotonic() - t0 < 15  # the first attempt decides, not a timeout
