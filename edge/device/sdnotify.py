"""The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram per message to `$NOTIFY_SOCKET`.

`$NOTIFY_SOCKET` is a filesystem path or, starting with `@`, a name in the Linux abstract namespace. Outside
systemd (variable unset) every call is a no-op; a send error is logged at debug level and never raised, so the
appliance cannot die of its supervisor's socket. Messages used: READY=1, STATUS=…, WATCHDOG=1, STOPPING=1.

Watchdog: with `WatchdogSec=` systemd sets `$WATCHDOG_USEC` (and `$WATCHDOG_PID`); ping at least every half of
it (`watchdog_interval()`), and only while the work makes progress — `ProgressWatchdog` gates the ping on a
progress timestamp (the pipeline's `last_progress`), so a stalled inference thread lets systemd restart the unit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

log = logging.getLogger("edge.device.sdnotify")


def _address(addr: str) -> str:
    return "\0" + addr[1:] if addr.startswith("@") else addr


class Notifier:
    """Sends sd_notify messages to one socket address; `Notifier(None)` (or from_env() outside systemd) does
    nothing."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r (not an integer)", raw)
            if pid and pid.isdigit() and int(pid) != os.getpid():
                usec = None  # the watchdog is meant for another process (sd_watchdog_enabled(3))
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one message (newline-separated KEY=VALUE lines); True when it was sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(_address(self.address))
                s.sendall(message.encode())
            return True
        except OSError as err:
            log.debug("sd_notify %r failed: %s", message, err)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when no watchdog is configured."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of `$WATCHDOG_USEC` in seconds, or None when unset/invalid."""
    return Notifier.from_env(environ).watchdog_interval()


def sd_notify(message: str) -> bool:
    """One message to the socket named by the current `$NOTIFY_SOCKET`; a no-op (False) outside systemd."""
    return Notifier.from_env().notify(message)


class ProgressWatchdog:
    """Pings WATCHDOG=1 at most every `interval` seconds and only while `progress()` (a time.monotonic() stamp,
    e.g. `lambda: pipeline.last_progress`) is younger than `stall_s`. Call `tick()` from a loop."""

    def __init__(self, notifier: Notifier, progress: Callable[[], float], stall_s: float = 5.0,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        wd = notifier.watchdog_interval()
        self.notifier, self.progress, self.stall_s, self.clock = notifier, progress, stall_s, clock
        self.interval = interval if interval is not None else min(1.0, wd) if wd else 1.0
        self._next = clock()

    def tick(self, now: float | None = None) -> bool:
        """True when a ping was sent."""
        now = self.clock() if now is None else now
        if now < self._next or now - self.progress() >= self.stall_s:
            return False
        self._next = now + self.interval
        return self.notifier.watchdog()
