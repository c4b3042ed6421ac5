"""`edge watchlist bench-sync`: one group watchlist to N device processes over a loopback mosquitto running the
shipped TLS/ACL configuration (a fresh throwaway PKI; the ACL generated from a fleet of N devices), then a
+500/−500 delta. Every device is a real `WatchlistStore` + `WatchlistSync` + MQTT client in its own process,
loading the list the device way (verify, unwrap, decrypt in memory, rebuild for the delta, load). Bytes retained
are counted on the broker by a fresh group member reading the retained subtree.

The N devices share this machine's cores (real devices each have their own), so `*_seconds_all_installed` are an
upper bound for a fleet of separate boards; `--parallel-installs` caps how many devices run an install at once
(memory), and the per-device install times are reported beside them.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from edge.errors import DataError
from edge.evaluation.loopback_broker import ROOT, LoopbackBroker

GROUP = "bench"
OBSERVER = "bench-observer"


def _cert_tool():
    path = ROOT / "tools" / "make_test_certs.py"
    if not path.exists():
        raise DataError(f"{path} is missing: bench-sync makes its throwaway PKI with it; run it from the repository")
    spec = importlib.util.spec_from_file_location("make_test_certs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_test_certs", module)
    spec.loader.exec_module(module)
    return module


def synthetic_versions(size: int, change: int, seed: int = 0):
    """(full v1, full v2, delta v2 on v1) packed: `size` subjects of one random unit 128-d template each, then
    `change` removed and `change` added."""
    from edge.watchlist import delta as D
    from edge.watchlist.operator.diff import diff
    from edge.watchlist.operator.build import make_payload
    from edge.watchlist.payload import pack

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((size + change, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"subject-{i:07d}" for i in range(size + change)]

    def subjects(rows: list[int]) -> list[dict]:
        return [{"id": ids[i], "label": f"Person {i:07d}", "category": "watch", "expires": None} for i in rows]

    rows1 = list(range(size))
    rows2 = list(range(change, size + change))
    base = make_payload(v[rows1], list(range(size)), subjects(rows1))
    new = make_payload(v[rows2], list(range(size)), subjects(rows2))
    delta = diff(base, new)
    full2 = D.apply(base, delta)
    return pack(base), pack(full2), D.pack_delta(delta)


# ------------------------------------------------------------------------------------------------ device process


class _Slots:
    """At most `n` holders at once across processes (flock on n slot files)."""

    def __init__(self, folder: Path, n: int) -> None:
        self.paths = [folder / f"slot-{i}" for i in range(n)]
        self.fd: IO[str] | None = None

    def __enter__(self) -> "_Slots":
        while True:
            for path in self.paths:
                fd = open(path, "a")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.fd = fd
                    return self
                except BlockingIOError:
                    fd.close()
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.fd.close()
            self.fd = None


def device_main(argv: list[str]) -> int:
    """One device: run store + sync until version `until` is installed, printing a JSON line per install."""
    from edge import keys
    from edge.messaging.mqtt import MqttClient, MqttSettings
    from edge.messaging.sync import WatchlistSync
    from edge.watchlist.device.matcher import Watchlist
    from edge.watchlist.device.store import WatchlistStore

    cfg = json.loads(argv[0])
    device = keys.load_private_key(cfg["device_key"], "device")
    operator = keys.load_public_key(cfg["operator_pub"], "operator")
    store = WatchlistStore(cfg["state"], cfg["id"], device, {keys.key_id(operator): operator}, "bench", "0" * 64,
                           lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
    store.start()
    slots = _Slots(Path(cfg["slots"]), cfg["parallel"])

    class Gate:  # the store, with installs limited to `parallel` devices at a time and timed
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def install_file(self, bundle: Path):
            with slots:
                t0 = time.perf_counter()
                result = store.install_file(bundle)
                print(json.dumps({"device": cfg["id"], "version": result.version, "reason": result.reason,
                                  "message": result.message, "t": time.time(),
                                  "install_s": round(time.perf_counter() - t0, 3)}), flush=True)
                return result

    settings = MqttSettings(host=cfg["host"], port=cfg["port"], client_id=cfg["id"], ca_file=cfg["ca"],
                            cert_file=cfg["cert"], key_file=cfg["key"], clean_session=False)
    client = MqttClient(settings)
    sync = WatchlistSync(Gate(), client, cfg["id"], Path(cfg["state"]) / "incoming")
    client.start()
    client.wait_connected(30)
    sync.start()
    print(json.dumps({"device": cfg["id"], "ready": True}), flush=True)
    while (store.current()[1] or {}).get("version") != cfg["until"]:
        sync.tick()
        try:
            msg = client.inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        sync.handle(msg.topic, msg.payload)
    client.stop()
    return 0


# ------------------------------------------------------------------------------------------------ operator side


def _retained_bytes(broker: LoopbackBroker, pki, window: int = 8, quiet: float = 1.0) -> dict:
    """What the broker retains under the group's subtree, read back by a fresh member the way a device does: the
    offers, then every chunk they announce, a window at a time (mosquitto drops what overflows one client's queue,
    so a single '#' subscription would undercount). Returns {"bytes", "offers", "chunks", "missing"}."""
    from edge.messaging.mqtt import MqttClient, MqttSettings
    from edge.messaging.payloads import PayloadError, parse_offer
    from edge.messaging.topics import WatchlistTopics

    source = WatchlistTopics.for_group(GROUP)
    settings = MqttSettings(host=broker.host, port=broker.port, client_id=OBSERVER, ca_file=pki.ca,
                            cert_file=pki.cert(OBSERVER), key_file=pki.key(OBSERVER), clean_session=True)
    client = MqttClient(settings, [(source.offer(), 1), (source.offer(True), 1)])
    client.start()
    client.wait_connected(10)

    def drain(want: set[str]) -> dict[str, int]:
        got: dict[str, int] = {}
        last = time.monotonic()
        while want - set(got) and time.monotonic() - last < quiet:
            try:
                msg = client.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            got[msg.topic] = len(msg.payload)
            last = time.monotonic()
        return got

    try:
        offers_raw, total, n_chunks, missing = {}, 0, 0, 0
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            try:
                msg = client.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            offers_raw[msg.topic] = msg.payload
            last = time.monotonic()
        for payload in offers_raw.values():
            total += len(payload)
            try:
                offer = parse_offer(payload, source.audience)
            except PayloadError:
                continue
            topics = [source.chunk(offer.version, n, offer.base is not None) for n in range(len(offer.chunks))]
            for k in range(0, len(topics), window):
                batch = topics[k:k + window]
                for t in batch:
                    client.subscribe(t, 1)
                got = drain(set(batch))
                for t in batch:
                    client.unsubscribe(t)
                total += sum(got.values())
                n_chunks += len(got)
                missing += len(set(batch) - set(got))
    finally:
        client.stop()
    return {"bytes": total, "offers": len(offers_raw), "chunks": n_chunks, "missing": missing}


class _Lines:
    """Every device process's stdout JSON lines, gathered by one reader thread per process."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.q: queue.Queue = queue.Queue()
        for i, p in enumerate(procs):
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i: int, p: subprocess.Popen) -> None:
        for line in p.stdout or ():
            self.q.put((i, line))
        self.q.put((i, None))

    def wait(self, n: int, want: Callable[[dict], bool], timeout: float) -> list[dict]:
        """Until each of the `n` devices printed a line satisfying `want`; returns those lines."""
        got: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < n:
            try:
                i, line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise DataError(f"only {len(got)} of {n} devices got there within {timeout:g} s") from None
            if line is None:
                if i not in got:
                    raise DataError(f"device process {i} ended early (see its log in the bench's temp dir)")
                continue
            event = json.loads(line)
            if event.get("reason") not in (None, "installed", "already_installed"):
                raise DataError(f"device {event['device']} refused the watchlist: {event.get('message')}")
            if want(event):
                got[i] = event
        return list(got.values())


