"""Health figures for the status topic and `edge bench`: counters, gauges, per-stage latency, rates, temperature, RSS.

Every worker holds the same `Health` and reports into it from its own thread (one lock, O(1) per call except
`snapshot`). Drops are counters (`inc("drops.capture")`), queue depths gauges (`set(...)` or `watch(name, fn)`),
stage timings `observe(stage, seconds)` into a ring of the last `latency_samples` values, and `tick("frames")`
feeds a rate over the last `window_s` seconds. `snapshot()` is JSON-ready; a `Heartbeat` says when to publish it.
"""

from __future__ import annotations

import glob
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

THERMAL_GLOB = "/sys/class/thermal/thermal_zone*/temp"
PROC_STATUS = "/proc/self/status"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between ranks (numpy's default); nan when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cpu_temperature_c(pattern: str = THERMAL_GLOB) -> float | None:
    """The hottest readable thermal zone in °C (sysfs gives millidegrees), or None where none can be read.

    On a Pi there is one zone (the SoC); on PCs the hottest zone is the one that throttles first.
    """
    temps = []
    for path in glob.glob(pattern):
        try:
            with open(path) as fh:
                value = int(fh.read().strip()) / 1000
        except (OSError, ValueError):  # zones of powered-down devices fail with EIO/ENODATA
            continue
        if -40 <= value <= 150:  # some drivers report placeholders such as -273 °C or 255 °C
            temps.append(value)
    return round(max(temps), 1) if temps else None


def rss_mb(status_path: str = PROC_STATUS) -> float | None:
    """Resident set size of this process in MiB from /proc/self/status (VmRSS), None where it is unavailable."""
    try:
        with open(status_path) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Rate:
    """Events per second over a sliding window of `window_s` seconds (shorter while the meter is younger)."""

    def __init__(self, window_s: float, started: float) -> None:
        self.window_s, self.started = window_s, started
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, now: float, n: int) -> None:
        self.events.append((now, n))
        self.total += n
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.window_s:
            self.total -= self.events.popleft()[1]

    def per_second(self, now: float) -> float:
        self._expire(now)
        span = min(self.window_s, now - self.started)
        return self.total / span if span > 0 else 0.0


class Health:
    """Thread-safe health figures of one pipeline.

    clock: monotonic seconds (tests inject one). window_s: span of the rate meters, seconds. latency_samples:
    how many recent `observe` values per stage the percentiles are computed over. thermal_glob / proc_status:
    where temperature and RSS are read from (tests point them elsewhere).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = 5.0,
                 latency_samples: int = 1000, thermal_glob: str = THERMAL_GLOB,
                 proc_status: str = PROC_STATUS) -> None:
        if window_s <= 0 or latency_samples < 1:
            raise ValueError(f"window_s and latency_samples must be positive, got {window_s}, {latency_samples}")
        self._clock = clock
        self._started = clock()
        self.window_s = window_s
        self.latency_samples = latency_samples
        self.thermal_glob, self.proc_status = thermal_glob, proc_status
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, Any] = {}
        self._watched: dict[str, Callable[[], Any]] = {}
        self._latency: dict[str, deque[float]] = {}
        self._rates: dict[str, _Rate] = {}

    def inc(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name` (created at 0)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def set(self, name: str, value: Any) -> None:
        """Set gauge `name` to a JSON-ready value (a queue depth, a watchlist version, a state string)."""
        with self._lock:
            self._gauges[name] = value

    def watch(self, name: str, read: Callable[[], Any]) -> None:
        """Gauge `name` read by calling `read()` at each snapshot (e.g. `queue.qsize`); its errors give None."""
        with self._lock:
            self._watched[name] = read

    def observe(self, stage: str, seconds: float) -> None:
        """Record one duration of `stage` in seconds; only the last `latency_samples` are kept."""
        with self._lock:
            ring = self._latency.get(stage)
            if ring is None:
                ring = self._latency[stage] = deque(maxlen=self.latency_samples)
            ring.append(seconds)

    def time(self, stage: str) -> "_Timer":
        """Context manager that observes the duration of its body under `stage`."""
        return _Timer(self, stage)

    def tick(self, name: str = "frames", n: int = 1) -> None:
        """Count `n` events for the rate meter `name` ("frames" is the fps)."""
        with self._lock:
            now = self._clock()
            meter = self._rates.get(name)
            if meter is None:
                meter = self._rates[name] = _Rate(self.window_s, self._started)
            meter.add(now, n)

    def rate(self, name: str = "frames") -> float:
        """Events per second of meter `name` over the last `window_s` seconds (0.0 if never ticked)."""
        with self._lock:
            meter = self._rates.get(name)
            return meter.per_second(self._clock()) if meter else 0.0

    @property
    def fps(self) -> float:
        return self.rate("frames")

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def stage_ms(self) -> dict[str, dict[str, float | int]]:
        """{stage: {p50, p99, n}} in milliseconds over each stage's recent samples."""
        with self._lock:
            rings = {stage: list(ring) for stage, ring in self._latency.items()}
        return {stage: {"p50": round(percentile(xs, 50) * 1000, 3), "p99": round(percentile(xs, 99) * 1000, 3),
                        "n": len(xs)} for stage, xs in rings.items() if xs}

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready: fps, rates, counters, gauges, stage_ms, temperature_c, rss_mb, uptime_s."""
        with self._lock:
            now = self._clock()
            rates = {name: round(m.per_second(now), 2) for name, m in self._rates.items()}
            counters, gauges, watched = dict(self._counters), dict(self._gauges), dict(self._watched)
        for name, read in watched.items():  # outside the lock: `read` may take other locks
            try:
                gauges[name] = read()
            except Exception as err:  # noqa: BLE001 - a broken gauge must not break the status report
                log.warning("health gauge %s failed: %s", name, err)
                gauges[name] = None
        return {"fps": rates.get("frames", 0.0), "rates": rates, "counters": counters, "gauges": gauges,
                "stage_ms": self.stage_ms(), "temperature_c": cpu_temperature_c(self.thermal_glob),
                "rss_mb": rss_mb(self.proc_status), "uptime_s": round(now - self._started, 1)}


class _Timer:
    def __init__(self, health: Health, stage: str) -> None:
        self.health, self.stage = health, stage

    def __enter__(self) -> "_Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.health.observe(self.stage, time.perf_counter() - self.t0)


class Heartbeat:
    """Says when the next status is due: at the first call, then every `interval_s` seconds.

    `due(now)` returns True at most once per interval and then counts the interval from `now`; a clock that
    jumps backwards makes it due at once rather than silent for a long time.
    """

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is None or now - self._last >= self.interval_s or now < self._last:
            self._last = now
            return True
        return False
