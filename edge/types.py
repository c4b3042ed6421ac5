"""The vocabulary shared by the stages: small immutable records, numpy inside, JSON out."""

from __future__ import annotations

from dataclasses import dataclass

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
            "keypoints": {n: [round(float(x), 1), round(float(y), 1)] for n, (x, y) in zip(KEYPOINT_NAMES, self.keypoints)},
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
    thumbnail: only an `edge.messaging.thumbnail.encrypt_thumbnail` result (sealed to the operator), or None.
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

    def to_json(self, seq: int | None = None, published_at: float | None = None) -> dict:
        """The edge-event/1 object, fields in schema order (label, category, thumbnail only when set)."""
        event = {"schema": "edge-event/1", "event_id": self.event_id, "seq": seq, "device_id": self.device_id,
                 "captured_at": self.captured_at, "published_at": published_at, "subject_id": self.subject_id,
                 "watchlist_id": self.watchlist_id, "watchlist_version": self.watchlist_version,
                 "embedder_id": self.embedder_id, "similarity": self.similarity, "threshold": self.threshold,
                 "margin": self.margin, "track_id": self.track_id, "chips_used": self.chips_used,
                 "quality": self.quality, "review_required": True}
        for key in ("label", "category", "thumbnail"):
            if getattr(self, key) is not None:
                event[key] = getattr(self, key)
        return event
