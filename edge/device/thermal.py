"""CPU temperature and the thermal governor: a body camera in a pocket must not cook its battery.

`read_temperature_c` takes the hottest of the kernel's thermal zones (`/sys/class/thermal/thermal_zone*/temp`,
millidegrees Celsius; Raspberry Pi: zone 0 is the SoC, Jetson: several zones). `ThermalGovernor` is pure logic with
hysteresis: above `hot_c` it runs detection on only every `throttled_every`-th frame (tracks keep their ids across the
gaps: `tracking.max_age_s` bridges them), below `cool_c` it restores every frame. Each change is logged and counted
by the caller (`edge.device.control`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

#: A thermal zone's `temp` file is a short decimal number; anything longer is not one.
_MAX_ZONE_BYTES = 32


def read_temperature_c(pattern: str) -> float | None:
    """The hottest zone matching `pattern`, degrees Celsius; None when no zone can be read (no sensor, a VM)."""
    hottest = None
    for path in sorted(glob.glob(pattern))[:64]:
        try:
            raw = Path(path).read_bytes()[:_MAX_ZONE_BYTES]
            value = int(raw.strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -60.0 <= value <= 200.0 and (hottest is None or value > hottest):
            hottest = value
    return hottest


@dataclass
class ThermalGovernor:
    """hot_c / cool_c: degrees Celsius where throttling starts / ends (cool_c < hot_c). throttled_every: while
    throttled, detect on one frame in this many (≥ 2)."""

    hot_c: float = 80.0
    cool_c: float = 70.0
    throttled_every: int = 3
    throttled: bool = False
    changes: int = 0
    skipped: int = 0
    _count: int = 0

    def __post_init__(self) -> None:
        if not self.cool_c < self.hot_c:
            raise ValueError(f"cool_c ({self.cool_c:g}) must be below hot_c ({self.hot_c:g})")
        if self.throttled_every < 2:
            raise ValueError(f"throttled_every must be ≥ 2, got {self.throttled_every}")

    def update(self, temperature_c: float | None) -> bool:
        """Feed one reading (None: unknown, nothing changes); True when the state changed."""
        if temperature_c is None:
            return False
        if not self.throttled and temperature_c >= self.hot_c:
            self.throttled = True
        elif self.throttled and temperature_c <= self.cool_c:
            self.throttled = False
        else:
            return False
        self.changes += 1
        self._count = 0
        return True

    def should_detect(self) -> bool:
        """Called once per frame by the inference thread: False for the frames a throttled device skips."""
        if not self.throttled:
            return True
        self._count += 1
        if self._count % self.throttled_every == 1 % self.throttled_every:
            return True
        self.skipped += 1
        return False
