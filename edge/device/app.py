"""`edge run`: the composition root (DESIGN §1, §7). Config in, components built and wired, threads started;
signals: SIGTERM/SIGINT stop, SIGHUP reloads what can change without dropping the camera. No logic beyond wiring.

Threads: the pipeline's own (capture, inference, events); `edge-control` (MQTT inbox → ack / watchlist sync,
outbox pump, retained status heartbeat, health log line, systemd watchdog); the main thread waits in `run()`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge import __version__, keys
from edge.audit import AuditLog
from edge.device.capture import open_source
from edge.config import Config, ConfigError, load_config
from edge.errors import EdgeError
from edge.device.event_writer import EventWriter
from edge.device.health import Health, Heartbeat
from edge.messaging.outbox import Outbox
from edge.device.pipeline import MatchContext, Pipeline
from edge.device.policy import DecisionPolicy, PolicyConfig
from edge.device.sdnotify import sd_notify
from edge.messaging.topics import Topics
from edge.messaging.payloads import PayloadError, encode_status
from edge.device.track import Tracker
from edge.vision.analyzer import FaceAnalyzer, VisionOptions
from edge.vision.quality import QualityThresholds
from edge.watchlist.index import Watchlist
from edge.watchlist.store import WatchlistStore

log = logging.getLogger("edge.device.app")

#: Sections `reload` applies to the running pipeline; the others need a restart.
RELOADABLE = ("quality", "tracking", "policy", "health")


def vision_options(c: Config) -> VisionOptions:
    v = c.vision
    return VisionOptions(v.detector, v.embedder, v.threads, v.backend, v.delegate, v.min_score, v.flip, v.models_dir,
                         v.alignment, v.fusion)


def quality_thresholds(c: Config) -> QualityThresholds:
    q = c.quality
    return QualityThresholds(q.min_eye_distance_px, q.min_sharpness, q.max_yaw, q.max_roll_deg, q.min_score)


def policy_config(c: Config) -> PolicyConfig:
    p = c.policy
    return PolicyConfig(k=p.k, n=p.n, threshold=p.threshold, margin=p.margin, cooldown_s=p.cooldown_s)


def source_options(c: Config) -> dict[str, Any]:
    """config.camera → keyword options of the source kind (`open_source`)."""
    cam = c.camera
    if cam.source == "picamera2":
        return {"width": cam.width, "height": cam.height, "lores_width": cam.lores_width,
                "lores_height": cam.lores_height, "fps": cam.fps, "camera_num": cam.device}
    if cam.source == "replay":
        return {"paths": cam.device, "fps": cam.fps, "pace": cam.replay_pace, "loop": cam.loop}
    return {"device": cam.device, "width": cam.width, "height": cam.height, "fps": cam.fps,
            "reconnect_min_s": cam.reconnect_min_s, "reconnect_max_s": cam.reconnect_max_s,
            "pace": cam.replay_pace, "loop": cam.loop, "fourcc": cam.fourcc}


def load_trust(trusted: Path | list[Path]) -> keys.TrustStore:
    """The operator trust store: a trust-store JSON, or a list of Ed25519 public-key PEM files."""
    if isinstance(trusted, list):
        return keys.TrustStore([keys.load_public_key(p, "operator") for p in trusted])
    return keys.TrustStore.load(trusted)


def file_sha256(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


class _AuditedStore:
    """The store as WatchlistSync sees it: every install or rejection is also an audit record."""

    def __init__(self, store: WatchlistStore, audit: AuditLog) -> None:
        self._store, self._audit = store, audit

    def install(self, data: bytes, now: Any = None) -> Any:
        result = self._store.install(data, now)
        if result.reason != "already_installed":
            self._audit.append("watchlist_install" if result.ok else "watchlist_reject",
                               {"version": result.version, "reason": result.reason, "message": result.message,
                                "sha256": hashlib.sha256(data).hexdigest()})
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class App:
    """The appliance. `config_path` (optional) is the file `config` came from: hashed into the audit log, re-read
    on SIGHUP. Attributes for tests: health, pipeline, store, outbox, audit."""

    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.config, self.config_path = config, Path(config_path) if config_path else None
        c, state = config, config.device.state_dir
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._stopping = threading.Lock()
        self._stopped = threading.Event()
        self._started = False
        self._control: threading.Thread | None = None
        self.health = Health()
        try:
            for d in (state, state / "incoming"):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                if d.stat().st_mode & 0o077:  # keys, subject ids: the state is the device's alone
                    os.chmod(d, 0o700)
        except OSError as err:
            raise EdgeError(f"state directory {d} cannot be created or made private (0700): {err.strerror or err}"
                            " (device.state_dir)") from None
        self.analyzer = FaceAnalyzer.create(vision_options(c))
        info = self.analyzer.embedder_info
        self.embedder_id = self.analyzer.watchlist_embedder_id
        self.store = WatchlistStore(state, c.device.id, keys.load_private_key(c.watchlist.device_key, "device"),
                                    load_trust(c.watchlist.trusted_keys), self.embedder_id, info.sha256,
                                    lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
        self.store.start()
        self.audit = AuditLog(state / "audit.log")
        self.audit.append("start", {"device_id": c.device.id, "version": __version__, "pid": os.getpid(),
                                    "watchlist": self.store.state()})
        self.audit.append("config", {"path": str(self.config_path) if self.config_path else None,
                                     "sha256": file_sha256(self.config_path), "reload": False})
        try:
            self._build(c, state)
        except BaseException:  # a half-built app releases its files (the CLI reports the error)
            if hasattr(self, "outbox"):
                self.outbox.close()
            self.audit.close()
            raise

    def _build(self, c: Config, state: Path) -> None:
        self.outbox = Outbox(state / "outbox.db", max_events=c.events.outbox_max_events,
                             max_age_s=c.events.outbox_max_age_days * 86400)
        thumbnail_key = None
        if c.events.thumbnails:  # off by default: only then does a (sealed) face image leave the device
            thumbnail_key = keys.load_public_key(c.events.operator_thumbnail_key, "device")  # X25519
            log.warning("events.thumbnails is on: each event carries a 96×96 face JPEG encrypted to %s",
                        c.events.operator_thumbnail_key)
        self.writer = EventWriter(c.device.id, self.outbox, self.audit, self.embedder_id, thumbnail_key=thumbnail_key)
        t = c.tracking
        self.tracker = Tracker(t.iou_threshold, t.max_age_s, t.embed_budget, t.embed_improvement, t.reembed_after_s)
        self.policy = DecisionPolicy(policy_config(c))
        self.source = open_source(c.camera.source, **source_options(c))
        self.pipeline = Pipeline(self.source, self.analyzer.detector, self.analyzer.embedder, self.tracker,
                                 self.policy, MatchContext(self._watchlist), self.writer, self.health,
                                 quality_thresholds(c), embed_face=self.analyzer.embed)
        self.health.watch("outbox_depth", self.outbox.depth)
        self.health.watch("event_queue", self.pipeline.events.qsize)
        self.health.watch("watchlist_version", lambda: self.store.state()["version"])
        self.topics = Topics(c.device.id, c.device.topic_prefix)
        self.client = self.publisher = self.sync = None
        if c.mqtt.enabled:
            from edge.messaging.delivery import EventPublisher
            from edge.messaging.mqtt import MqttClient, MqttSettings
            from edge.messaging.sync import WatchlistSync

            m = c.mqtt
            settings = MqttSettings(host=m.host, port=m.port, client_id=c.device.id, ca_file=m.ca_file,
                                    cert_file=m.cert_file, key_file=m.key_file, keepalive=m.keepalive_s,
                                    will_topic=self.topics.status, will_payload=encode_status("offline", {}))
            self.client = MqttClient(settings, [(self.topics.events_ack, 1), (self.topics.watchlist_manifest, 1)])
            self.publisher = EventPublisher(self.outbox, self.client, self.topics)
            self.sync = WatchlistSync(_AuditedStore(self.store, self.audit), self.client, c.device.id,
                                      state / "incoming", c.device.topic_prefix)
            self.health.watch("mqtt_connected", lambda: self.client.connected)

    # --- matching -------------------------------------------------------------------------------------------------
    def _watchlist(self) -> Any:
        live, _ = self.store.current()
        if live is not None and self.config.watchlist.stale_after_expiry == "stop" \
                and self.store.state()["state"] == "stale":
            return None
        return live

    # --- control thread -------------------------------------------------------------------------------------------
    def status(self) -> dict:
        return {**self.health.snapshot(), "watchlist": self.store.state(), "outbox_depth": self.outbox.depth(),
                "audit_head": self.audit.head()}

    def _publish_status(self) -> None:
        try:
            self.client.publish(self.topics.status, encode_status("online", self.status()), 1, True)
        except PayloadError as err:
            log.warning("status not published: %s", err)

    def summary(self) -> str:
        s, wl = self.health.snapshot(), self.store.state()
        n, ms = s["counters"], s["stage_ms"]
        stages = ", ".join(f"{k} p50 {v['p50']:.1f} ms" for k, v in ms.items() if k in ("detect", "embed", "match"))
        mqtt = "" if self.client is None else f", mqtt {'up' if self.client.connected else 'down'}"
        return (f"health: {s['fps']:.1f} fps, frames {n.get('frames_captured', 0)} (dropped "
                f"{self.pipeline.slot.dropped}), faces {n.get('faces', 0)}, events {n.get('events', 0)}, outbox "
                f"{self.outbox.depth()}, watchlist {'v%s ' % wl['version'] if wl['version'] else ''}{wl['state']}"
                f"{mqtt}" + (f"; {stages}" if stages else ""))

    def _control_loop(self) -> None:
        heartbeat, was_up = Heartbeat(self.config.mqtt.status_interval_s), False
        next_ping = time.monotonic()
        next_log = next_ping + self.config.health.log_interval_s
        prefix = f"{self.topics.prefix}/{self.topics.device_id}/watchlist/"
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if self.client is not None:
                    while True:
                        try:
                            msg = self.client.inbox.get_nowait()
                        except queue.Empty:
                            break
                        if msg.topic == self.topics.events_ack:
                            self.publisher.on_ack(msg.payload)
                        elif msg.topic.startswith(prefix):
                            self.sync.handle(msg.topic, msg.payload)
                    up = self.client.connected
                    if up and not was_up:
                        self.sync.report()
                    self.sync.tick()
                    self.publisher.pump()
                    if up and (not was_up or heartbeat.due(now)):
                        self._publish_status()
                    was_up = up
                if now >= next_log:
                    log.info("%s", self.summary())
                    next_log = now + self.config.health.log_interval_s
                if now >= next_ping and now - self.pipeline.last_progress < 5.0:
                    sd_notify("WATCHDOG=1")  # only while the inference thread makes progress
                    next_ping = now + 1.0
            except Exception:  # noqa: BLE001 - the control thread must outlive one bad message or a full disk
                log.exception("control loop step failed")
                self.health.inc("control_errors")
            self._stop.wait(0.05)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline, the MQTT client and the control thread (returns at once)."""
        self.pipeline.start()  # opens the source: CameraError when it cannot
        self._started = True
        if self.client is not None:
            self.client.start()
        self._control = threading.Thread(target=self._control_loop, name="edge-control", daemon=True)
        self._control.start()
        log.info("running: device %s, %s, watchlist %s", self.config.device.id, self.source.describe(),
                 self.store.state()["state"])
        sd_notify("READY=1")

    def run(self) -> int:
        """Start, handle signals (main thread only), block until stopped or a finite source is drained; 0, or 1
        when the frame source failed."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig, fn in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                            (signal.SIGHUP, lambda *_: self._reload.set())):
                handlers[sig] = signal.signal(sig, fn)
        try:
            self.start()
            while not self._stop.wait(0.1):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if self.pipeline.finished.is_set() and self.pipeline.wait(0):
                    log.info("the frame source ended; stopping")
                    break
        finally:
            self.stop()
            for sig, old in handlers.items():
                signal.signal(sig, old)
        return 1 if self.pipeline.error is not None and self.pipeline.finished.is_set() else 0

    def _on_stop(self, signum: int, frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the config file; apply thresholds (quality, tracking, policy, health) and re-load the watchlist
        from disk. An invalid file is logged and changes nothing."""
        if self.config_path is None:
            log.warning("reload: no config file to re-read")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)
            return False
        restart = [s for s in Config.model_fields if s not in RELOADABLE and getattr(new, s) != getattr(self.config, s)]
        self.pipeline.quality = quality_thresholds(new)
        t = new.tracking
        self.tracker.iou_threshold, self.tracker.max_age_s = t.iou_threshold, t.max_age_s
        self.tracker.embed_budget, self.tracker.embed_improvement = t.embed_budget, t.embed_improvement
        self.tracker.reembed_after_s = t.reembed_after_s
        self.policy.config = policy_config(new)
        self.config = self.config.model_copy(update={s: getattr(new, s) for s in RELOADABLE})
        self.store.start()
        self.audit.append("config", {"path": str(self.config_path), "sha256": file_sha256(self.config_path),
                                     "reload": True, "needs_restart": restart})
        log.info("config reloaded from %s (quality, tracking, policy, health applied; watchlist re-read)%s",
                 self.config_path, f"; changes to {', '.join(restart)} need a restart" if restart else "")
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop everything in reverse order within `timeout` seconds; safe to call twice and from any thread."""
        self._stop.set()
        if not self._stopping.acquire(blocking=False):
            self._stopped.wait(timeout)
            return
        try:
            deadline = time.monotonic() + timeout
            sd_notify("STOPPING=1")
            if self._started:
                self.pipeline.stop(timeout * 0.6)
            if self._control is not None:
                self._control.join(max(0.0, deadline - time.monotonic() - 0.5))
            if self.client is not None:
                try:
                    self.publisher.pump()
                    self.client.publish(self.topics.status, encode_status("offline", {}), 1, True)
                    self.client.stop()
                except Exception:  # noqa: BLE001 - shutting down: log and go on
                    log.warning("MQTT shutdown failed", exc_info=True)
            self.audit.append("stop", {"frames": self.health.counter("frames_captured"),
                                       "events": self.health.counter("events"), "outbox_depth": self.outbox.depth()})
            self.outbox.close()
            self.audit.close()
            log.info("stopped")
        finally:
            self._stopped.set()
