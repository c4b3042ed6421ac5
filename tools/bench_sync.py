"""Watchlist sync at scale over loopback: a sealed N-subject bundle goes operator → mosquitto (the committed
TLS/ACL config, a fresh test PKI) → device, which verifies, decrypts and installs it. Prints bytes and seconds.

    python tools/bench_sync.py --size 300000 [--chunk-bytes 1048576]
"""

from __future__ import annotations

import argparse
import importlib.util
import queue
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=300_000)
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    args = ap.parse_args()

    from edge import keys
    from edge.messaging.mqtt import MqttClient
    from edge.messaging.sync import WatchlistSync, offer_messages
    from edge.watchlist.build import make_payload
    from edge.watchlist.bundle import seal
    from edge.watchlist.index import Watchlist
    from edge.watchlist.payload import pack
    from edge.watchlist.store import WatchlistStore

    certs = _load("make_test_certs", ROOT / "tools" / "make_test_certs.py")
    sys.path.insert(0, str(ROOT / "tests"))
    broker_mod = _load("broker", ROOT / "tests" / "broker.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = certs.make_pki(tmp / "pki", ("cam-a",))
        broker = broker_mod.Broker(pki, tmp / "broker")
        broker.start()
        try:
            operator, device = keys.generate_operator_key(), keys.generate_device_key()
            rng = np.random.default_rng(0)
            v = rng.normal(size=(args.size, 128)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            subjects = [{"id": f"s{i}", "label": "", "category": "", "expires": None} for i in range(args.size)]
            t0 = time.perf_counter()
            data = seal(pack(make_payload(v, list(range(args.size)), subjects)), watchlist_id="bench", version=1,
                        device_id="cam-a", device_public=device.public_key(), signing_key=operator,
                        embedder_id="bench", embedder_sha256="0" * 64, dim=128, n_items=args.size,
                        n_subjects=args.size, thresholds={"match": 0.99},
                        expires=datetime.now(timezone.utc) + timedelta(days=1))
            print(f"sealed {args.size} subjects: {len(data)} bytes in {time.perf_counter() - t0:.1f} s")
            del v, subjects
            store = WatchlistStore(tmp / "state", "cam-a", device,
                                   {keys.key_id(operator.public_key()): operator.public_key()}, "bench", "0" * 64,
                                   lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
            store.start()
            client = MqttClient(broker.client_settings("cam-a", inbox_size=10_000))
            sync = WatchlistSync(store, client, "cam-a", tmp / "state" / "incoming")
            client.start()
            client.wait_connected(10)
            sync.start()
            op = MqttClient(broker.client_settings("operator"))
            op.start()
            op.wait_connected(10)
            messages = offer_messages(data, "cam-a", 1, chunk_bytes=args.chunk_bytes)
            t0 = time.perf_counter()
            for topic, payload in messages:
                while op.publish(topic, payload, qos=1, retain=True) is None:
                    time.sleep(0.01)
            deadline = time.monotonic() + 600
            while store.current()[1] is None and time.monotonic() < deadline:
                sync.tick()
                try:
                    msg = client.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                sync.handle(msg.topic, msg.payload)
            seconds = time.perf_counter() - t0
            ok = store.current()[1] is not None
            print(f"sync {'installed' if ok else 'FAILED'}: {len(data)} bytes in {len(messages) - 1} chunks of "
                  f"{args.chunk_bytes} bytes, {seconds:.1f} s publish-to-installed ({len(data) / seconds / 2**20:.1f} "
                  f"MiB/s), chunks rejected {sync.stats.chunks_rejected}, inbox drops {client.stats.inbox_dropped}")
            op.stop()
            client.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
