"""The event store on both engines, real SQLite and a real PostgreSQL (tests/postgres.py): one schema from the
migration files, dedup by event_id in the database, the two-reviewer rule, device reports, retention."""

import time

import pytest

from edge.errors import DataError
from edge.messaging.payloads import make_event
from edge.operator.db import MIGRATIONS, Database, parse_url
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
    latest = len(list(MIGRATIONS.glob("[0-9][0-9][0-9]_*.sql")))
    assert db.migrate() == latest and db.query("SELECT COUNT(*) FROM schema_version")[0][0] == latest == 3
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

    def act(barrier, event_id, store, reviewer, decision):
        barrier.wait()
        try:
            store.decide(event_id, reviewer, decision)
        except DataError:
            pass  # "already rejected/confirmed": the rule doing its job

    for ev in events:
        barrier = threading.Barrier(3)
        threads = [threading.Thread(target=act, args=(barrier, ev["event_id"], *a)) for a in
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


# ------------------------------------------------------------------------------------------- counts (migration 003)


def _true_counts(store) -> dict:
    truth = dict.fromkeys(("pending", "confirmed", "rejected"), 0)
    truth.update(dict(store.db.query("SELECT status, COUNT(*) FROM events GROUP BY status")))
    return truth


def _check_counts(store) -> dict:
    truth = _true_counts(store)
    assert store.counts() == truth
    assert {s: store.count(s) for s in truth} == truth and store.count() == sum(truth.values())
    return truth


def test_counts_stay_exact_through_adds_duplicates_decisions_and_purges(store):
    assert store.counts() == {"pending": 0, "confirmed": 0, "rejected": 0} and store.count() == 0
    evs = [event(i) for i in range(1, 11)]
    store.add(evs[:6])
    store.add(evs[3:] + evs[:2] + [evs[7]])  # 4 new; duplicates already stored and within the batch are not counted
    assert _check_counts(store) == {"pending": 10, "confirmed": 0, "rejected": 0}
    store.decide(evs[0]["event_id"], "alice", "confirm")
    store.decide(evs[0]["event_id"], "bob", "confirm")
    store.decide(evs[1]["event_id"], "alice", "reject")
    store.decide(evs[2]["event_id"], "alice", "unsure")
    with pytest.raises(DataError):
        store.decide(evs[1]["event_id"], "bob", "reject")  # already rejected: nothing changes
    with pytest.raises(ZeroDivisionError):  # the audit record failed: the reject is rolled back, counts too
        store.decide(evs[3]["event_id"], "bob", "reject", before_commit=lambda r: 1 / 0)
    assert _check_counts(store) == {"pending": 8, "confirmed": 1, "rejected": 1}
    old = [evs[0]["event_id"], evs[1]["event_id"], evs[4]["event_id"]]
    with store.db.transaction() as cur:
        for eid in old:
            cur.execute("UPDATE events SET received_at = ? WHERE event_id = ?", (time.time() - 7200, eid))
    assert store.purge(older_than_s=3600)["events"] == 3
    assert _check_counts(store) == {"pending": 7, "confirmed": 0, "rejected": 0}
    store.add(evs)  # all but the purged ones already stored
    assert _check_counts(store) == {"pending": 10, "confirmed": 0, "rejected": 0}
    time.sleep(0.05)
    store.purge(older_than_s=0.01)
    assert _check_counts(store) == {"pending": 0, "confirmed": 0, "rejected": 0}


def test_migration_003_counts_the_events_already_stored(tmp_path):
    s = EventStore(tmp_path / "old.db")
    evs = [event(i) for i in range(1, 8)]
    s.add(evs)
    s.decide(evs[0]["event_id"], "alice", "reject")
    s.decide(evs[1]["event_id"], "alice", "confirm")
    s.decide(evs[1]["event_id"], "bob", "confirm")
    with s.db.transaction() as cur:  # as a database at version 2 was
        cur.execute("DROP TABLE event_counts")
        cur.execute("DELETE FROM schema_version WHERE version = 3")
    assert s.db.migrate() == 3
    assert _check_counts(s) == {"pending": 5, "confirmed": 1, "rejected": 1}
    s.close()


def test_decisions_for_many_events_in_one_call(store):
    evs = [event(i) for i in range(1, 5)]
    store.add(evs)
    store.decide(evs[0]["event_id"], "alice", "unsure", "dark")
    store.decide(evs[0]["event_id"], "bob", "confirm")
    store.decide(evs[2]["event_id"], "carol", "reject", "someone else")
    ids = [e["event_id"] for e in evs] + ["no-such-event"] + [f"x-{i}" for i in range(600)]  # > one chunk of 500
    got = store.decisions_for(ids)
    assert set(got) == set(ids)
    for eid in ids:
        assert got[eid] == store.decisions(eid)
    assert [d["reviewer"] for d in got[evs[0]["event_id"]]] == ["alice", "bob"]
    assert got[evs[0]["event_id"]][0] == {"reviewer": "alice", "decision": "unsure", "note": "dark",
                                          "decided_at": got[evs[0]["event_id"]][0]["decided_at"]}
    assert got[evs[1]["event_id"]] == [] and store.decisions_for([]) == {}


def test_counts_stay_exact_with_consumers_and_reviewers_racing_on_postgresql(postgres_url):
    """Two consumers (separate stores, as two processes have) store overlapping batches while two reviewers decide
    and a purge runs: the counters equal a full count afterwards, and nothing deadlocks."""
    import threading

    stores = [EventStore(postgres_url, required_confirmations=1) for _ in range(4)]
    evs = [event(i, device=f"cam-{i % 3}") for i in range(1, 601)]
    stores[0].add(evs[:100])
    errors: list = []
    start = threading.Barrier(5)

    def consume(store, batches) -> None:
        start.wait()
        for batch in batches:
            store.add(batch)

    def review(store, who, decision) -> None:
        start.wait()
        for ev in evs[:100]:
            try:
                store.decide(ev["event_id"], who, decision)
            except DataError:
                pass  # already decided by the other reviewer

    def purge(store) -> None:
        start.wait()
        time.sleep(0.1)
        store.purge(older_than_s=0.05)

    def guarded(fn, *args):
        def run():
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(repr(err))
        return threading.Thread(target=run)

    forward = [evs[i:i + 50] for i in range(100, 600, 50)]
    backward = [list(reversed(evs[i:i + 70])) for i in range(60, 600, 70)][::-1]  # overlapping, other order
    threads = [guarded(consume, stores[0], forward), guarded(consume, stores[1], backward),
               guarded(review, stores[2], "alice", "confirm"), guarded(review, stores[3], "bob", "reject"),
               guarded(purge, stores[3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    truth = _check_counts(stores[0])
    assert truth["confirmed"] + truth["rejected"] <= 100
    for s in stores:
        s.close()
