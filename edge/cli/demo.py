"""`edge demo`: the whole appliance on bundled data, end to end, on one machine.

1. Enroll the listed people from bundled photos into an operator build (its references/ keep the enrolled faces
   for the console), seal the watchlist for a demo device (fresh keys), then install it through the device's
   verifying store. The operator's evidence key pair is made too: the device seals each event's best face chips
   to it; the console opens them beside the enrolled faces.
2. Make a clip (`make_clip`): listed and unlisted faces from *other* bundled photos move, grow and are partly
   occluded over a plain background — or use `--video` with real footage and `--gallery` with real photos.
3. Start a local broker on a free loopback port (mosquitto if installed, else the embedded amqtt broker of the
   `demo` extra; with neither, events go straight from the outbox to the printer, and the demo says so), run the
   real pipeline over the clip, publish from the outbox, and print each event as the central consumer receives it.
   The device's status heartbeat and watchlist state travel the same way, so the console's Devices page shows it.

It composes a device (store, pipeline, outbox, publisher) and the operator's consumer and event store in one
process, so it lives in the CLI: the only package that may import both `edge.device` and `edge.operator`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from edge.errors import EdgeError
from edge.evaluation.clip import DEMO_GALLERY, make_clip
from edge.messaging.local_broker import LocalBroker


def run_demo(analyzer: Any, photos: Path, workdir: Path | None = None, video: Path | None = None,
             gallery: dict[Path, str] | None = None, print_fn: Callable[[str], None] = print,
             broker_kind: str = "auto", console: Callable[[Path, dict, Callable], None] | None = None) -> dict:
    """Run the demo; returns a summary (events received, frames, fps, broker used, per-appearance explanations).
    broker_kind: "auto" (mosquitto if installed, else amqtt) or "amqtt" (the embedded broker even if mosquitto is
    there). console: called with (work dir, subject names, print) once the events are stored (`serve_console`)."""
    from edge.audit import AuditLog
    from edge.device.capture.opencv import OpenCVSource
    from edge.device.health import Health
    from edge.device.wiring import build_pipeline
    from edge.messaging.outbox import Outbox
    from edge.messaging.topics import Topics

    tmp = tempfile.TemporaryDirectory(prefix="edge-demo-") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else Path(str(workdir))
    work.mkdir(parents=True, exist_ok=True)
    device_id = "demo-cam"
    try:
        # 1. Watchlist: enroll, seal for the device, install through the verifying store.
        enrollment, store, evidence_key = _install_watchlist(analyzer, photos, gallery, work, device_id, print_fn)
        # 2. The clip.
        schedule = None
        if video is None:
            video = work / "demo.mp4"
            schedule = _make_demo_clip(video, photos, analyzer, print_fn)
        # 3. Broker, device publisher, central consumer.
        broker = LocalBroker(work, prefer_mosquitto=broker_kind != "amqtt")
        have_broker = broker.start()
        received: list[dict] = []
        # The operator's side names the subjects (events carry only the ids): here, from the enrollment itself.
        names = {s["id"]: s["label"] for s in enrollment.subjects if s.get("label")}
        lock = threading.Lock()
        clock = {"start": time.time()}

        def show(ev: dict) -> None:
            with lock:
                received.append(ev)
            print_fn(_event_line(ev, names, clock["start"]))

        outbox = Outbox(work / "outbox.db")
        audit = AuditLog(work / "audit.log")
        topics = Topics(device_id)
        from edge.device.event_writer import EventWriter

        writer = EventWriter(device_id, outbox, audit, analyzer.embedder_id, on_event=None if have_broker else show,
                             thumbnail_key=evidence_key.public_key())
        health = Health()
        pipeline = build_pipeline(OpenCVSource(video, pace="realtime"), analyzer, lambda: store.current()[0], writer,
                                  health)
        trace: list[dict] = []
        pipeline.trace = trace.append  # what happened to each chip: the per-appearance explanation below
        stop = threading.Event()
        if not have_broker:
            raise EdgeError("the demo runs over MQTT and found no broker: install mosquitto (sudo apt-get install"
                            " mosquitto) or the embedded one (pip install -e '.[demo]')")
        print_fn(f"broker: {broker.kind} on 127.0.0.1:{broker.port} (loopback, demo only; production config: "
                 "firmware-config/mosquitto/edge.conf)")
        clients, pump = _connect_over_mqtt(broker.port, work, device_id, topics, outbox, health, store, show, stop)
        t0 = _play(pipeline, threading.Thread(target=pump, daemon=True), outbox, stop, clock)
        for c in clients:
            c.stop()
        broker.stop()
        summary = _summarize(health.snapshot(), received, names, t0, broker.kind, outbox.depth(), print_fn)
        if schedule is not None:
            from edge.evaluation.appearances import explain

            summary["appearances"] = explain(schedule, list(trace), received, 30.0, names)
            print_fn("what happened to each appearance:")
            for line in summary["appearances"]:
                print_fn(f"  {line}")
        summary["events_db"] = str(work / "events.db")
        if console is not None:
            console(work, names, print_fn)
        return summary
    finally:
        if tmp:
            tmp.cleanup()


def _install_watchlist(analyzer: Any, photos: Path, gallery: dict[Path, str] | None, work: Path, device_id: str,
                       print_fn: Callable[[str], None]) -> tuple[Any, Any, Any]:
    """Step 1: enroll the gallery into an operator build (work/build), make the operator's evidence key pair, seal
    the watchlist for a fresh demo device key and install it through the device's verifying store.
    Returns (enrollment, the started store, the evidence private key)."""
    from edge import keys
    from edge.cli.watchlist import embedder_info
    from edge.device.wiring import watchlist_loader
    from edge.durable import private_dir
    from edge.evaluation.calibration import scoring_tail
    from edge.watchlist.operator.build import GalleryEntry, enroll, payload_of, write_build
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.payload import pack
    from edge.watchlist.device.store import WatchlistStore
    from edge.watchlist.operator.references import ReferenceSpool

    gallery = gallery or {photos / name: label for name, label in DEMO_GALLERY.items()}
    entries = [GalleryEntry(p, p.name, label, "demo", None) for p, label in gallery.items()]
    spool = ReferenceSpool(work / "build")
    t_enroll = time.perf_counter()
    try:
        enrollment = enroll(entries, analyzer, on_template=spool.add)
        if not enrollment.vectors:
            raise EdgeError("no gallery photo could be enrolled: "
                            + "; ".join(r["reason"] for r in enrollment.rejected))
        payload = payload_of(enrollment, analyzer.fusion_meta)
        write_build(work / "build", payload, enrollment, embedder_info(analyzer),
                    time.perf_counter() - t_enroll, force=True, references=spool)
    finally:
        spool.discard()
    thresholds = scoring_tail(analyzer.embedder_info.info, analyzer.fusion).threshold_for(len(enrollment.vectors),
                                                                                          0.003)
    # The operator's evidence key pair: the device gets the public half, the console keeps the private one.
    evidence_key = keys.generate_device_key()  # X25519
    keys.save_private_key(private_dir(work / "operator") / "evidence.key", evidence_key, force=True)
    operator, device_key = keys.generate_operator_key(), keys.generate_device_key()
    embedder_id = analyzer.embedder_id
    bundle = seal(pack(payload),
                  watchlist_id="demo", version=1, device_id=device_id, device_public=device_key.public_key(),
                  signing_key=operator, embedder_id=embedder_id, embedder_sha256=analyzer.embedder_info.sha256,
                  dim=analyzer.embedder.dim, n_items=len(enrollment.vectors), n_subjects=len(enrollment.subjects),
                  thresholds={**{k: thresholds[k] for k in ("match", "fpir_target", "predicted_fpir",
                                                            "calibrated_for_n")}, "margin": 0.02},
                  expires=datetime.now(timezone.utc) + timedelta(days=1))
    store = WatchlistStore(work / "state", device_id, device_key,
                           {keys.key_id(operator.public_key()): operator.public_key()}, embedder_id,
                           analyzer.embedder_info.sha256,
                           watchlist_loader)
    store.start()
    result = store.install(bundle)
    if not result.ok:
        raise EdgeError(f"demo watchlist was rejected: {result.message}")
    print_fn(f"watchlist v1: {len(enrollment.subjects)} listed people "
             f"({', '.join(s['label'] for s in enrollment.subjects)}), match threshold {thresholds['match']:.3f} "
             f"(FPIR 0.003 at {len(enrollment.vectors)} templates), sealed and installed")
    print_fn(f"evidence: each event carries the track's best face chip(s) as JPEG sealed to the operator's "
             f"evidence key {keys.key_id(evidence_key.public_key())} (X25519; private half "
             f"{work / 'operator' / 'evidence.key'}); the console shows them beside the enrolled faces kept in "
             f"{work / 'build' / 'references'} (operator side only, never sent to a device)")
    return enrollment, store, evidence_key


def _make_demo_clip(video: Path, photos: Path, analyzer: Any, print_fn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Step 2: write the generated clip to `video` and say who appears when; returns its schedule."""
    schedule = make_clip(video, photos, analyzer)
    print_fn(f"clip: {video} — " + ", ".join(
        f"{a['photo']} ({'listed' if a['listed_as'] else 'not listed'}, "
        f"{a['visible_s'][0]}–{a['visible_s'][1]} s)"
        for a in schedule))
    return schedule


