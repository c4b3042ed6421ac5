"""The event store on both engines, real SQLite and a real PostgreSQL (tests/postgres.py): one schema from the
migration files, dedup by event_id in the database, the two-reviewer rule, device reports, retention."""

import time

import pytest

from edge.errors import DataError
from edge.messaging.payloads import make_event
from edge.operator.db import Database, parse_url
from edge.operator.event_store import EventStore


def event(seq: int, device: str = "cam-a", subject: str = "S-1") -> dict:
    ev = make_event(device_id=device, captured_at=1_764_000_000.0 + seq, subject_id=subject, watchlist_id="wl",
                    watchlist_version=3, embedder_id="dlib", similarity=0.71, threshold=0.62, margin=0.05,
                    track_id=seq, chips_used=3, quality={"sharpness": 80.0})
    ev = dict(ev if isinstance(ev, dict) else ev.to_dict())
    ev["seq"] = seq  # the device's outbox numbers events
    return ev


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = str(tmp_path / "events.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = EventStore(url)
    yield s
    s.close()


def test_urls():
    assert parse_url("events.db") == ("sqlite", "events.db")
    assert parse_url("sqlite:///var/lib/edge/ev.db") == ("sqlite", "/var/lib/edge/ev.db")
    assert parse_url("postgresql://edge@db:5432/edge")[0] == "postgresql"
    with pytest.raises(DataError, match="use sqlite:///PATH"):
        parse_url("mysql://x")


def test_duplicates_are_dropped_by_the_database(store):
    evs = [event(i) for i in range(1, 6)]
    assert len(store.add(evs)) == 5
    sixth = event(6)
    assert store.add(evs[:3] + [sixth]) == [sixth]  # re-sent ones are not new
    assert store.count() == 6 and store.seqs("cam-a") == [1, 2, 3, 4, 5, 6]


def test_two_reviewers_confirm_one_reject_removes(store):
    a, b, c = event(1), event(2), event(3)
    store.add([a, b, c])
    assert {e["event_id"] for e in store.queue()} == {a["event_id"], b["event_id"], c["event_id"]}
    assert store.decide(a["event_id"], "alice", "confirm") == {"status": "pending", "confirmations": 1, "required": 2}
    with pytest.raises(DataError, match="alice already decided this event"):
        store.decide(a["event_id"], "alice", "confirm")
    assert store.decide(a["event_id"], "bob", "confirm")["status"] == "confirmed"
    with pytest.raises(DataError, match="already confirmed"):
        store.decide(a["event_id"], "carol", "reject")
    assert store.decide(b["event_id"], "alice", "unsure", "too dark")["status"] == "pending"
    assert store.decide(c["event_id"], "bob", "reject", "different person")["status"] == "rejected"
    assert {e["event_id"] for e in store.queue()} == {b["event_id"]}
    assert [d["reviewer"] for d in store.event(a["event_id"])["decisions"]] == ["alice", "bob"]
    assert store.count("confirmed") == 1 and store.count("rejected") == 1
    with pytest.raises(DataError, match="must be one of"):
        store.decide(b["event_id"], "bob", "maybe")


def test_device_reports_and_retention(store):
    store.device_status("cam-a", True, {"fps": 29.5, "reported_at": "2026-12-01T10:00:00Z"})
    store.device_watchlist("cam-a", 7, "installed", None)
    store.device_status("cam-a", False, {})  # the broker's last will: health kept, last seen kept
    (dev,) = store.devices()
    assert (dev["online"], dev["last_seen"], dev["health"]["fps"], dev["watchlist_version"]) == (
        False, "2026-12-01T10:00:00Z", 29.5, 7)
    ev = event(1)
    store.add([ev])
    store.decide(ev["event_id"], "alice", "unsure")
    time.sleep(0.05)
    assert store.purge(older_than_s=3600)["events"] == 0 and store.count() == 1
    purged = store.purge(older_than_s=0.01)
    assert (purged["events"], purged["decisions"]) == (1, 1) and store.count() == 0


def test_migrations_are_recorded_once(tmp_path):
    db = Database(tmp_path / "m.db")
    assert db.migrate() == 2 and db.query("SELECT COUNT(*) FROM schema_version")[0][0] == 2
    db.close()


def test_ten_processes_may_migrate_a_fresh_postgresql_database_at_once(postgres_url):
    """Issue 22 F3: two consumers started together on a fresh database raced in the migration ("UniqueViolation …
    schema_version", 1 of 6 trials). With the advisory lock ten at once all start, and the schema is applied once."""
    import threading

    errors, versions = [], []
    start = threading.Barrier(10)

    def open_store():
        try:
            start.wait()
            store = EventStore(postgres_url)
            versions.append(store.db.query("SELECT COUNT(*), MAX(version) FROM schema_version")[0])
            store.close()
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(err))

    threads = [threading.Thread(target=open_store) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(versions) == 10
    n_rows, latest = versions[0]
    assert all(v == (n_rows, latest) for v in versions) and n_rows == latest  # each migration recorded once


def test_a_reject_and_two_confirms_racing_on_two_console_processes_never_confirm_a_rejected_event(postgres_url):
    """Issue 22: decide() read then wrote under read-committed isolation, so on two console processes a reject and
    two confirms could race into an event confirmed despite its reject. 40 races on separate connections (as two
    console processes have): a rejected event is never confirmed, and a confirmed one has no reject."""
    import threading

    stores = [EventStore(postgres_url) for _ in range(3)]
    events = [make_event(seq=i + 1, device_id="cam-r", captured_at=time.time(), subject_id="s", watchlist_id="w",
                         watchlist_version=1, embedder_id="mobilefacenet", similarity=0.9, threshold=0.8, margin=0.1,
                         track_id=1, chips_used=2, quality={}) for i in range(40)]
    stores[0].add(events)
    for ev in events:
        barrier = threading.Barrier(3)

        def act(store, reviewer, decision):
            barrier.wait()
            try:
                store.decide(ev["event_id"], reviewer, decision)
            except DataError:
                pass  # "already rejected/confirmed": the rule doing its job

        threads = [threading.Thread(target=act, args=a) for a in
                   ((stores[0], "alice", "confirm"), (stores[1], "bob", "confirm"), (stores[2], "carol", "reject"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for ev in events:
        row = stores[0].event(ev["event_id"])
        decisions = {d["reviewer"]: d["decision"] for d in stores[0].decisions(ev["event_id"])}
        assert row["status"] in ("confirmed", "rejected")
        if row["status"] == "confirmed":
            assert "reject" not in decisions.values(), decisions
    for s in stores:
        s.close()


def test_a_consumer_outlives_postgresql_stopping_and_restarting_twice(tmp_path):
    """Issue 22 F2: PostgreSQL stopped (`-m immediate`) while consumers ran made every `edge events consume` exit 70;
    a database down or starting at launch made it exit 1. Now both are waited out with a doubling pause: two
    consumers' drain loops keep running through two stops and restarts, and every event — re-sent by the devices
    for what was never acknowledged, here by putting everything again — is stored exactly once."""
    import queue
    import threading
    from types import SimpleNamespace

    from edge.cli.mqtt import _drain, _open_store
    from postgres import Postgres

    from edge.messaging.delivery import EventConsumer
    from edge.messaging.payloads import encode_event

    pg = Postgres()
    try:
        url = pg.create_database()
        stop = threading.Event()
        consumers, threads, errors = [], [], []
        for _ in range(2):
            store = _open_store(EventStore, url, stop.is_set)
            client = SimpleNamespace(inbox=queue.Queue(), publish=lambda *a, **k: None)
            consumers.append(EventConsumer(client, store))

        def run(c):
            try:
                _drain(c, None, stop.is_set, sleep=lambda s: stop.wait(min(s, 0.5)))
            except BaseException as err:  # noqa: BLE001 - a consumer that stops is the failure under test
                errors.append(repr(err))

        for c in consumers:
            threads.append(threading.Thread(target=run, args=(c,), daemon=True))
            threads[-1].start()
        events = [make_event(seq=i + 1, device_id="cam-f", captured_at=time.time(), subject_id="s",
                             watchlist_id="w", watchlist_version=1, embedder_id="mobilefacenet", similarity=0.9,
                             threshold=0.8, margin=0.1, track_id=1, chips_used=2, quality={}) for i in range(300)]

        def put(batch):
            for i, ev in enumerate(batch):
                consumers[i % 2].client.inbox.put(SimpleNamespace(topic="edge/cam-f/events",
                                                                  payload=encode_event(ev, ev["seq"])))

        put(events[:100])
        time.sleep(1.0)
        for k in range(2):
            pg.halt()
            put(events[100 + 50 * k:150 + 50 * k])  # arriving while the database is down
            time.sleep(1.5)
            assert all(t.is_alive() for t in threads) and errors == []
            pg.start()
            time.sleep(1.5)
        put(events)  # the devices re-send what was never acknowledged (here: everything)
        deadline = time.monotonic() + 30
        check = EventStore(url)
        while len(check.seqs("cam-f")) < 300 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert check.seqs("cam-f") == list(range(1, 301))  # each event once, none lost
        assert all(t.is_alive() for t in threads) and errors == []
        stop.set()
        for t in threads:
            t.join(10)
        check.close()
        for c in consumers:
            c.store.close()
    finally:
        pg.stop()
