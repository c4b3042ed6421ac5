"""`edge events tail`, `edge events consume` and `edge watchlist publish`: the operator's MQTT commands (argument
handling, output).

`events tail` and `watchlist publish` are run by a person: a broker that does not answer within --connect-timeout is
an error. `events consume` is a service: a database or a broker that is away (down, restarting, not yet up at boot) is
waited out with a doubling pause and one line per attempt, and only a configuration the broker will never accept (its
certificate not trusted, ours refused) ends it — with one line, exit 1, for systemd and the operator to see.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.cli.broker_client import MAX_BACKOFF_S, broker_parent, collect_retained, connect
from edge.errors import DataError


class BrokerLink:
    """Watches a client that paho keeps reconnecting (pauses 1, 2, 4 … 30 s): one line per failed attempt naming
    what is unreachable and why, one when the connection is back; MqttError when the broker refuses this
    configuration (retrying would not help)."""

    def __init__(self, client, where: str, out=None) -> None:
        self.client, self.where = client, where
        self.out = out or sys.stderr
        self._failures = client.stats.connect_failures
        self._streak = 0  # failed attempts since the connection was last up
        self._was_up = False

    def check(self) -> bool:
        """Whether the client is connected now; reports what changed since the last call."""
        from edge.messaging.mqtt import MqttError

        c = self.client
        if c.fatal:
            raise MqttError(f"broker {self.where}: {c.fatal}; not retrying (fix the configuration)")
        if c.connected:
            if not self._was_up and self._streak:
                print(f"broker {self.where} reachable again after {self._streak} failed attempt(s)", file=self.out,
                      flush=True)
            self._was_up, self._streak = True, 0
            self._failures = c.stats.connect_failures
            return True
        if self._was_up:
            self._was_up = False
            print(f"broker {self.where}: connection lost; reconnecting", file=self.out, flush=True)
        failures = c.stats.connect_failures
        if failures > self._failures:
            self._streak += failures - self._failures
            self._failures = failures
            pause = min(c.settings.reconnect_min * 2 ** (self._streak - 1), c.settings.reconnect_max)
            print(f"broker {self.where} unreachable ({c.stats.last_error}); attempt {self._streak}, next in"
                  f" {pause:g} s", file=self.out, flush=True)
        return False

    def wait(self, done, sleep=time.sleep) -> bool:
        """Block until connected (True) or `done()` (False)."""
        while not done():
            if self.check():
                return True
            sleep(0.1)
        return False


def cmd_events_tail(args: argparse.Namespace) -> int:
    from edge.messaging.delivery import EventConsumer
    from edge.operator.event_store import EventStore
    from edge.operator.labels import labels_from_build

    store = EventStore(args.store)
    from edge.messaging.topics import operator_filter

    subscriptions = [(operator_filter("events", args.prefix), 1)]
    if args.heads:
        subscriptions.append((operator_filter("status", args.prefix), 1))
    client = connect(args, subscriptions)

    names = labels_from_build(args.watchlist) if args.watchlist else {}

    def show(ev: dict) -> None:
        name = names.get(ev["subject_id"]) or ev.get("label")
        if args.json:
            print(json.dumps({**ev, "label": name} if name else ev), flush=True)
        else:
            who = f"{name} ({ev['subject_id']})" if name else ev["subject_id"]
            print(f"{ev['device_id']} #{ev['seq']} subject {who} similarity {ev['similarity']:.3f} "
                  f"(threshold {ev['threshold']:.3f}, margin {ev['margin']:.3f}, track {ev['track_id']}) — "
                  "candidate for human review", flush=True)

    heads = open(args.heads, "a", encoding="utf-8") if args.heads else None

    def keep_head(device: str, status) -> None:  # the audit heads each device published, for `edge audit verify`
        seal = status.health.get("audit_seal") or status.health.get("audit_head")
        if heads is not None and isinstance(seal, dict) and isinstance(seal.get("seq"), int):
            heads.write(json.dumps({"device_id": device, **{k: seal[k] for k in ("seq", "hash", "epoch", "mac")
                                                            if k in seal}, "received_at": time.time()}) + "\n")
            heads.flush()

    consumer = EventConsumer(client, store, args.prefix, args.jsonl, show, on_status=keep_head)
    try:
        _drain(consumer, args.idle_exit, lambda: bool(args.count) and consumer.stats.stored >= args.count)
    finally:
        client.stop()
        store.close()
        if heads is not None:
            heads.close()
    s = consumer.stats
    print(f"stored {s.stored} events, {s.duplicates} duplicates dropped, {s.rejected} rejected"
          + (f" (last: {s.last_rejection})" if s.last_rejection else ""), file=sys.stderr)
    return 0


def _drain(consumer, idle_exit: float | None, done, sleep=time.sleep, tick=None) -> None:
    """Poll until `done()`, `idle_exit` seconds without an event, or Ctrl-C. The database being unavailable (down,
    restarting) is waited out with a doubling pause, reconnecting each time: nothing is lost meanwhile, since a device
    is acknowledged only after the commit and re-sends what was not. `tick()` is called once per poll (the broker
    link's report)."""
    last = time.monotonic()
    pause = 1.0
    try:
        while not done():
            if tick is not None:
                tick()
            try:
                if consumer.poll(0.2):
                    last = time.monotonic()
                pause = 1.0
            except Exception as err:  # noqa: BLE001 - only the database being away is waited out; the rest re-raised
                if not consumer.store.db.transient(err):
                    raise
                print(f"database unavailable ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                      "waiting for it — unacknowledged events stay on the devices", file=sys.stderr, flush=True)
                while not done():  # no more events are taken from the broker until the database is back
                    sleep(pause)
                    pause = min(2 * pause, MAX_BACKOFF_S)
                    try:
                        consumer.store.reconnect()
                        print("database reachable again: consuming", file=sys.stderr, flush=True)
                        break
                    except Exception as again:  # noqa: BLE001 - still down: wait longer
                        if not consumer.store.db.transient(again):
                            raise
                continue
            if idle_exit and time.monotonic() - last > idle_exit:
                return
    except KeyboardInterrupt:
        pass


def _open_store(open_store, url: str, done, sleep=time.sleep):
    """The event store at `url`, waiting out a database that is down or still starting (doubling pauses)."""
    from edge.operator.db import StoreUnavailable

    pause = 1.0
    while True:
        try:
            return open_store(url)
        except StoreUnavailable as err:
            if done():
                raise
            print(f"{err}; retrying in {pause:g} s", file=sys.stderr, flush=True)
            sleep(pause)
            pause = min(2 * pause, MAX_BACKOFF_S)


def cmd_events_consume(args: argparse.Namespace) -> int:
    """A scale-out consumer: a shared subscription, so N processes split the fleet's events; the database's key on
    event_id makes "stored once" hold across them; acks follow the commit."""
    import signal

    from edge.messaging.delivery import EventConsumer
    from edge.messaging.topics import DEVICE_ID, operator_filter
    from edge.operator.event_store import EventStore

    if not DEVICE_ID.match(args.group):
        raise DataError(f"--group {args.group!r}: 1-64 of A-Z a-z 0-9 . _ -")
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    store = _open_store(EventStore, args.store, lambda: bool(stop))
    subscriptions = [(f"$share/{args.group}/{operator_filter('events', args.prefix)}", 1),
                     (operator_filter("status", args.prefix), 1), (operator_filter("watchlist_state", args.prefix), 1)]
    try:
        client = connect(args, subscriptions, wait=False)
    except BaseException:
        store.close()
        raise
    link = BrokerLink(client, f"{args.host}:{args.port}")
    consumer = EventConsumer(client, store, args.prefix,
                             on_status=lambda d, st: store.device_status(d, st.state == "online", st.health),
                             on_watchlist=lambda d, w: store.device_watchlist(d, w.installed_version, w.state,
                                                                              w.reason))
    t0 = time.monotonic()
    try:
        if link.wait(lambda: bool(stop)):
            print(f"consuming {args.prefix}/+/events as shared group {args.group!r} into {store.db.dialect}",
                  file=sys.stderr, flush=True)
            _drain(consumer, args.idle_exit, lambda: bool(stop), tick=link.check)
    finally:
        client.stop()
        store.close()
    s = consumer.stats
    seconds = time.monotonic() - t0
    summary = {"stored": s.stored, "duplicates": s.duplicates, "rejected": s.rejected, "seconds": round(seconds, 2)}
    print(json.dumps(summary) if args.json else
          f"stored {s.stored} events, {s.duplicates} duplicates dropped, {s.rejected} rejected in {seconds:.1f} s",
          file=sys.stderr)
    return 0


def _read_bundle(path: Path, trust, kind: str) -> tuple[bytes, dict]:
    from edge.files import read_file
    from edge.watchlist.device.verify import verify_bundle
    from edge.watchlist.frame import MAX_BUNDLE_BYTES, BundleError

    data = read_file(path, "bundle", MAX_BUNDLE_BYTES, DataError)
    try:  # a truncated, bit-flipped or foreign bundle never replaces the good retained offer
        manifest, _ = verify_bundle(data, trust)
    except BundleError as err:
        raise DataError(f"{path} was not published: {err}") from None
    if manifest["kind"] != kind:
        raise DataError(f"{path} is a {manifest['kind']} bundle; {'--delta' if kind == 'delta' else '--bundle'} takes"
                        f" a {kind} one")
    return data, manifest


def _current_offers(args: argparse.Namespace, source) -> list:
    """The offers retained on `source` now (to clear the chunks the new ones replace)."""
    from edge.messaging.payloads import PayloadError, parse_offer

    offers = []
    wait = argparse.Namespace(**{**vars(args), "wait": 1.5})
    for _topic, payload in collect_retained(wait, [source.offer(), source.offer(True)]):
        try:
            offers.append(parse_offer(payload, source.audience))
        except PayloadError:
            continue  # empty (cleared) or not ours: nothing to clear
    return offers


def cmd_watchlist_publish(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.messaging.offers import clear_messages, offer_messages
    from edge.messaging.topics import TopicError, WatchlistTopics

    trust = keys.TrustStore([keys.load_public_key(p, "operator") for p in args.operator_key])
    bundles = [_read_bundle(args.bundle, trust, "full")]  # with --delta: devices without its base take this one
    if args.delta:
        bundles.append(_read_bundle(args.delta, trust, "delta"))
    if args.delta and bundles[0][1]["version"] != bundles[1][1]["version"]:
        raise DataError(f"--bundle is v{bundles[0][1]['version']} and --delta v{bundles[1][1]['version']}: publish a"
                        " delta with the full bundle of the same version")
    audiences = {m["audience"] for _, m in bundles}
    if len(audiences) != 1:
        raise DataError(f"the bundles are for different audiences ({', '.join(sorted(audiences))})")
    audience = audiences.pop()
    want = f"device:{args.device}" if args.device else f"group:{args.group}" if args.group else audience
    if want != audience:
        raise DataError(f"the bundle is sealed for {audience}, not {want}")
    kind, _, name = audience.partition(":")
    try:
        source = (WatchlistTopics.for_device(name, args.prefix) if kind == "device"
                  else WatchlistTopics.for_group(name, args.prefix))
    except TopicError as err:
        raise DataError(str(err)) from None
    old = _current_offers(args, source)
    messages: list[tuple[str, bytes]] = []
    for data, m in bundles:
        messages += offer_messages(data, source, int(m["version"]), args.prefix, args.chunk_bytes,
                                   base=(m["base"] or {}).get("version"), recipients=sorted(m["recipients"]))
    if not args.delta:
        messages.append((source.offer(True), b""))  # a delta on an older version would only confuse
    new_chunks = {t for t, _ in messages}
    stale = [(t, b) for o in old for t, b in clear_messages(source, o) if t not in new_chunks]
    client = connect(args, [])
    t0 = time.perf_counter()
    try:
        client.publish_confirmed(messages, retain=True, connect_timeout=args.connect_timeout)
        if stale:  # only once the new offers are in place: a device never sees an offer without its chunks
            client.publish_confirmed(stale, retain=True, connect_timeout=args.connect_timeout)
    finally:
        client.stop()
    seconds = time.perf_counter() - t0
    result = {"audience": audience, "device": name if kind == "device" else None,
              "version": max(int(m["version"]) for _, m in bundles),
              "bundles": [{"kind": m["kind"], "version": m["version"], "bytes": len(d)} for d, m in bundles],
              "bytes": sum(len(d) for d, _ in bundles), "chunks": sum(1 for t, _ in messages if "/chunk/" in t),
              "cleared_chunks": len(stale), "recipients": len(bundles[0][1]["recipients"]),
              "seconds": round(seconds, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        what = " + ".join(f"{b['kind']} v{b['version']} ({b['bytes']} bytes)" for b in result["bundles"])
        print(f"published watchlist {what} for {audience} ({result['recipients']} recipients) in {result['chunks']}"
              f" retained chunks, {result['seconds']} s" + (f"; cleared {len(stale)} old chunks" if stale else ""))
    return 0


def add_parsers(sub: argparse._SubParsersAction, watchlist_sub: argparse._SubParsersAction) -> None:
    """Register `events tail` and `watchlist publish`."""
    broker = broker_parent()
    ev = sub.add_parser("events", help="read match events (operator side)").add_subparsers(
        dest="events_command", metavar="ACTION", required=True)
    p = ev.add_parser("tail", parents=[broker], help="receive, store, acknowledge and print events from all devices",
                      description="Subscribe to every device's events, drop duplicates by event_id, store them in "
                                  "SQLite (and JSONL), acknowledge their seq so the devices can delete them, print.")
    p.add_argument("--store", type=Path, default=Path("events.db"), help="SQLite event store (default ./events.db)")
    p.add_argument("--jsonl", type=Path, help="also append each new event to this JSON-lines file")
    p.add_argument("--count", type=int, help="exit after this many new events")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without an event")
    p.add_argument("--heads", type=Path, metavar="FILE", help="also keep every device's audit-log head from its status "
                   "heartbeats here (JSON lines), for `edge audit verify --heads`")
    p.add_argument("--watchlist", type=Path, metavar="BUILD_DIR", help="the operator's watchlist build directory:"
                   " names for the subject ids (devices never send names)")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.set_defaults(func=cmd_events_tail, default_client_id="operator")

    p = ev.add_parser("consume", parents=[broker],
                      help="scale-out consumer: a shared subscription into SQLite or PostgreSQL",
                      description="Subscribe with an MQTT shared subscription ($share/GROUP/<prefix>/+/events), so "
                                  "several processes split the fleet's events; store each once (the database dedups by "
                                  "event_id), acknowledge after the commit; also keep each device's last status and "
                                  "watchlist state for the console.")
    p.add_argument("--store", required=True, help="sqlite:///PATH, a file path, or postgresql://user@host:port/db")
    p.add_argument("--group", default="edge-consumers", help="shared-subscription group (default edge-consumers)")
    p.epilog = ("A broker or database that is away is waited for (pauses doubling to 30 s, one line per attempt;"
                " --connect-timeout does not apply); a broker certificate not trusted or a client certificate refused"
                " ends it: one line, exit 1.")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without an event")
    p.add_argument("--json", action="store_true", help="print the closing summary as JSON")
    p.set_defaults(func=cmd_events_consume, default_client_id="operator")

    p = watchlist_sub.add_parser("publish", parents=[broker],
                                 help="send a sealed version to a device or group over MQTT",
                                 description="Publish the full bundle (and a delta) as retained chunks and retained "
                                             "offers on <prefix>/<device>/watchlist/… or "
                                             "<prefix>/groups/<G>/watchlist/…; each device fetches what it lacks, the "
                                             "delta when it holds its base.")
    p.add_argument("--bundle", type=Path, required=True,
                   help="full bundle from `edge watchlist seal` (OUT, or OUT.full with --base)")
    p.add_argument("--delta", type=Path, help="delta bundle from `edge watchlist seal --base N`")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--device", help="target device id (must match the bundle; default: the bundle's audience)")
    g.add_argument("--group", help="target group (must match the bundle; default: the bundle's audience)")
    p.add_argument("--operator-key", type=Path, action="append", required=True, metavar="PUB",
                   help="operator public key the bundle must be signed by (repeatable); checked with the payload's"
                        " sha256 before anything is sent")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="chunk size in bytes (default 1 MiB)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_publish, default_client_id="operator-publish")
