"""The one composition of the device: a `Config` turned into components (DESIGN §1, §7). Used by `edge run` (`App`),
`edge doctor`, `edge run --check`, `edge demo` and `edge bench`, so each object is built from config in one place.

Functions here only construct; nothing starts a thread or opens a camera. `build(config)` makes the whole device
(`Device`); the smaller builders serve the commands that need one part.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from edge import keys
from edge.config import Config, PolicyConfig
from edge.device.health import Health
from edge.device.pipeline import DEFAULT_QUALITY, MatchContext, Pipeline
from edge.device.policy import DecisionPolicy
from edge.device.ports import Analyzer, EventSink, InstalledWatchlist, Matcher
from edge.device.track import Tracker
from edge.durable import private_dir
from edge.errors import EdgeError
from edge.install_state import InstallReason, InstallResult, Serving
from edge.vision.analyzer import FaceAnalyzer, VisionOptions
from edge.vision.quality import QualityThresholds

if TYPE_CHECKING:  # hints only: each builder imports its module when it runs (paho, the sources, the index…)
    from edge.audit import AuditLog
    from edge.audit_seal import Sealer
    from edge.device.capture.base import FrameSource
    from edge.device.control import Control
    from edge.device.event_writer import EventWriter
    from edge.device.thermal import ThermalGovernor
    from edge.messaging.delivery import EventPublisher
    from edge.messaging.mqtt import MqttClient, MqttSettings
    from edge.messaging.outbox import Outbox
    from edge.messaging.sync import WatchlistSync
    from edge.messaging.topics import Topics
    from edge.watchlist.device.matcher import Watchlist
    from edge.watchlist.device.store import WatchlistStore
    from edge.watchlist.frame import OpenedBundle

log = logging.getLogger("edge.device.wiring")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- config → options

def vision_options(c: Config) -> VisionOptions:
    """config.vision → the analyzer's options."""
    v = c.vision
    return VisionOptions(detector=v.detector, embedder=v.embedder, threads=v.threads, backend=v.backend,
                         delegate=v.delegate, min_score=v.min_score, flip=v.flip, models_dir=v.models_dir,
                         alignment=v.alignment, fusion=v.fusion)


def quality_thresholds(c: Config) -> QualityThresholds:
    """config.quality → the gate's thresholds."""
    q = c.quality
    return QualityThresholds(min_eye_distance=q.min_eye_distance_px, min_sharpness=q.min_sharpness,
                             max_yaw=q.max_yaw, max_roll=q.max_roll_deg, min_score=q.min_score)


def apply_tracking(tracker: Tracker, c: Config) -> Tracker:
    """Set config.tracking on `tracker` (a new one, or the running one on reload); returns it."""
    t = c.tracking
    tracker.iou_threshold, tracker.max_age_s = t.iou_threshold, t.max_age_s
    tracker.embed_budget, tracker.embed_improvement = t.embed_budget, t.embed_improvement
    tracker.reembed_after_s = t.reembed_after_s
    return tracker


def source_options(c: Config) -> dict[str, object]:
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


def frame_source(c: Config) -> FrameSource:
    """The configured frame source, built but not opened."""
    from edge.device.capture import open_source

    return open_source(c.camera.source, **source_options(c))


def mqtt_settings(c: Config, will_topic: str | None = None, will_payload: bytes = b"") -> MqttSettings:
    """config.mqtt (client id = the device id) → `MqttSettings`, with the last will the broker publishes (retained)
    if the device vanishes: `will_payload` on `will_topic` (None: no will)."""
    from edge.messaging.mqtt import MqttSettings

    m = c.mqtt
    return MqttSettings(host=m.host, port=m.port, client_id=c.device.id, ca_file=m.ca_file, cert_file=m.cert_file,
                        key_file=m.key_file, keepalive=m.keepalive_s, will_topic=will_topic,
                        will_payload=will_payload)


# ----------------------------------------------------------------------------------------------------- watchlist

def load_trust(trusted: Path | list[Path]) -> keys.TrustStore:
    """The operator trust store: a trust-store JSON, or a list of Ed25519 public-key PEM files."""
    if isinstance(trusted, list):
        return keys.TrustStore([keys.load_public_key(p, "operator") for p in trusted])
    return keys.TrustStore.load(trusted)


def watchlist_loader(bundle: OpenedBundle) -> Watchlist:
    """A verified, opened bundle → the live `Watchlist` (the store's loader on every device)."""
    from edge.watchlist.device.matcher import Watchlist

    return Watchlist.from_payload(bundle.payload, bundle.manifest["thresholds"], bundle.manifest)


def watchlist_store(c: Config, embedder_id: str, embedder_sha256: str,
                    loader: Callable[[OpenedBundle], T]) -> WatchlistStore[T]:
    """The device's started `WatchlistStore`: the installed bundle verified, then made the live object by `loader`
    (`watchlist_loader` on a running device; `edge doctor`'s only verifies)."""
    from edge.watchlist.device.store import WatchlistStore

    w = c.watchlist
    if w.device_key is None or w.trusted_keys is None:  # never: the Config fills both in under device.state_dir
        raise EdgeError("watchlist.device_key and watchlist.trusted_keys must be set")
    store = WatchlistStore(state_dir=c.device.state_dir, device_id=c.device.id,
                           device_private=keys.load_private_key(w.device_key, "device"),
                           trust=load_trust(w.trusted_keys), embedder_id=embedder_id,
                           embedder_sha256=embedder_sha256, loader=loader)
    store.start()
    return store


