"""Load benchmark: the review console under 1 and under 20 concurrent reviewers, over the same store of N events.

    python tools/bench_console.py                                   # SQLite (a temporary file), 100,000 events
    python tools/bench_console.py --postgres                        # a throwaway PostgreSQL cluster (tests/postgres.py)
    python tools/bench_console.py --store postgresql://edge@host:5432/bench   # an existing, empty database
    options: --events 100000 --reviewers 1,20 --seconds 60 --json result.json --profile

What runs: a fresh store is filled with N events from 50 devices (batches of 1,000; each with two face chips sealed
to the console's evidence key, ~4 KiB each, as devices send them by default — `--no-evidence` for bare events),
the real console (`create_app`
+ uvicorn) serves it on a free loopback port in a thread of this process, and one reviewer account per session
signs in over HTTP (the login form, its CSRF cookie, argon2). Then for each R in --reviewers, R reviewer sessions
run for --seconds, each on its own keep-alive connection: every 3 s (first poll jittered) it loads the queue page
GET / (and the first 10 faces it shows, each opened by the console) and polls GET /api/events?status=pending&limit=100
as the page's script does; half-way between polls it
fetches the 20 newest pending events and decides one it has not decided yet (confirm 80 %, reject 10 %, unsure
10 %) with POST /api/events/{id}/decisions. A 409 (another reviewer decided it first) is a normal race and is
counted apart from errors.

Why the reviewers run in a child process: the console's Python work is bound by one GIL; clients in its own process
would take turns with it and inflate every latency. Latencies are measured by the clients (connection reuse, so no
TCP set-up), in milliseconds. The issue's target: queue page p95 ≤ 100 ms with 20 reviewers at 100,000 events.

--profile samples the console's threads every 2 ms during the last phase and prints where they spend their time
(py-spy's view without py-spy: sys._current_frames()).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLL_S = 3.0
PASSWORD = "bench-password-123"
KINDS = {"page": "queue page GET /", "face": "a queue face GET (10/page)", "api": "GET /api/events (100)",
         "pick": "GET /api/events?limit=20", "decide": "decision POST"}
#: Faces of the queue page fetched after each page load (the rows a screen shows), as a browser would.
FACES_PER_PAGE = 10
_FACE = re.compile(rb'src="(/events/[0-9a-f-]{36}/evidence/1)"')


# --------------------------------------------------------------------------------------------- HTTP client

class Http:
    """One keep-alive connection to the console with a session cookie; `call` returns (status, body, seconds)."""

    def __init__(self, port: int, cookie: str = "") -> None:
        self.port, self.cookie = port, cookie
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, float, http.client.HTTPResponse]:
        head = {"Cookie": self.cookie} if self.cookie else {}
        head.update(headers or {})
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=head)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            raise
        return resp.status, data, time.perf_counter() - t0, resp


def sign_in(port: int, username: str) -> tuple[str, str]:
    """(Cookie header value, CSRF token for API posts) of a fresh session, through the login form."""
    web = Http(port)
    status, body, _, resp = web.call("GET", "/login")
    login = re.search(r"edge_login=([^;]+)", resp.getheader("Set-Cookie") or "")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body)
    assert status == 200 and login and csrf, f"GET /login: {status}"
    form = urlencode({"username": username, "password": PASSWORD, "csrf": csrf.group(1).decode(), "next": "/"})
    status, _, _, resp = web.call("POST", "/login", form.encode(), {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"edge_login={login.group(1)}"})
    session = re.search(r"edge_session=([^;]+)", ",".join(resp.headers.get_all("Set-Cookie") or []))
    assert status == 303 and session, f"POST /login for {username}: {status}"
    web.cookie = f"edge_session={session.group(1)}"
    status, body, _, _ = web.call("GET", "/api/me")
    assert status == 200, f"GET /api/me: {status}"
    return web.cookie, json.loads(body)["csrf"]


# --------------------------------------------------------------------------------------------- reviewers

def reviewer(port: int, name: str, cookie: str, csrf: str, start: float, seconds: float, seed: int) -> dict:
    """One reviewer session from `start` (time.time()) for `seconds`: latencies per kind (s), decisions, races."""
    rng, web = random.Random(seed), Http(port, cookie)
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: Counter = Counter()
    decided = conflicts = 0
    end = start + seconds
    next_poll = start + rng.uniform(0, POLL_S)

    def get(kind: str, path: str) -> bytes | None:
        try:
            status, body, took, _ = web.call("GET", path)
        except (OSError, http.client.HTTPException) as err:
            errors[f"{kind}: {type(err).__name__}"] += 1
            return None
        lat[kind].append(took)
        if status != 200:
            errors[f"{kind}: HTTP {status}"] += 1
            return None
        return body

    def pause(until: float) -> bool:
        time.sleep(max(0.0, min(until, end) - time.time()))
        return time.time() < end

    while pause(next_poll):
        page = get("page", "/")
        for src in _FACE.findall(page or b"")[:FACES_PER_PAGE]:
            get("face", src.decode())
        get("api", "/api/events?status=pending&limit=100")
        if not pause(next_poll + POLL_S / 2):
            break
        body = get("pick", "/api/events?status=pending&limit=20")
        mine = [e for e in json.loads(body)["events"] if name not in {d["reviewer"] for d in e["decisions"]}] \
            if body else []
        if mine:
            ev = rng.choice(mine)
            decision = rng.choices(("confirm", "reject", "unsure"), (8, 1, 1))[0]
            payload = json.dumps({"decision": decision, "note": ""}).encode()
            try:
                status, _, took, _ = web.call("POST", f"/api/events/{ev['event_id']}/decisions", payload,
                                              {"Content-Type": "application/json", "X-CSRF-Token": csrf})
                lat["decide"].append(took)
                if status == 200:
                    decided += 1
                elif status == 409:
                    conflicts += 1
                else:
                    errors[f"decide: HTTP {status}"] += 1
            except (OSError, http.client.HTTPException) as err:
                errors[f"decide: {type(err).__name__}"] += 1
        next_poll += POLL_S
    return {"lat": lat, "errors": dict(errors), "decided": decided, "conflicts": conflicts}


def load(port: int, sessions: list[tuple[str, str, str]], seconds: float) -> dict:
    """All sessions at once, each in a thread (runs in the child process); the merged results."""
    start, results = time.time() + 0.5, [None] * len(sessions)

    def run(i: int) -> None:
        results[i] = reviewer(port, *sessions[i], start, seconds, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: Counter = Counter()
    for r in results:
        for k in KINDS:
            lat[k] += r["lat"][k]
        errors.update(r["errors"])
    return {"lat": lat, "errors": dict(errors), "decided": sum(r["decided"] for r in results),
            "conflicts": sum(r["conflicts"] for r in results), "seconds": seconds}


def _child(port: int, sessions: list, seconds: float, out: Any) -> None:
    out.put(load(port, sessions, seconds))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile in ms, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summary(result: dict) -> dict:
    out: dict[str, Any] = {}
    for k in KINDS:
        v = result["lat"][k]
        out[k] = {"n": len(v), "p50_ms": percentile(v, .50), "p95_ms": percentile(v, .95),
                  "p99_ms": percentile(v, .99)}
    out.update(decisions_per_s=result["decided"] / result["seconds"], decided=result["decided"],
               conflicts=result["conflicts"], errors=result["errors"])
    return out


# --------------------------------------------------------------------------------------------- the console

#: Functions a thread waits in when it has nothing to do (not counted as busy by the sampler).
IDLE = {"wait", "select", "get", "_worker", "poll", "sleep"}


class Sampler:
    """Samples every thread's stack but its own and the main thread's every `every` s; `report` prints the
    functions seen most on busy stacks (on the stack: cumulative; on top: self), as a share of the samples."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.stop = every, threading.Event()
        self.cum: Counter = Counter()
        self.top: Counter = Counter()
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        me, main = threading.get_ident(), threading.main_thread().ident
        while not self.stop.wait(self.every):
            for ident, frame in sys._current_frames().items():
                if ident in (me, main):
                    continue
                if frame.f_code.co_name in IDLE:
                    continue
                seen, first = set(), True
                while frame is not None:
                    code = frame.f_code
                    key = f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"
                    if first:
                        self.top[key] += 1
                        first = False
                    if key not in seen:
                        self.cum[key] += 1
                        seen.add(key)
                    frame = frame.f_back
            self.samples += 1

    def report(self, n: int = 25) -> None:
        self.stop.set()
        self.thread.join()
        for title, counts in (("on top of a stack (self)", self.top), ("on the stack (cumulative)", self.cum)):
            print(f"\nprofile — {title}, busy threads per sample ({self.samples} samples):")
            for key, hits in counts.most_common(n):
                print(f"  {hits / self.samples:7.2f}  {key}")