def _event_line(ev: dict[str, Any], names: dict[str, str], start: float) -> str:
    """One received event as the demo prints it (`start`: wall-clock time the clip started)."""
    return (f"EVENT {ev['device_id']} #{ev['seq']} at {ev['captured_at'] - start:.1f} s: "
            f"{names.get(ev['subject_id'], ev['subject_id'])} — similarity "
            f"{ev['similarity']:.3f} ≥ {ev['threshold']:.3f}, margin {ev['margin']:.3f}, "
            f"track {ev['track_id']}, {ev['chips_used']} chips — candidate for human review "
            f"(review_required={ev['review_required']})")


def _connect_over_mqtt(port: int, work: Path, device_id: str, topics: Any, outbox: Any, health: Any, store: Any,
                       show: Callable[[dict[str, Any]], None],
                       stop: threading.Event) -> tuple[tuple[Any, Any], Callable[[], None]]:
    """Step 3's wiring on the local broker: the device's client and publisher (events, retained status heartbeat
    and watchlist state), the operator's client and consumer (into work/events.db, each event to `show`).
    Returns ((device client, operator client), the loop that pumps both until `stop`)."""
    from edge.messaging.delivery import EventConsumer, EventPublisher
    from edge.messaging.mqtt import MqttClient, MqttSettings
    from edge.messaging.payloads import encode_status, encode_watchlist_state
    from edge.messaging.topics import operator_filter
    from edge.operator.event_store import EventStore

    dev_client = MqttClient(MqttSettings(port=port, client_id=device_id), [(topics.events_ack, 1)])
    op_client = MqttClient(MqttSettings(port=port, client_id="operator"),
                           [(operator_filter(kind), 1) for kind in ("events", "status", "watchlist_state")])
    for c in (dev_client, op_client):
        c.start()
        c.wait_connected(5)
    publisher = EventPublisher(outbox, dev_client, topics, resend_after=2.0)
    events_store = EventStore(work / "events.db")
    consumer = EventConsumer(
        op_client, events_store, on_event=show,
        on_status=lambda d, st: events_store.device_status(d, st.state == "online", st.health),
        on_watchlist=lambda d, w: events_store.device_watchlist(d, w.installed_version, w.state, w.reason))

    def heartbeat() -> None:  # what a device's control loop publishes (retained), every second here
        status = {**health.snapshot(), "reported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "watchlist": store.state().to_dict(), "outbox_depth": outbox.depth()}
        status["gauges"] = {**status["gauges"], "outbox_depth": outbox.depth()}
        dev_client.publish(topics.status, encode_status("online", status), 1, True)

    dev_client.publish(topics.watchlist_state, encode_watchlist_state(1, "installed"), 1, True)

    def pump() -> None:
        next_beat = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_beat:
                heartbeat()
                next_beat = time.monotonic() + 1.0
            publisher.pump()
            while not dev_client.inbox.empty():
                publisher.on_ack(dev_client.inbox.get().payload)
            consumer.poll(0.05)

    return (dev_client, op_client), pump


def _play(pipeline: Any, pumping: threading.Thread, outbox: Any, stop: threading.Event,
          clock: dict[str, float]) -> float:
    """Run the pipeline over the clip with `pumping` alongside, let the outbox drain (≤ 5 s) and one more heartbeat
    go out, then stop the pump. Sets clock["start"] (wall clock); returns the monotonic start."""
    pumping.start()
    t0 = time.monotonic()
    clock["start"] = time.time()
    pipeline.start()
    pipeline.wait()
    pipeline.stop()
    deadline = time.monotonic() + 5
    while outbox.depth() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # one more heartbeat after the last event, with the final figures
    stop.set()
    pumping.join(2)
    return t0


def _summarize(snap: dict[str, Any], received: list[dict[str, Any]], names: dict[str, str], t0: float,
               broker_kind: str | None, outbox_depth: int, print_fn: Callable[[str], None]) -> dict[str, Any]:
    """The run's summary (events, labels, frames, seconds, broker, outbox depth, stage latencies, quality gate),
    printed in two lines."""
    summary = {"events": len(received), "labels": sorted({names.get(e["subject_id"], e["subject_id"])
                                                          for e in received}),
               "frames": snap["counters"].get("frames_captured", 0), "seconds": round(time.monotonic() - t0, 1),
               "broker": broker_kind, "outbox_depth": outbox_depth,
               "stage_ms": snap.get("stage_ms", {})}
    counters = snap["counters"]
    refused = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("quality_reject.")}
    summary["gate"] = {"embedded": counters.get("embeddings", 0), "refused": refused}
    print_fn(f"done: {summary['frames']} frames in {summary['seconds']} s, {summary['events']} event(s) "
             f"received: {', '.join(summary['labels']) or 'none'}; outbox depth {summary['outbox_depth']}")
    print_fn(f"quality gate: {summary['gate']['embedded']} chips embedded; refused: "
             + (", ".join(f"{k} {v}" for k, v in sorted(refused.items(), key=lambda kv: -kv[1])) or "none"))
    return summary


