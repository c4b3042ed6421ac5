"""`edge run`: the appliance's lifecycle (DESIGN §1, §7). The components come from `edge.device.wiring`, the
control thread's work is `edge.device.control`; here: start in order, stop in reverse order within a deadline,
signals (SIGTERM/SIGINT stop, SIGHUP reloads what can change without dropping the camera), the audit trail of
start, config and stop.

Threads: the pipeline's own (capture, inference, events); `edge-control` (MQTT inbox → ack / watchlist sync,
outbox pump, retained status heartbeat, health log line, systemd watchdog); the main thread waits in `run()`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.audit import AuditLog
from edge.config import Config, ConfigError, load_config
from edge.device import wiring
from edge.device.health import Health
from edge.device.pipeline import Pipeline
from edge.device.policy import DecisionPolicy
from edge.device.ports import InstalledWatchlist
from edge.device.sdnotify import sd_notify

if TYPE_CHECKING:
    from edge.device.control import Control
    from edge.messaging.outbox import Outbox

log = logging.getLogger("edge.device.app")

#: Sections `reload` applies to the running pipeline; the others need a restart.
RELOADABLE = ("quality", "tracking", "policy", "health")


class App:
    """The appliance. `config_path` (optional) is the file `config` came from: hashed into the audit log, re-read
    on SIGHUP. `device`: its components (`wiring.Device`); health, pipeline, store, outbox, audit, policy and
    control are reachable on the app too (read-only, for tests)."""

    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.config, self.config_path = config, Path(config_path) if config_path else None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._stopping = threading.Lock()
        self._stopped = threading.Event()
        self._started = False

        def opening_records(audit: AuditLog, store: InstalledWatchlist) -> None:
            audit.append("start", {"device_id": config.device.id, "version": __version__, "pid": os.getpid(),
                                   "watchlist": store.state().to_dict()})
            audit.append("config", {"path": str(self.config_path) if self.config_path else None,
                                    "sha256": wiring.file_sha256(self.config_path), "reload": False})

        self.device = wiring.build(config, AuditLog, opening_records, self._stop)

    # --- the device's components, as the app's (no copies: each is `self.device`'s) ---------------------------
    @property
    def health(self) -> Health:
        return self.device.health

    @property
    def pipeline(self) -> Pipeline:
        return self.device.pipeline

    @property
    def store(self) -> InstalledWatchlist:
        return self.device.store

    @property
    def outbox(self) -> Outbox:
        return self.device.outbox

    @property
    def audit(self) -> AuditLog:
        return self.device.audit

    @property
    def policy(self) -> DecisionPolicy:
        return self.device.policy

    @property
    def control(self) -> Control:
        return self.device.control

    def status(self) -> dict:
        """The health figures of the retained status (`Control.status`)."""
        return self.control.status()

    def summary(self) -> str:
        """The periodic health log line (`Control.summary`)."""
        return self.control.summary()

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline, the MQTT client and the control thread (returns at once)."""
        self.pipeline.start()  # opens the source: CameraError when it cannot
        self._started = True
        self.control.start()
        log.info("running: device %s, %s, watchlist %s", self.config.device.id, self.device.source.describe(),
                 self.store.state().state)
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
            for signum, old in handlers.items():
                signal.signal(signum, old)
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
        self.pipeline.quality = wiring.quality_thresholds(new)
        wiring.apply_tracking(self.device.tracker, new)
        self.policy.config = new.policy
        self.config = self.config.model_copy(update={s: getattr(new, s) for s in RELOADABLE})
        self.control.config = self.config
        self.store.start()
        self.audit.append("config", {"path": str(self.config_path), "sha256": wiring.file_sha256(self.config_path),
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
            self.control.stop(deadline - time.monotonic() - 0.5)
            self.audit.append("stop", {"frames": self.health.counter("frames_captured"),
                                       "events": self.health.counter("events"), "outbox_depth": self.outbox.depth()})
            try:
                self.control.seal()  # the stop record, sealed: what happened until now can no longer be rewritten
            except Exception:  # noqa: BLE001 - shutting down: log and go on
                log.warning("sealing the audit log at stop failed", exc_info=True)
            self.outbox.close()
            self.audit.close()
            log.info("stopped")
        finally:
            self._stopped.set()