# ------------------------------------------------------------------------------------------------------ pipeline

def build_pipeline(source: FrameSource, analyzer: Analyzer, watchlist: Callable[[], Matcher | None], sink: EventSink,
                   health: Health, tracker: Tracker | None = None, policy: DecisionPolicy | None = None,
                   quality: QualityThresholds = DEFAULT_QUALITY, lossless: bool = False,
                   governor: ThermalGovernor | None = None) -> Pipeline:
    """The capture → vision → match → decision loop over `source` with `analyzer`'s models; `watchlist()` gives
    the live watchlist (or None), `sink(decision, frame, watchlist, chips)` takes each decision."""
    return Pipeline(source=source, detector=analyzer.detector, embedder=analyzer.embedder,
                    tracker=tracker or Tracker(), policy=policy or DecisionPolicy(PolicyConfig(k=2, n=3)),
                    matches=MatchContext(watchlist), sink=sink, health=health, quality=quality, lossless=lossless,
                    embed_face=analyzer.embed, governor=governor)


def thermal_governor(c: Config) -> ThermalGovernor | None:
    """config.thermal → a `ThermalGovernor`, or None when disabled."""
    from edge.device.thermal import ThermalGovernor

    t = c.thermal
    if not t.enabled:
        return None
    return ThermalGovernor(hot_c=t.hot_c, cool_c=t.cool_c, throttled_every=t.throttled_detect_every)


