"""The broker side of the operator's commands (`edge events …`, `edge watchlist publish`, `edge fleet status|wipe`):
their shared options, a client from them, and the retained messages on some topics."""

from __future__ import annotations

import argparse
import queue
import time
from dataclasses import replace
from pathlib import Path

#: Longest pause between two attempts to reach a broker or a database that is away (`events consume`), seconds.
MAX_BACKOFF_S = 30.0


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


def connect(args: argparse.Namespace, subscriptions: list[tuple[str, int]], wait: bool = True):
    """A started client from the `broker_parent` options; with `wait`, connected within --connect-timeout (else
    MqttError); without, reconnecting with the service's backoff (1 s doubling to MAX_BACKOFF_S) for a
    `BrokerLink` (edge.cli.mqtt) to watch."""
    from edge.messaging.mqtt import MqttClient, MqttSettings

    settings = MqttSettings(host=args.host, port=args.port, client_id=args.client_id or args.default_client_id,
                            ca_file=args.ca, cert_file=args.cert, key_file=args.key, clean_session=False)
    if not wait:
        settings = replace(settings, reconnect_min=1.0, reconnect_max=MAX_BACKOFF_S)
    client = MqttClient(settings, subscriptions)
    client.start()
    if wait:
        client.wait_connected(args.connect_timeout)
    return client


def collect_retained(args: argparse.Namespace, filters: list[str]) -> list[tuple[str, bytes]]:
    """Retained messages on `filters`: until `args.wait` seconds pass, or 0.5 s pass without one after the first."""
    client = connect(args, [(f, 1) for f in filters])
    out: list[tuple[str, bytes]] = []
    try:
        deadline, quiet = time.monotonic() + args.wait, None
        while time.monotonic() < deadline and (quiet is None or time.monotonic() < quiet):
            try:
                msg = client.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            out.append((msg.topic, msg.payload))
            quiet = time.monotonic() + 0.5
    finally:
        client.stop()
    return out