def run_sync_bench(devices: int, size: int, change: int = 500, parallel: int = 2, chunk_bytes: int = 1 << 20,
                   timeout: float = 1800.0, progress: Callable[[str], None] = lambda s: None) -> dict:
    """The bench; returns DESIGN §9's keys and the details behind them."""
    from edge import keys
    from edge.messaging.mqtt import MqttClient, MqttSettings
    from edge.messaging.payloads import parse_offer
    from edge.messaging.offers import clear_messages, offer_messages
    from edge.operator.fleet import Fleet, acl_text
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.payload import content_sha256

    if not 1 <= devices <= 200:
        raise DataError(f"--devices must be in [1, 200], got {devices}")
    if not 2 * change < size <= 2_000_000:
        raise DataError(f"--size must exceed twice the change ({2 * change}) and be ≤ 2,000,000, got {size}")
    ids = [f"bench-{i:03d}" for i in range(devices)]
    with tempfile.TemporaryDirectory(prefix="edge-bench-sync-") as tmp_name:
        tmp = Path(tmp_name)
        progress(f"building {size}-subject v1 and v2 (+{change}/-{change})")
        full1, full2, delta2 = synthetic_versions(size, change)
        pki = _cert_tool().make_pki(tmp / "pki", ids + [OBSERVER])
        operator = keys.generate_operator_key()
        keys.save_public_key(tmp / "operator.pub", operator.public_key())
        fleet, device_keys = Fleet(), {}
        for d in ids + [OBSERVER]:
            device_keys[d] = keys.generate_device_key()
            fleet.add(d, keys.raw_public(device_keys[d].public_key()), [GROUP])
            keys.save_private_key(tmp / f"{d}.x25519", device_keys[d])
        recipients = {d: device_keys[d].public_key() for d in ids}
        common: dict[str, Any] = dict(watchlist_id="bench", group=GROUP, recipients=recipients, signing_key=operator,
                      embedder_id="bench", embedder_sha256="0" * 64, dim=128, n_items=size, n_subjects=size,
                      thresholds={"match": 0.6}, expires=datetime.now(timezone.utc) + timedelta(days=1))
        progress("sealing")
        v1 = seal(full1, version=1, **common)
        v2 = seal(full2, version=2, **common)
        d2 = seal(delta2, version=2, base={"version": 1, "content_sha256": content_sha256(full1)},
                  content=content_sha256(full2), **common)
        del full1, full2, delta2
        from edge.messaging.topics import WatchlistTopics

        source = WatchlistTopics.for_group(GROUP)
        (tmp / "slots").mkdir()
        with LoopbackBroker(pki, tmp / "broker", acl_text(fleet)) as broker:
            pub = MqttClient(MqttSettings(host=broker.host, port=broker.port, client_id="operator-publish",
                                          ca_file=pki.ca, cert_file=pki.cert("operator-publish"),
                                          key_file=pki.key("operator-publish"), clean_session=True))
            pub.start()
            pub.wait_connected(10)
            procs = []
            progress(f"starting {devices} device processes")
            for d in ids:
                cfg = {"id": d, "device_key": str(tmp / f"{d}.x25519"), "operator_pub": str(tmp / "operator.pub"),
                       "state": str(tmp / "devices" / d), "host": broker.host, "port": broker.port,
                       "ca": str(pki.ca), "cert": str(pki.cert(d)), "key": str(pki.key(d)), "until": 2,
                       "slots": str(tmp / "slots"), "parallel": parallel}
                with open(tmp / f"{d}.log", "w") as log:
                    procs.append(subprocess.Popen([sys.executable, "-m", "edge.evaluation.sync_bench",
                                                   json.dumps(cfg)], stdout=subprocess.PIPE, stderr=log, text=True,
                                                  stdin=subprocess.DEVNULL))
            lines = _Lines(procs)
            try:
                lines.wait(devices, lambda e: bool(e.get("ready")), 120)
                progress("publishing the full v1")
                t0 = time.time()
                v1_messages = offer_messages(v1, source, 1, chunk_bytes=chunk_bytes, recipients=sorted(recipients))
                pub.publish_confirmed(v1_messages, retain=True)
                full_events = lines.wait(devices, lambda e: e.get("version") == 1, timeout)
                full_s = max(e["t"] for e in full_events) - t0
                full_retained = _retained_bytes(broker, pki)
                if full_retained["missing"]:
                    raise DataError(f"{full_retained['missing']} announced chunks are not retained on the broker")
                progress("publishing v2: the delta and the full bundle")
                t1 = time.time()
                messages = (offer_messages(d2, source, 2, chunk_bytes=chunk_bytes, base=1,
                                           recipients=sorted(recipients))
                            + offer_messages(v2, source, 2, chunk_bytes=chunk_bytes, recipients=sorted(recipients)))
                pub.publish_confirmed(messages, retain=True)
                delta_events = lines.wait(devices, lambda e: e.get("version") == 2, timeout)
                delta_s = max(e["t"] for e in delta_events) - t1
                # as `edge watchlist publish` does: v1's chunks are cleared once v2's offers are in place
                pub.publish_confirmed(clear_messages(source, parse_offer(v1_messages[-1][1], source.audience)),
                                      retain=True)
                both_retained = _retained_bytes(broker, pki)
                for p in procs:
                    p.wait(timeout=60)
            finally:
                pub.stop()
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
    via_delta = sum("from a delta" in e["message"] for e in delta_events)
    return {"devices": devices, "size": size, "full_bytes_retained": full_retained["bytes"],
            "full_seconds_all_installed": round(full_s, 2), "delta_bytes": len(d2),
            "delta_seconds_all_installed": round(delta_s, 2),
            "full_bundle_bytes": len(v1), "delta_fraction_of_full": round(len(d2) / len(v1), 5),
            "retained_after_v2": {"bytes": both_retained["bytes"], "offers": both_retained["offers"],
                                  "chunks": both_retained["chunks"],
                                  "note": "v2's full bundle (for devices without v1) and its delta; v1 cleared"},
            "per_device_install_seconds": {
                "full_median": round(statistics.median(e["install_s"] for e in full_events), 2),
                "delta_median": round(statistics.median(e["install_s"] for e in delta_events), 2)},
            "devices_via_delta": via_delta, "change": {"added": change, "removed": change},
            "parallel_installs": parallel, "chunk_bytes": chunk_bytes,
            "note": f"{devices} device processes share this machine's cores; at most {parallel} install at once"}


if __name__ == "__main__":
    sys.exit(device_main(sys.argv[1:]))