def event_writer(c: Config, outbox: Outbox, audit: AuditLog, embedder_id: str,
                 health: Health | None = None) -> EventWriter:
    """Decisions → audit record + outbox row; with the operator's evidence key provisioned (`events`), each event
    carries the track's best face chip(s) sealed to it — the only image that ever leaves the device. A full disk
    is met by the writer's in-memory queue and the state directory's space reserve (written here)."""
    from edge.device.event_writer import EventWriter
    from edge.device.space_reserve import SpaceReserve

    thumbnail_key, path = None, c.events.evidence_key()
    if path is not None:
        thumbnail_key = keys.load_public_key(path, "device")  # X25519
        log.warning("evidence is on (events.thumbnails): each match event carries the track's best face chip(s) as "
                    "JPEG sealed to the operator's key %s (%s); `events.thumbnails: false` turns it off",
                    keys.key_id(thumbnail_key), path)
    else:
        log.warning("evidence is off: match events carry no face (%s), so reviewers see none",
                    "events.thumbnails: false" if c.events.thumbnails is False else
                    f"no operator evidence key at {c.events.operator_thumbnail_key}"
                    if c.events.operator_thumbnail_key else "no events.operator_thumbnail_key")
    reserve = SpaceReserve(c.device.state_dir / "space.reserve")
    if not reserve.restore():
        log.warning("no room for the %d MiB space reserve in %s: a full disk will hold events in memory at once",
                    reserve.size // 2**20, c.device.state_dir)
    return EventWriter(c.device.id, outbox, audit, embedder_id, thumbnail_key=thumbnail_key, health=health,
                       reserve=reserve)


# -------------------------------------------------------------------------------------------------- the device

def private_state_dir(c: Config) -> Path:
    """config.device.state_dir and its `incoming/`, created mode 0700 (keys and subject ids are the device's)."""
    state = d = c.device.state_dir
    try:
        for d in (state, state / "incoming"):
            private_dir(d)
    except OSError as err:
        raise EdgeError(f"state directory {d} cannot be created or made private (0700): {err.strerror or err}"
                        " (device.state_dir)") from None
    return state


def file_sha256(path: Path | None) -> str | None:
    """Hex sha256 of a file, or None when there is none or it cannot be read (for the audit log)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


@dataclass
class Device:
    """Every component of a running device, built and wired but not started (see `build`)."""

    config: Config
    health: Health
    analyzer: FaceAnalyzer
    store: InstalledWatchlist
    audit: AuditLog
    outbox: Outbox
    writer: EventWriter
    tracker: Tracker
    policy: DecisionPolicy
    source: FrameSource
    pipeline: Pipeline
    topics: Topics
    control: Control
    client: MqttClient | None = None  # None: mqtt.enabled is false
    sealer: Sealer | None = None  # None: the audit log is hash-chained only


def build(c: Config, audit_factory: Callable[[Path], AuditLog],
          start_record: Callable[[AuditLog, InstalledWatchlist], None], stop_event: threading.Event) -> Device:
    """Build the device of config `c`. `audit_factory(path)` opens the audit log; `start_record(audit, store)`
    writes its opening records; the control worker stops on `stop_event`. A half-built device closes its files."""
    from edge.device.control import Control
    from edge.messaging.outbox import Outbox
    from edge.messaging.topics import Topics

    state = private_state_dir(c)
    health = Health()
    analyzer = FaceAnalyzer.create(vision_options(c))
    store = watchlist_store(c, analyzer.embedder_id, analyzer.embedder_info.sha256, watchlist_loader)
    audit = audit_factory(state / "audit.log")
    outbox: Outbox | None = None
    try:
        start_record(audit, store)
        outbox = Outbox(state / "outbox.db", max_events=c.events.outbox_max_events,
                        max_age_s=c.events.outbox_max_age_days * 86400)
        from edge.device.event_writer import reconcile

        reconcile(outbox, audit)  # before anything is published: every stored event has its audit record
        writer = event_writer(c, outbox, audit, analyzer.embedder_id, health)
        tracker = apply_tracking(Tracker(), c)
        policy = DecisionPolicy(c.policy)
        source = frame_source(c)

        def live_watchlist() -> Matcher | None:
            live, _ = store.current()
            if live is not None and c.watchlist.stale_after_expiry == "stop" and store.state().state is Serving.STALE:
                return None
            return live

        governor = thermal_governor(c)
        pipeline = build_pipeline(source, analyzer, live_watchlist, writer, health, tracker=tracker, policy=policy,
                                  quality=quality_thresholds(c), governor=governor)
        health.watch("outbox_depth", outbox.depth)
        health.watch("event_queue", pipeline.events.qsize)
        health.watch("watchlist_version", lambda: store.state().version)
        topics = Topics(c.device.id, c.device.topic_prefix)
        client: MqttClient | None = None
        publisher: EventPublisher | None = None
        sync: WatchlistSync | None = None
        if c.mqtt.enabled:
            client, publisher, sync = _messaging(c, topics, outbox, store, audit, state)
            health.watch("mqtt_connected", lambda: client.connected)
        sealer = audit_sealer(state)
        control = Control(config=c, topics=topics, health=health, pipeline=pipeline, store=store, outbox=outbox,
                          audit=audit, client=client, publisher=publisher, sync=sync, stop=stop_event, sealer=sealer,
                          writer=writer)
    except BaseException:
        if outbox is not None:
            outbox.close()
        audit.close()
        raise
    return Device(config=c, health=health, analyzer=analyzer, store=store, audit=audit, outbox=outbox, writer=writer,
                  tracker=tracker, policy=policy, source=source, pipeline=pipeline, topics=topics, control=control,
                  client=client, sealer=sealer)


def audit_sealer(state: Path) -> Sealer | None:
    """The audit log's forward-secure sealer from `<state>/audit.seal` (put there from `edge device provision`), or
    None — then the log is hash-chained only, and the device says so at every start."""
    from edge.audit import last_of
    from edge.audit_seal import SEAL_KIND, SealError, Sealer

    path = state / "audit.seal"
    if not path.exists():
        log.warning("no %s: the audit log is not sealed (provision the device with `edge device provision` and "
                    "install its audit.seal to protect the log's past)", path)
        return None
    try:  # a crash between a seal and the key's evolution: the key evolves now, so the next seal verifies
        sealer = Sealer(path)
        sealer.resume(last_of(state / "audit.log", SEAL_KIND) if (state / "audit.log").exists() else None)
    except SealError as err:  # the key (a link, unreadable) or the log was replaced: run (the camera matters),
        # unsealed, and say so
        log.error("the audit log is NOT sealed this run: %s (edge doctor shows it; re-provision the seal key)", err)
        return None
    return sealer


def _messaging(c: Config, topics: Topics, outbox: Outbox, store: WatchlistStore[Watchlist], audit: AuditLog,
               state: Path) -> tuple[MqttClient, EventPublisher, WatchlistSync]:
    """The MQTT client (last will: offline), the event publisher and the watchlist sync, with installs audited."""
    from edge.messaging.delivery import EventPublisher
    from edge.messaging.mqtt import MqttClient
    from edge.messaging.payloads import encode_status
    from edge.messaging.sync import WatchlistSync
    from edge.messaging.topics import watchlist_filters

    settings = mqtt_settings(c, will_topic=topics.status, will_payload=encode_status("offline", {}))
    client = MqttClient(settings, [(topics.events_ack, 1)]
                        + [(t, 1) for t in watchlist_filters(c.device.id, c.device.topic_prefix)])

    def audit_install(result: InstallResult, sha256: str) -> None:
        if result.reason is not InstallReason.ALREADY_INSTALLED:
            kind = "watchlist_wipe" if result.reason is InstallReason.WIPED else "watchlist_install"
            audit.append(kind if result.ok else "watchlist_reject",
                         {"version": result.version, "reason": result.reason, "message": result.message,
                          "sha256": sha256})

    sync = WatchlistSync(store, client, c.device.id, state / "incoming", c.device.topic_prefix,
                         on_result=audit_install, background=True,
                         max_bundle_bytes=c.watchlist.max_bundle_mb * 2**20)
    return client, EventPublisher(outbox, client, topics), sync
