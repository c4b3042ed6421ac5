"""Benchmark: the review console's queue page and API with N events stored (SQLite, or PostgreSQL with --store).

    python tools/bench_console.py [--events 100000] [--store postgresql://…] [--requests 30]

Fills a fresh store with N events from 50 devices (batches of 1,000), signs in through the real app (Starlette's
test client, no network), and prints the median and p95 time of GET / (the server-rendered queue, 50 newest) and
GET /api/events, and of the insert itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()

    import warnings

    from edge.audit import AuditLog
    from edge.messaging.payloads import make_event
    from edge.operator.accounts import Accounts
    from edge.operator.console import create_app
    from edge.operator.event_store import EventStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-console-"))
    store = EventStore(args.store or tmp / "events.db")
    t0 = time.perf_counter()
    batch = []
    for i in range(args.events):
        batch.append(make_event(seq=i // 50 + 1, device_id=f"cam-{i % 50:02d}", captured_at=1.76e9 + i,
                                subject_id=f"subject-{i % 30000:06d}", watchlist_id="wl", watchlist_version=3,
                                embedder_id="dlib", similarity=0.7, threshold=0.62, margin=0.05, track_id=i,
                                chips_used=3, quality={"sharpness": 80.0}))
        if len(batch) == 1000:
            store.add(batch)
            batch = []
    store.add(batch)
    insert_s = time.perf_counter() - t0
    accounts = Accounts(store.db)
    accounts.add_user("bench", "bench-password-123", "reviewer")
    app = create_app(store, accounts, AuditLog(tmp / "audit.log"), {}, 2, None)
    client = TestClient(app)
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = client.post("/login", data={"username": "bench", "password": "bench-password-123", "csrf": csrf},
                       follow_redirects=False)
    assert resp.status_code == 303, resp.text[:300]
    for path in ("/", "/api/events"):
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
        times.sort()
        print(f"{path:12s} with {store.count()} events ({store.db.dialect}): median {statistics.median(times) * 1000:.1f}"
              f" ms, p95 {times[int(0.95 * (len(times) - 1))] * 1000:.1f} ms over {args.requests} requests")
    print(f"insert: {args.events} events in {insert_s:.1f} s ({args.events / insert_s:.0f} events/s, batches of 1000)")


if __name__ == "__main__":
    main()
