"""`edge events tail` and `edge watchlist publish`: the operator's MQTT commands (argument handling, output)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.errors import DataError


def broker_parent() -> argparse.ArgumentParser:
    """Options shared by commands that talk to the broker."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("broker")
    g.add_argument("--host", default="localhost", help="broker host (default localhost)")
    g.add_argument("--port", type=int, default=8883, help="broker port (default 8883, MQTT over TLS)")
    g.add_argument("--ca", type=Path, help="CA certificate (PEM) the broker's certificate must chain to")
    g.add_argument("--cert", type=Path, help="this client's certificate (PEM; its CN is the MQTT user)")
    g.add_argument("--key", type=Path, help="this client's private key (PEM)")
    g.add_argument("--client-id", help="MQTT client id (default: 'operator' for events tail, 'operator-publish' for "
                                       "watchlist publish — each tool its own certificate CN, since the broker makes "
                                       "the CN the client id and a second connection under one id drops the first)")
    g.add_argument("--prefix", default="edge", help="topic prefix (default 'edge')")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    return p


def _client(args: argparse.Namespace, subscriptions: list[tuple[str, int]]):
    from edge.messaging.mqtt import MqttClient, MqttSettings

    settings = MqttSettings(host=args.host, port=args.port, client_id=args.client_id or args.default_client_id,
                            ca_file=args.ca,
                            cert_file=args.cert, key_file=args.key, clean_session=False)
    client = MqttClient(settings, subscriptions)
    client.start()
    client.wait_connected(args.connect_timeout)
    return client


def cmd_events_tail(args: argparse.Namespace) -> int:
    from edge.messaging.delivery import EventConsumer
    from edge.operator.event_store import EventStore
    from edge.operator.labels import labels_from_build

    store = EventStore(args.store)
    from edge.messaging.topics import operator_filter

    subscriptions = [(operator_filter("events", args.prefix), 1)]
    if args.heads:
        subscriptions.append((operator_filter("status", args.prefix), 1))
    client = _client(args, subscriptions)

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
    last = time.monotonic()
    try:
        while True:
            if consumer.poll(0.2):
                last = time.monotonic()
            if args.count and consumer.stats.stored >= args.count:
                break
            if args.idle_exit and time.monotonic() - last > args.idle_exit:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.stop()
        store.close()
        if heads is not None:
            heads.close()
    s = consumer.stats
    print(f"stored {s.stored} events, {s.duplicates} duplicates dropped, {s.rejected} rejected"
          + (f" (last: {s.last_rejection})" if s.last_rejection else ""), file=sys.stderr)
    return 0


def cmd_watchlist_publish(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.messaging.sync import offer_messages
    from edge.watchlist.bundle import MAX_BUNDLE_BYTES, BundleError, verify_bundle

    try:
        if args.bundle.stat().st_size > MAX_BUNDLE_BYTES:
            raise DataError(f"{args.bundle} is larger than a bundle can be ({MAX_BUNDLE_BYTES} bytes)")
        data = args.bundle.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read bundle {args.bundle}: {err.strerror or err}") from None
    trust = keys.TrustStore([keys.load_public_key(p, "operator") for p in args.operator_key])
    try:  # a truncated, bit-flipped or foreign bundle never replaces the good retained offer
        manifest, _ = verify_bundle(data, trust, expected_device_id=args.device)
    except BundleError as err:
        raise DataError(f"{args.bundle} was not published: {err}") from None
    messages = offer_messages(data, args.device, int(manifest["version"]), args.prefix, args.chunk_bytes)
    client = _client(args, [])
    t0 = time.perf_counter()
    try:
        client.publish_confirmed(messages, retain=True, connect_timeout=args.connect_timeout)
    finally:
        client.stop()
    seconds = time.perf_counter() - t0
    result = {"device": args.device, "version": manifest["version"], "bytes": len(data), "chunks": len(messages) - 1,
              "seconds": round(seconds, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"published watchlist v{result['version']} for {args.device}: {len(data)} bytes in {result['chunks']} "
              f"retained chunks, {result['seconds']} s")
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

    p = watchlist_sub.add_parser("publish", parents=[broker], help="send a sealed bundle to one device over MQTT",
                                 description="Publish the bundle as retained chunks and a retained offer on "
                                             "<prefix>/<device>/watchlist/…; the device fetches what it lacks.")
    p.add_argument("--bundle", type=Path, required=True, help="bundle from `edge watchlist seal`")
    p.add_argument("--device", required=True, help="target device id (must match the bundle)")
    p.add_argument("--operator-key", type=Path, action="append", required=True, metavar="PUB",
                   help="operator public key the bundle must be signed by (repeatable); checked with the payload's"
                        " sha256 before anything is sent")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="chunk size in bytes (default 1 MiB)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_publish, default_client_id="operator-publish")
