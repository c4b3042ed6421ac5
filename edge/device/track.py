"""Face tracks across frames: greedy IoU association with ids and timeouts, and which chips are worth embedding.

Pure logic on numpy: no I/O, no threads, no clock — every call takes `now` in seconds (any monotonic origin,
e.g. `Frame.monotonic`). One Tracker per camera, owned by one thread.

Expiry contract: `Tracker.update` ages out tracks first, then associates; the ids it aged out are kept until
`Tracker.expired()` collects them (it drains), so the caller can `DecisionPolicy.forget` each one.

Embedding rule (DESIGN §1, "embed only what the tracker needs"): a track embeds its first chip that passed the
quality gate, then a chip whose `quality_score` beats the best one embedded so far by `embed_improvement`
(×1.15 = 15 % better) or, once `reembed_after_s` has passed since the last embedding, one at least
`REEMBED_FLOOR` × as good (a face that holds still must still gather the k votes the policy needs), and never more
than `embed_budget` chips in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge import types
from edge.types import Detection

if TYPE_CHECKING:  # only for hints: keeps this pure core free of OpenCV
    from edge.vision.quality import Quality

#: Sharpness (0–1, `edge.vision.quality.sharpness`) at which a chip counts as fully sharp in `quality_score`
#: (sharp dev portraits measure 0.5–0.7).
SHARPNESS_FULL = 0.5
#: A periodic re-embedding needs at least this share of the best embedded chip's quality_score.
REEMBED_FLOOR = 0.8


def quality_score(q: Quality) -> float:
    """One number to rank chips of the same face, higher = better (pixels-like units, ≥ 0).

    eye distance (px) × min(1, sharpness / 0.5) × max(0, 1 − |yaw|): size matters most, blur discounts up to the
    point where the chip is sharp enough (0.5), and a turned head (|yaw| → 0.5 for a strong profile) halves it.
    Roll is ignored: alignment removes it. The quality gate still decides *whether* a chip is usable at all.
    """
    sharp = min(1.0, max(0.0, q.sharpness) / SHARPNESS_FULL)
    return float(max(0.0, q.eye_distance) * sharp * max(0.0, 1.0 - abs(q.yaw)))


@dataclass(eq=False)
class Track(types.Track):
    """A `edge.types.Track` that follows the embedding rule of the module docstring; made by `Tracker`.

    embed_budget: most chips embedded. embed_improvement: factor by which a chip's `quality_score` must beat the
    best embedded one. reembed_after_s: seconds after which a chip ≥ `REEMBED_FLOOR` × the best one is embedded
    anyway. best_embedded_quality: the best `quality_score` embedded (0 before any); last_embedded: `now` of the
    last embedding. template_sum / template2_sum: the `quality_score`-weighted sums of the embedded chips'
    embeddings and fused second embeddings (None before any).
    """

    embed_budget: int = 5
    embed_improvement: float = 1.15
    reembed_after_s: float = 0.5
    best_embedded_quality: float = 0.0
    last_embedded: float = float("-inf")
    template_sum: np.ndarray | None = None
    template2_sum: np.ndarray | None = None

    def should_embed(self, quality_score: float, now: float | None = None) -> bool:
        """Whether a chip that passed the quality gate is worth embedding (the module docstring's rule);
        now: seconds, for the periodic re-embedding (None = only the improvement rule)."""
        if self.embeds >= self.embed_budget:
            return False
        if self.embeds == 0:
            return True
        if quality_score >= self.best_embedded_quality * self.embed_improvement:
            return True
        return (now is not None and now - self.last_embedded >= self.reembed_after_s
                and quality_score >= REEMBED_FLOOR * self.best_embedded_quality)

    def record_embedding(self, quality_score: float, embedding: np.ndarray | None = None,
                         now: float | None = None, embedding2: np.ndarray | None = None) -> None:
        """Note that a chip with this `quality_score` was embedded for this track at `now` seconds (and add its
        embedding, a unit vector — and the fused second embedding, if any — to the track template)."""
        self.embeds += 1
        if now is not None:
            self.last_embedded = float(now)
        self.best_embedded_quality = max(self.best_embedded_quality, float(quality_score))
        if embedding is not None:
            q = max(float(quality_score), 1e-6)
            w = q * np.asarray(embedding, np.float32)
            self.template_sum = w if self.template_sum is None else self.template_sum + w
            if embedding2 is not None:
                w2 = q * np.asarray(embedding2, np.float32)
                self.template2_sum = w2 if self.template2_sum is None else self.template2_sum + w2

    def template(self, second: bool = False) -> np.ndarray | None:
        """The track template: the quality-weighted mean of its embedded chips as a unit vector, once at least two
        chips are in it (one chip is already searched on its own); None before. second: the same for the fused
        second embeddings."""
        total = self.template2_sum if second else self.template_sum
        if total is None or self.embeds < 2:
            return None
        norm = float(np.linalg.norm(total))
        return (total / norm).astype(np.float32) if norm > 0 else None


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), boxes as (x0, y0, x1, y1) → (N, M) float."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def greedy_assign(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken highest IoU first, each row and column at most once, IoU ≥ threshold.

    Ties go to the lower row, then the lower column (older track first), so results are deterministic.
    """
    rows, cols = np.nonzero(iou >= threshold)
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


class Tracker:
    """Greedy IoU tracker.

    iou_threshold: least IoU between a track's last box and a detection to continue the track.
    max_age_s: a track not seen for longer than this (seconds) expires. embed_budget / embed_improvement /
    reembed_after_s: copied into every new Track (see `Track.should_embed`).
    Counters: `tracks_created`, `tracks_expired` (also in `stats()`).
    """

    def __init__(self, iou_threshold: float = 0.3, max_age_s: float = 1.0, embed_budget: int = 5,
                 embed_improvement: float = 1.15, reembed_after_s: float = 0.5) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be ≥ 0 seconds, got {max_age_s}")
        if embed_budget < 0:
            raise ValueError(f"embed_budget must be ≥ 0, got {embed_budget}")
        self.iou_threshold = float(iou_threshold)
        self.max_age_s = float(max_age_s)
        self.embed_budget = int(embed_budget)
        self.embed_improvement = float(embed_improvement)
        self.reembed_after_s = float(reembed_after_s)
        self._tracks: dict[int, Track] = {}  # insertion order = creation order = id order
        self._next_id = 1
        self._expired: list[int] = []
        self.tracks_created = 0
        self.tracks_expired = 0

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, oldest first (including ones not seen in the latest frame)."""
        return list(self._tracks.values())

    def update(self, detections: list[Detection], now: float) -> list[Track]:
        """Age out stale tracks, then associate this frame's detections; returns the tracks seen in this frame,
        in the order of `detections` (one track per detection)."""
        self._age_out(now)
        live = list(self._tracks.values())
        assigned: dict[int, Track] = {}
        if live and detections:
            iou = iou_matrix(np.array([t.detection.box for t in live]), np.array([d.box for d in detections]))
            for r, c in greedy_assign(iou, self.iou_threshold):
                track = live[r]
                track.detection = detections[c]
                track.last_seen = now
                track.hits += 1
                assigned[c] = track
        seen = []
        for c, det in enumerate(detections):
            known = assigned.get(c)
            if known is None:
                known = Track(self._next_id, det, now, now, embed_budget=self.embed_budget,
                              embed_improvement=self.embed_improvement, reembed_after_s=self.reembed_after_s)
                self._tracks[known.track_id] = known
                self._next_id += 1
                self.tracks_created += 1
            seen.append(known)
        return seen

    def expired(self) -> list[int]:
        """Ids of the tracks aged out since the last call (drains), in expiry order."""
        out, self._expired = self._expired, []
        return out

    def stats(self) -> dict[str, int]:
        """live, tracks_created, tracks_expired."""
        return {"live": len(self._tracks), "tracks_created": self.tracks_created,
                "tracks_expired": self.tracks_expired}

    def _age_out(self, now: float) -> None:
        for track_id in [tid for tid, t in self._tracks.items() if now - t.last_seen > self.max_age_s]:
            del self._tracks[track_id]
            self._expired.append(track_id)
            self.tracks_expired += 1
