"""What every frame source offers: the `FrameSource` protocol, its error, its counters and a pacing clock.

A source is opened once, read from one capture thread, and may be closed (or stopped) from any other thread:
a `read()` that is waiting (for a reconnect, for the next paced frame) returns None promptly after `close()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from edge.errors import EdgeError
from edge.types import Frame

#: The pacing modes of finite sources: "realtime" delivers at the source's frame rate, "fast" as fast as decoding.
PACES: tuple[str, ...] = ("realtime", "fast")


class CameraError(EdgeError):
    """A frame source cannot be opened or has failed for good; the message names the source and the cause."""


@runtime_checkable
class FrameSource(Protocol):
    """A camera, stream, video file or image folder that yields RGB `Frame`s.

    fps: nominal frame rate in frames per second, or None when unknown.
    """

    fps: float | None

    def open(self) -> None:
        """Acquire the device or file; raises `CameraError` with a readable message if it cannot be opened."""

    def read(self) -> Frame | None:
        """Block until the next frame; None at the end of a finite source or after `close()`."""

    def close(self) -> None:
        """Release the device; safe to call twice and from another thread than the reader's."""

    def describe(self) -> str:
        """A short human name for messages and health, e.g. "camera /dev/video0" (no credentials)."""


@dataclass
class SourceStats:
    """Counters of one source, read by health reporting.

    frames: frames delivered. reconnects: successful re-opens after a failure. read_failures: reads that returned no
    frame on a live source. skipped: unreadable items skipped (replay). last_error: the latest failure, or "".
    """

    frames: int = 0
    reconnects: int = 0
    read_failures: int = 0
    skipped: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        """JSON-ready copy."""
        return asdict(self)


def check_pace(pace: str) -> str:
    """Return `pace` if it is a known pacing mode, else raise a CameraError listing them."""
    if pace not in PACES:
        raise CameraError(f"unknown pace {pace!r}: choose one of {', '.join(PACES)}")
    return pace


class Pacer:
    """Spaces deliveries 1/fps seconds apart on the monotonic clock, without bursting to catch up after a stall."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self._due: float | None = None

    def reset(self) -> None:
        """Forget the schedule: the next `wait` returns at once (e.g. after a reconnect or a rewind)."""
        self._due = None

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the next frame is due; False if `stop` was set meanwhile."""
        now = time.monotonic()
        if self._due is None or self.period == 0.0:
            self._due = now
        elif self._due > now:
            if stop.wait(self._due - now):
                return False
        elif now - self._due > self.period:
            self._due = now  # we fell behind by more than a frame: restart the schedule rather than burst
        self._due += self.period
        return not stop.is_set()


class SourceBase:
    """Shared plumbing: stats, the stop event, context-manager use and frame numbering."""

    fps: float | None = None

    def __init__(self) -> None:
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._next_index = 0

    def describe(self) -> str:  # pragma: no cover - every source overrides it
        return type(self).__name__

    def stop(self) -> None:
        """Ask a blocked or future `read()` to return None promptly; resources are released by `close()`."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True after `stop()` or `close()`."""
        return self._stop.is_set()

    def _make_frame(self, rgb) -> Frame:
        frame = Frame(rgb=rgb, index=self._next_index, captured_at=time.time(), monotonic=time.monotonic())
        self._next_index += 1
        self.stats.frames += 1
        return frame

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
