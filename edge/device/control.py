"""The control worker (thread `edge-control`): MQTT inbox → event acks and watchlist sync (routed by
`parse_topic`), the outbox pump, the retained status heartbeat, the periodic health line and the systemd
watchdog — the last only while the inference thread makes progress.

`step(now)` is one pass and takes the clock as an argument; `run()` loops it every 50 ms until `stop` is set.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from edge.device.health import Heartbeat
from edge.device.sdnotify import sd_notify
from edge.device.thermal import read_temperature_c
from edge.messaging.payloads import PayloadError, encode_status
from edge.messaging.topics import TopicError

log = logging.getLogger("edge.device.control")

#: Seconds of inference-thread silence after which the watchdog is no longer fed (systemd then restarts us).
STALL_S = 5.0
#: Seconds between watchdog pings while the pipeline progresses.
PING_S = 1.0
#: Seconds between retries of the events a refusing disk left in memory.
RETRY_S = 1.0


class Control:
    """One device's control worker. client / publisher / sync are None when MQTT is disabled.

    config: the running `Config` (its `mqtt.status_interval_s` and `health.log_interval_s`, re-read each pass so
    a reload applies). pipeline: anything with `last_progress` (monotonic seconds) and `slot.dropped`.
    clock: monotonic seconds (injected by tests).
    """

    def __init__(self, config: Any, topics: Any, health: Any, pipeline: Any, store: Any, outbox: Any, audit: Any,
                 client: Any = None, publisher: Any = None, sync: Any = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic, notify: Callable[[str], bool] = sd_notify,
                 sealer: Any = None, writer: Any = None) -> None:
        self.writer = writer  # edge.device.event_writer.EventWriter: its held events are retried every step
        self.sealer = sealer  # edge.audit_seal.Sealer, or None: the audit log is hash-chained only
        self.config, self.topics, self.health, self.pipeline = config, topics, health, pipeline
        self.store, self.outbox, self.audit = store, outbox, audit
        self.client, self.publisher, self.sync = client, publisher, sync
        self.stop_event = stop or threading.Event()
        self.clock, self.notify = clock, notify
        self._thread: threading.Thread | None = None
        self._was_up = False
        self._heartbeat: Heartbeat | None = None
        now = clock()
        self._next_ping, self._next_log, self._next_thermal = now, now + config.health.log_interval_s, now
        self._next_retry = now

    # --- what the device reports ----------------------------------------------------------------------------------
    def status(self) -> dict:
        """The retained status's health figures: counters, stages, watchlist state, outbox depth, audit head, and
        the wall-clock time of the report (UTC, for the operator's "last seen")."""
        return {**self.health.snapshot(), "reported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "watchlist": self.store.state().to_dict(), "outbox_depth": self.outbox.depth(),
                "audit_head": self.audit.head(), "audit_seal": self.sealer.last if self.sealer else None}

    def summary(self) -> str:
        """The periodic one-line health log."""
        s, wl = self.health.snapshot(), self.store.state()
        n, ms = s["counters"], s["stage_ms"]
        stages = ", ".join(f"{k} p50 {v['p50']:.1f} ms" for k, v in ms.items() if k in ("detect", "embed", "match"))
        mqtt = "" if self.client is None else f", mqtt {'up' if self.client.connected else 'down'}"
        return (f"health: {s['fps']:.1f} fps, frames {n.get('frames_captured', 0)} (dropped "
                f"{self.pipeline.slot.dropped}), faces {n.get('faces', 0)}, events {n.get('events', 0)}, outbox "
                f"{self.outbox.depth()}, watchlist {'v%s ' % wl.version if wl.version else ''}{wl.state}"
                f"{mqtt}" + (f"; {stages}" if stages else ""))

    def seal(self) -> None:
        """Seal the audit log's head (forward-secure; `edge.audit_seal`) when the device has a sealing key."""
        if self.sealer is not None:
            self.sealer.seal(self.audit)

    def publish_status(self, state: str = "online") -> None:
        """Seal the audit log, then publish the retained status (online with health and the seal's head, or
        offline)."""
        if state == "online":
            try:
                self.seal()
            except Exception as err:  # noqa: BLE001 - a full disk must not silence the heartbeat
                log.warning("audit log not sealed: %s", err)
                self.health.inc("audit_seal_errors")
        try:
            self.client.publish(self.topics.status, encode_status(state, self.status() if state == "online" else {}),
                                1, True)
        except PayloadError as err:
            log.warning("status not published: %s", err)

    # --- one pass -------------------------------------------------------------------------------------------------
    def route(self, topic: str, payload: bytes) -> None:
        """Hand one inbound message to its handler: acks to the publisher, watchlist topics to the sync."""
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            self.health.inc("control_foreign_topic")
            return
        if parsed.group is not None:
            self.sync.handle(topic, payload)  # a group subtree the broker lets this device read
        elif parsed.device_id != self.topics.device_id:
            self.health.inc("control_foreign_topic")
        elif parsed.kind == "events_ack":
            self.publisher.on_ack(payload)
        elif parsed.kind.startswith("watchlist_") and parsed.kind != "watchlist_state":
            self.sync.handle(topic, payload)

    def thermal_step(self, governor: Any, temperature_c: float | None) -> None:
        """Report the CPU temperature (°C) and let the governor throttle or restore detection; log each change."""
        if temperature_c is not None:
            self.health.set("cpu_temp_c", round(temperature_c, 1))
        if governor.update(temperature_c):
            self.health.inc("thermal_throttle_on" if governor.throttled else "thermal_throttle_off")
            if governor.throttled:
                log.warning("CPU at %.1f °C ≥ %.1f °C: detecting on 1 frame in %d until it cools to %.1f °C",
                            temperature_c, governor.hot_c, governor.throttled_every, governor.cool_c)
            else:
                log.info("CPU at %.1f °C ≤ %.1f °C: detecting on every frame again", temperature_c, governor.cool_c)
        self.health.set("thermal_throttled", int(governor.throttled))

    def step(self, now: float) -> None:
        """One pass at monotonic time `now` (seconds): retry held events, drain the inbox, sync, pump, status, log,
        watchdog."""
        if self.writer is not None and now >= self._next_retry:
            self.writer.retry()  # events the disk refused, in order (and the space reserve, once there is room)
            self._next_retry = now + RETRY_S
        if self.client is not None:
            while True:
                try:
                    msg = self.client.inbox.get_nowait()
                except queue.Empty:
                    break
                self.route(msg.topic, msg.payload)
            up = self.client.connected
            if up and not self._was_up:
                self.sync.report()
            self.sync.tick(now)
            self.publisher.pump()
            if self._heartbeat is None:
                self._heartbeat = Heartbeat(self.config.mqtt.status_interval_s)
            if up and (not self._was_up or self._heartbeat.due(now)):
                self.publish_status()
            self._was_up = up
        governor = getattr(self.pipeline, "governor", None)
        if governor is not None and now >= self._next_thermal:
            self.thermal_step(governor, read_temperature_c(self.config.thermal.zones))
            self._next_thermal = now + self.config.thermal.poll_interval_s
        if now >= self._next_log:
            log.info("%s", self.summary())
            self._next_log = now + self.config.health.log_interval_s
        if now >= self._next_ping and now - self.pipeline.last_progress < STALL_S:
            self.notify("WATCHDOG=1")  # only while the inference thread makes progress
            self._next_ping = now + PING_S

    def run(self) -> None:
        """Loop `step` every 50 ms until `stop` is set; one failing pass is logged and counted, never fatal."""
        while not self.stop_event.is_set():
            try:
                self.step(self.clock())
            except Exception:  # noqa: BLE001 - the control thread must outlive one bad message or a full disk
                log.exception("control loop step failed")
                self.health.inc("control_errors")
            self.stop_event.wait(0.05)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the MQTT client and the control thread."""
        if self.client is not None:
            self.client.start()
        self._thread = threading.Thread(target=self.run, name="edge-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Join the thread (within `timeout` s), flush what is due, publish offline and disconnect."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
        if self.client is not None:
            try:
                self.sync.close(wait=True)  # a delta being applied finishes (or the kill leaves the old version)
                self.publisher.pump()
                self.publish_status("offline")
                self.client.stop()
            except Exception:  # noqa: BLE001 - shutting down: log and go on
                log.warning("MQTT shutdown failed", exc_info=True)
