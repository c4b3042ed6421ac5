"""The device's seams: what the pipeline and the composition root (`edge.device.wiring`) need of the vision stack
and of the watchlist, as Protocols. The real parts fit them structurally — `FaceDetector`, `FaceEmbedder` and
`FaceAnalyzer` (edge.vision), `Watchlist` and `WatchlistStore` (edge.watchlist) — and so do the tests' fakes.

The frame source's protocol lives with the sources: `edge.device.capture.base.FrameSource`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edge.install_state import InstalledState
from edge.types import Decision, Detection, Face, Frame, Match


class Detector(Protocol):
    """Finds faces (`edge.vision.detector.FaceDetector`)."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """The faces in an (H, W, 3) uint8 RGB image, best score first; boxes and keypoints in its pixels."""
        ...


class Embedder(Protocol):
    """Turns an aligned face chip into an embedding (`edge.vision.embedder.FaceEmbedder`)."""

    @property
    def chip_size(self) -> int:
        """Side of the square chip it takes, pixels."""
        ...

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """(chip_size, chip_size, 3) uint8 RGB → (D,) float32 unit vector."""
        ...


class Analyzer(Protocol):
    """The vision stack a pipeline runs (`edge.vision.analyzer.FaceAnalyzer`)."""

    @property
    def detector(self) -> Detector: ...

    @property
    def embedder(self) -> Embedder: ...

    def embed(self, rgb: np.ndarray, detection: Detection) -> Face:
        """One detected face aligned the embedder's way and embedded (with the fused second embedding, if any)."""
        ...


class Matcher(Protocol):
    """A loaded watchlist (`edge.watchlist.device.matcher.Watchlist`): read-only, shared by threads."""

    def match(self, embedding: np.ndarray, *, embedding2: np.ndarray | None = None) -> Match:
        """The evidence for one probe (a unit vector; embedding2: its fused second embedding, or None)."""
        ...


class InstalledWatchlist(Protocol):
    """The device's installed watchlist as the running device uses it (`edge.watchlist.device.store.WatchlistStore`)."""

    def start(self) -> None:
        """(Re-)load the persisted bundle from disk, re-verifying it; never raises for a bad or missing file."""
        ...

    def current(self) -> tuple[Matcher | None, dict[str, Any] | None]:
        """The live watchlist and its manifest, or (None, None) when none is served."""
        ...

    def state(self) -> InstalledState:
        """For status and audit: what is served (ok, stale, none or wiped), the version, its expiry…"""
        ...


#: Takes each decision: sink(decision, frame, watchlist that matched, the track's best chips, best first).
EventSink = Callable[[Decision, Frame, Matcher, Sequence[np.ndarray]], object]
