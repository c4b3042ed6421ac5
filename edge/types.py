"""The vocabulary that crosses modules: what the stages hand each other (numpy inside, JSON out).

Frame → Detection → Face (vision) → Track (tracking) → Candidate / Match (a watchlist search) → Decision (the
policy) → PendingEvent (the pipeline's event queue) → MatchEvent (the outbox and the wire).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: BlazeFace keypoint order (the subject's right eye appears on the image's left).
KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion",
)


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image.

    rgb: (H, W, 3) uint8 RGB. index: frame counter of its source (from 0). captured_at: wall-clock Unix seconds.
    monotonic: `time.monotonic()` seconds at capture (for latencies and pacing).
    """

    rgb: np.ndarray
    index: int
    captured_at: float
    monotonic: float


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in one image.

    box: (x0, y0, x1, y1) in image pixels (may extend past the border for faces cut by it).
    score: detector confidence in [0, 1].
    keypoints: (6, 2) float32 image pixels, in `KEYPOINT_NAMES` order.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]

    @property
    def eye_distance(self) -> float:
        """Distance between the eye keypoints in pixels (a pose-robust face size)."""
        return float(np.linalg.norm(self.keypoints[0] - self.keypoints[1]))

    def to_json(self) -> dict:
        """JSON-ready dict: box and keypoints in pixels rounded to 0.1, score to 1e-4."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "keypoints": {n: [round(float(x), 1), round(float(y), 1)]
                          for n, (x, y) in zip(KEYPOINT_NAMES, self.keypoints, strict=True)},
        }


def shift(det: Detection, dx: float, dy: float) -> Detection:
    """The same detection moved by (dx, dy) pixels (e.g. back from a padded or cropped image)."""
    x0, y0, x1, y1 = det.box
    offset = np.array([dx, dy], np.float32)
    return Detection((x0 + dx, y0 + dy, x1 + dx, y1 + dy), det.score, det.keypoints + offset)


@dataclass(frozen=True, eq=False)
class Face:
    """A detected face with its aligned chip and embedding.

    chip: (S, S, 3) uint8 RGB aligned crop fed to the embedder. embedding: (D,) float32, L2-normalised, so the dot
    product of two embeddings is their cosine similarity. embedding2: the fused second embedder's projected unit
    vector (`edge.vision.fusion`), or None when no second embedder runs.
    """

    detection: Detection
    chip: np.ndarray
    embedding: np.ndarray
    embedding2: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class MatchEvent:
    """A match event as the device makes it (schema edge-event/1, DESIGN §6), before the outbox gives it a seq.

    A candidate for human review, never a verdict. captured_at: Unix seconds. similarity, threshold: cosine in
    [-1, 1]; margin: top minus the best other subject, cosine in [0, 2]. quality: flat figures of the deciding chip.
    thumbnail, thumbnail2: the track's best and second-best face chip, each an `edge.messaging.thumbnail.
    encrypt_thumbnail` result (sealed to the operator, bound to this event id), or None.
    Validated once, when `edge.messaging.payloads.encode_event` encodes it for the outbox.
    """

    event_id: str
    device_id: str
    captured_at: float
    subject_id: str
    watchlist_id: str
    watchlist_version: int
    embedder_id: str
    similarity: float
    threshold: float
    margin: float
    track_id: int
    chips_used: int
    quality: dict
    label: str | None = None
    category: str | None = None
    thumbnail: dict | None = None
    thumbnail2: dict | None = None

    def to_json(self, seq: int | None = None, published_at: float | None = None) -> dict:
        """The edge-event/1 object, fields in schema order (label, category, thumbnail only when set)."""
        event = {"schema": "edge-event/1", "event_id": self.event_id, "seq": seq, "device_id": self.device_id,
                 "captured_at": self.captured_at, "published_at": published_at, "subject_id": self.subject_id,
                 "watchlist_id": self.watchlist_id, "watchlist_version": self.watchlist_version,
                 "embedder_id": self.embedder_id, "similarity": self.similarity, "threshold": self.threshold,
                 "margin": self.margin, "track_id": self.track_id, "chips_used": self.chips_used,
                 "quality": self.quality, "review_required": True}
        for key in ("label", "category", "thumbnail", "thumbnail2"):
            if getattr(self, key) is not None:
                event[key] = getattr(self, key)
        return event


@dataclass(eq=False)
class Track:
    """One face followed across frames, as the stages see it. Mutable: only its Tracker updates the association
    fields. `edge.device.track.Track` adds which chips to embed and the track template (the embedding rule).

    first_seen / last_seen: seconds (the `now` passed to `Tracker.update`). hits: frames it was seen in.
    embeds: chips embedded so far. best_chips: the two best embedded chips (aligned faces, RGB uint8) as
    (quality_score, chip), best first — in memory only, the evidence an event may carry.
    """

    track_id: int
    detection: Detection
    first_seen: float
    last_seen: float
    hits: int = 1
    embeds: int = 0
    best_chips: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def keep_chip(self, quality_score: float, chip: np.ndarray | None, keep: int = 2) -> None:
        """Remember `chip` if it is among the `keep` best embedded chips of this track (by `quality_score`)."""
        if chip is None:
            return
        self.best_chips.append((float(quality_score), chip))
        self.best_chips.sort(key=lambda pair: -pair[0])
        del self.best_chips[keep:]

    def evidence(self) -> list[np.ndarray]:
        """The kept chips, best first."""
        return [chip for _, chip in self.best_chips]


@dataclass(frozen=True)
class Candidate:
    """One subject proposed for a probe. similarity: exact cosine similarity of its best template."""

    subject_id: str
    label: str
    category: str
    similarity: float
    item: int


@dataclass(frozen=True)
class Match:
    """The evidence for one probe: candidates (one per subject, best first), the decision and why.

    margin: top similarity minus the best *other* subject's (1.0 when there is no other candidate).
    """

    candidates: list[Candidate]
    matched: bool
    threshold: float
    margin_required: float
    margin: float
    top: Candidate | None = None

    def to_json(self) -> dict:
        """JSON-ready evidence (similarities rounded to 1e-4)."""
        return {
            "matched": self.matched, "threshold": self.threshold, "margin_required": self.margin_required,
            "margin": round(self.margin, 4),
            "candidates": [{"subject_id": c.subject_id, "label": c.label, "similarity": round(c.similarity, 4)}
                           for c in self.candidates],
        }


#: The name matching code used before the vocabulary moved here.
MatchResult = Match


@dataclass(frozen=True)
class Decision:
    """One (track, subject) decision and its evidence.

    similarity: the best similarity among the agreeing results; similarities: theirs, oldest first.
    threshold / margin_required: the limits applied to the result that completed the vote.
    margin: the smallest margin among the agreeing results. chips_used: how many results agreed.
    first_seen: when the track was first observed (seconds); decided_at: `now` of the deciding result.
    quality: the dict passed with the deciding result (copied as given).
    """

    track_id: int
    subject_id: str
    label: str
    category: str
    similarity: float
    similarities: list[float]
    threshold: float
    margin_required: float
    margin: float
    chips_used: int
    first_seen: float
    decided_at: float
    quality: dict[str, Any] = field(default_factory=dict)
    review_required: bool = True

    def to_json(self) -> dict:
        """JSON-ready dict (similarities and margin rounded to 1e-4)."""
        return {
            "track_id": self.track_id, "subject_id": self.subject_id, "label": self.label,
            "category": self.category, "similarity": round(self.similarity, 4),
            "similarities": [round(s, 4) for s in self.similarities], "threshold": self.threshold,
            "margin_required": self.margin_required, "margin": round(self.margin, 4),
            "chips_used": self.chips_used, "first_seen": self.first_seen, "decided_at": self.decided_at,
            "quality": dict(self.quality), "review_required": True,
        }


@dataclass(frozen=True, eq=False)
class PendingEvent:
    """What the pipeline's event queue carries from the inference thread to the event sink: the decision, the
    frame it was made on, the watchlist that matched (for its id and version) and the track's best embedded chips
    (aligned faces, RGB uint8), best first: the evidence an event may carry, sealed."""

    decision: Decision
    frame: Frame
    watchlist: Any
    chips: tuple = ()