def serve_console(work: Path, names: dict, print_fn: Callable[[str], None], listen: str = "127.0.0.1:8080",
                  seconds: float | None = None) -> dict:
    """Start the review console on the demo's SQLite event store with two demo reviewers (fresh random passwords),
    the operator's evidence key (the captured faces) and the demo's build (names and enrolled faces), print its URL
    and the sign-ins, and serve until Ctrl-C (or `seconds`). Returns {url, users}."""
    import secrets
    import socket

    from edge import keys
    from edge.audit import AuditLog
    from edge.cli.console import shipped_demographics
    from edge.operator.accounts import Accounts
    from edge.operator.console import create_app, server
    from edge.operator.event_store import EventStore
    from edge.watchlist.operator.references import References

    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    with socket.socket() as probe:  # the default port taken (another demo?), or 0: any free one
        try:
            probe.bind((host, port))
        except OSError:
            probe.bind((host, 0))
        port = probe.getsockname()[1]
    store = EventStore(work / "events.db")
    accounts = Accounts(store.db)
    users = {}
    for name in ("reviewer-1", "reviewer-2"):
        users[name] = secrets.token_urlsafe(9)
        accounts.add_user(name, users[name], "reviewer")
    audit = AuditLog(work / "console-audit.log")
    evidence_key = keys.load_private_key(work / "operator" / "evidence.key", "device")
    app = create_app(store, accounts, audit, names, 2, None, demographics=shipped_demographics(),
                     thumbnail_key=evidence_key, references=References(work / "build"))
    srv = server(app, host, port, log_level="warning")  # the demo prints its own lines
    thread = threading.Thread(target=srv.run, name="edge-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://{host}:{port}/"
    print_fn(f"review console: {url} — {store.count('pending')} event(s) waiting for review; an event is confirmed"
             " only when two different reviewers confirm it; each event page shows the captured face beside the"
             " enrolled one")
    for name, password in users.items():
        print_fn(f"  sign in as {name} / {password}")
    print_fn("  (Ctrl-C stops the console; the demo's files are deleted unless --workdir keeps them)")
    try:
        end = None if seconds is None else time.monotonic() + seconds
        while thread.is_alive() and (end is None or time.monotonic() < end):
            thread.join(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.should_exit = True
        thread.join(5)
        audit.close()
        store.close()
    return {"url": url, "users": users}
