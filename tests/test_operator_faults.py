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


# --- item 2: the console and its database -----------------------------------------------------------------------

def _sign_in(http, name: str, password: str) -> None:
    page = http.get("/login")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = http.post("/login", data={"csrf": token, "username": name, "password": password, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text


@pytest.mark.slow
def test_console_answers_503_while_postgresql_is_down_and_serves_again_once_it_is_back(tmp_path, caplog):
    import httpx

    from edge.audit import AuditLog
    from edge.operator.accounts import Accounts
    from edge.operator.console import create_app, server
    from postgres import Postgres

    pg = Postgres()  # a cluster of its own: this test stops it
    srv = thread = store = audit = None
    try:
        url = pg.create_database()
        store = EventStore(url)
        accounts = Accounts(store.db)
        accounts.add_user("alice", "alice-correct-horse", "reviewer")
        store.add([event(i) for i in range(1, 4)])
        audit = AuditLog(tmp_path / "console-audit.log")
        port = free_port()
        srv = server(create_app(store, accounts, audit, {}, 2, None), "127.0.0.1", port, log_level="warning")
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        wait_for(lambda: srv.started, 15, "the console started")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False, timeout=30)
        _sign_in(http, "alice", "alice-correct-horse")
        assert http.get("/").status_code == 200
        assert len(http.get("/api/events").json()["events"]) == 3

        pg.halt()
        outage = {path: http.get(path) for path in ("/", "/api/events", "/devices", "/api/devices", "/login")}
        for path, r in outage.items():
            assert r.status_code == 503, (path, r.status_code, r.text[:500])
            assert r.headers["retry-after"] == "30" and "Traceback" not in r.text
            if path.startswith("/api/"):
                assert r.json() == {"error": "the event store is unavailable (database down or restarting): try"
                                             " again in a minute"}
            else:
                assert "the event store is unavailable (database down or restarting)" in r.text
                assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert thread.is_alive()

        pg.start()
        t0 = time.monotonic()
        after: list[int] = []
        while time.monotonic() - t0 < 30:
            after.append(http.get("/").status_code)
            if after[-1] == 200:
                break
            time.sleep(0.1)
        recovery = time.monotonic() - t0
        print(f"\noutage: {len(outage)} requests, all 503; after the restart: {after} in {recovery:.2f} s")
        assert after[-1] == 200, after
        assert set(after[:-1]) <= {503}, after
        # ... and stays served: every kind of request, the decision (a write) included
        assert [http.get(p).status_code for p in ("/", "/api/events", "/devices", "/watchlists")] == [200] * 4
        first = http.get("/api/events").json()["events"][0]["event_id"]
        csrf = http.get("/api/me").json()["csrf"]
        r = http.post(f"/api/events/{first}/decisions", json={"decision": "confirm", "note": ""},
                      headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text

        # A restart nobody noticed (no request while it was down) with the pool full of connections it killed: the
        # first failure retires them all, so no request fails once the database is back.
        def get(path: str) -> int:
            with httpx.Client(base_url=http.base_url, cookies=http.cookies, timeout=30) as own:
                return own.get(path).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(get, ["/", "/api/events"] * 24)) == {200}
        pg.halt()
        pg.start()
        sequential = [get("/") for _ in range(4)]
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(get, ["/api/events", "/"] * 16))
        print(f"silent restart: {sequential} then {len(concurrent)} concurrent, {concurrent.count(200)} answered 200")
        assert sequential == [200] * 4 and concurrent == [200] * 32, (sequential, concurrent)

        warnings = [r.getMessage() for r in caplog.records if r.name == "edge.operator.console"]
        assert len(warnings) == len(outage) + after.count(503), warnings  # one line per 503
        assert all(re.match(r"store unavailable for GET /\S*: (StoreUnavailable|OperationalError): ", w)
                   for w in warnings), warnings
        assert all("\n" not in w for w in warnings)
    finally:
        if srv is not None:
            srv.should_exit = True
            thread.join(10)
        if audit is not None:
            audit.close()
        if store is not None:
            store.close()
        pg.stop()


def test_console_without_its_database_at_start_is_one_line_and_exit_1(tmp_path):
    url = f"postgresql://edge@127.0.0.1:{free_port()}/edge"  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "edge", "console", "--store", url, "--audit",
                        str(tmp_path / "audit.log"), "--listen", f"127.0.0.1:{free_port()}"], capture_output=True,
                       text=True, env=ENV, cwd=REPO, timeout=60)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("edge: error: cannot connect to 127.0.0.1:"), \
        r.stderr


# --- item 3: ten consumers at once on a fresh database ----------------------------------------------------------

CONSUMERS = tuple(f"consumer-{i}" for i in range(1, 11))


@pytest.mark.slow
def test_ten_consumers_started_at_once_on_a_fresh_postgresql_all_run_and_store_an_event_once(postgres_url, tmp_path):
    from edge.operator.fleet import Fleet, acl_text

    pki = _load_cert_tool().make_pki(tmp_path / "pki", ("cam-a", *CONSUMERS))  # one certificate (client id) each
    broker = Broker(pki, tmp_path / "broker")
    broker.start()
    logs = [tmp_path / f"{cn}.log" for cn in CONSUMERS]
    procs: list[subprocess.Popen] = []
    try:
        broker.load_acl(acl_text(Fleet(), consumers=CONSUMERS))
        # no migration beforehand: the ten race to migrate the empty database
        for cn, path in zip(CONSUMERS, logs, strict=True):
            with open(path, "w") as log:
                procs.append(consume(broker, postgres_url, log, cn))
        wait_for(lambda: all("consuming edge/+/events" in p.read_text() for p in logs), 90, "all ten consuming",
                 step=0.5)
        time.sleep(3.0)
        dead = [(cn, p.returncode, path.read_text()) for cn, p, path in zip(CONSUMERS, procs, logs, strict=True)
                if p.poll() is not None]
        assert dead == [], dead

        ev = event(1)
        send_until_acked(broker, ev)
        time.sleep(1.0)  # a second copy, were one stored, would be in by now
        store = EventStore(postgres_url)
        try:
            assert store.db.query("SELECT COUNT(*) FROM events WHERE event_id = ?", (ev["event_id"],)) == [(1,)]
            assert store.count() == 1
            versions = store.db.query("SELECT version, COUNT(*) FROM schema_version GROUP BY version")
            assert versions and all(n == 1 for _, n in versions), versions  # each migration applied once
        finally:
            store.close()
        codes = [stop(p) for p in procs]
        assert codes == [0] * 10, [path.read_text() for path in logs]
        summaries = [json.loads(path.read_text().splitlines()[-1]) for path in logs]
        assert sum(s["stored"] for s in summaries) == 1, summaries  # one consumer of the shared group took it
        assert not any("Traceback" in path.read_text() for path in logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.stop()