def evidence_chips() -> list[bytes]:
    """Two face chips as the device sends them: the bundled photos' faces, 112×112, JPEG of ≤ 5 KiB."""
    import cv2

    from edge.device.event_writer import evidence_jpeg

    chips = []
    for name in ("obama.jpg", "biden.jpg"):
        bgr = cv2.imread(str(ROOT / "tests" / "data" / "faces" / name))
        h, w = bgr.shape[:2]
        side = min(h, w) // 2
        crop = bgr[h // 4:h // 4 + side, (w - side) // 2:(w + side) // 2]
        chip = cv2.cvtColor(cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        chips.append(evidence_jpeg(chip))
    return chips


def fill(store: Any, n: int, evidence_key: Any = None) -> float:
    """Store n events from 50 devices in batches of 1,000 (with `evidence_key`, each carrying two face chips sealed
    to it and bound to the event, as devices send them by default); seconds taken."""
    from edge.messaging.payloads import make_event, uuid7
    from edge.messaging.thumbnail import encrypt_thumbnail, evidence_context

    chips = evidence_chips() if evidence_key is not None else []
    t0, batch = time.perf_counter(), []
    for i in range(n):
        event_id = str(uuid7())
        # strict=False: without an evidence key there are no chips, and nothing is sealed
        sealed = {field: encrypt_thumbnail(chip, evidence_key, evidence_context(event_id, slot))
                  for slot, (field, chip) in enumerate(zip(("thumbnail", "thumbnail2"), chips, strict=False), 1)}
        batch.append(make_event(seq=i // 50 + 1, device_id=f"cam-{i % 50:02d}", captured_at=1.76e9 + i,
                                subject_id=f"subject-{i % 30000:06d}", watchlist_id="wl", watchlist_version=3,
                                embedder_id="dlib", similarity=0.7, threshold=0.62, margin=0.05, track_id=i,
                                chips_used=3, quality={"sharpness": 0.6, "eye_distance_px": 48.0, "yaw": 0.05},
                                event_id=event_id, **sealed))
        if len(batch) == 1000 or i == n - 1:
            store.add(batch)
            batch = []
            done = i + 1
            if done % 10_000 and done != n:
                continue
            print(f"\rfilling: {done:,}/{n:,} events ({done / (time.perf_counter() - t0):,.0f}/s)", end="",
                  file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - t0


def bench(url: str, args: argparse.Namespace, tmp: Path) -> dict:
    from edge.audit import AuditLog
    from edge.evaluation.loopback_broker import free_port
    from edge.operator.accounts import Accounts
    from edge.operator.console import create_app, server
    from edge.operator.event_store import EventStore

    store = EventStore(url)
    if store.count():
        raise SystemExit(f"the store {url} already holds {store.count()} events: give an empty database")
    from edge import keys

    evidence_key = keys.generate_device_key() if args.evidence else None  # the operator's X25519 evidence key
    fill_s = fill(store, args.events, evidence_key.public_key() if evidence_key else None)
    counts = [int(r) for r in args.reviewers.split(",")]
    accounts = Accounts(store.db)
    names = [f"reviewer-{i:02d}" for i in range(1, max(counts) + 1)]
    for name in names:
        accounts.add_user(name, PASSWORD, "reviewer")
    audit = AuditLog(tmp / "audit.log")
    port = free_port()
    srv = server(create_app(store, accounts, audit, {}, 2, None, thumbnail_key=evidence_key), "127.0.0.1", port,
                 log_level="warning")
    thread = threading.Thread(target=srv.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    phases: dict[str, dict] = {}
    try:
        sessions = [(name, *sign_in(port, name)) for name in names]
        ctx = multiprocessing.get_context("spawn")
        for r in counts:
            print(f"{r} reviewer(s) for {args.seconds:g} s …", file=sys.stderr, flush=True)
            sampler = Sampler() if args.profile and r == counts[-1] else None
            out = ctx.Queue()
            child = ctx.Process(target=_child, args=(port, sessions[:r], args.seconds, out))
            child.start()
            result = out.get(timeout=args.seconds + 300)
            child.join(30)
            if sampler:
                sampler.report()
            phases[str(r)] = summary(result)
    finally:
        srv.should_exit = True
        thread.join(10)
        audit.close()
    info = {"dialect": store.db.dialect, "events": args.events, "evidence": bool(args.evidence), "fill_s": fill_s,
            "seconds": args.seconds,
            "cpus": os.cpu_count(), "pool_size": store.db.pool_size, "counts_after": store.counts(), "phases": phases}
    store.close()
    return info


def table(info: dict) -> str:
    cols = list(info["phases"])
    lines = [(f"{info['dialect']}, {info['events']:,} events{' with two sealed faces each' if info['evidence'] else ''}"
              f" (filled in {info['fill_s']:.0f} s),"
              f" {info['seconds']:g} s per phase, {info['cpus']} CPUs, pool {info['pool_size']}"),
             f"{'':28s}" + "".join(f"{f'{c} reviewer(s)':>26s}" for c in cols),
             f"{'':28s}" + "".join(f"{'p50 / p95 / p99 ms (n)':>26s}" for _ in cols)]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"

    for k, title in KINDS.items():
        cells = [info["phases"][c][k] for c in cols]
        lines.append(f"{title:28s}" + "".join(
            f"{fmt(s['p50_ms'])} / {fmt(s['p95_ms'])} / {fmt(s['p99_ms'])} ({s['n']})".rjust(26) for s in cells))
    for key, title in (("decisions_per_s", "decisions per second"), ("conflicts", "409 already decided (races)")):
        lines.append(f"{title:28s}" + "".join(f"{info['phases'][c][key]:>26.2f}" if isinstance(
            info["phases"][c][key], float) else f"{info['phases'][c][key]:>26d}" for c in cols))
    lines.append(f"{'errors':28s}" + "".join(f"{sum(info['phases'][c]['errors'].values()):>26d}" for c in cols))
    for c in cols:
        for what, n in info["phases"][c]["errors"].items():
            lines.append(f"  {c} reviewer(s): {what} × {n}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--evidence", action=argparse.BooleanOptionalAction, default=True,
                        help="events carry two sealed face chips, as devices send them by default (default on)")
    parser.add_argument("--store", help="an empty PostgreSQL database URL (default: a temporary SQLite file)")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL cluster (initdb)")
    parser.add_argument("--reviewers", default="1,20", help="comma-separated concurrent sessions per phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="sample the console's threads in the last phase")
    args = parser.parse_args()
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("edge.operator.console").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-console-"))
    pg = None
    if args.postgres:
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres import Postgres  # the tests' throwaway cluster (initdb + pg_ctl on a free port)

        pg = Postgres()
    try:
        url = pg.create_database() if pg else args.store or f"sqlite:///{tmp / 'events.db'}"
        info = bench(url, args, tmp)
    finally:
        if pg:
            pg.stop()
    print(table(info))
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
