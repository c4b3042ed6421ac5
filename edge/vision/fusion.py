"""Score fusion with a second embedder: its projection, and the fused score on dlib's cosine scale.

fused = scale1·s1 + scale2·s2 + offset (≤ 1, like a cosine): s1 the primary cosine, s2 the cosine of the second
embedder's descriptors after a PCA projection to `dim2` and re-normalisation. Scale and offset come from a z-score
fusion w·s1 + (1 − w)(μ1 + σ1 (s2 − μ2)/σ2) divided by its value for two perfect matches, tuned on the dev set
(models/manifest.json "fusion"). A watchlist keeps each template as one int8 row [e1, e2], so the fused score of a
shortlisted template is one dot product with the query [scale1·e1, scale2·e2] plus the offset. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.errors import ModelError


@dataclass(frozen=True)
class Fusion:
    """secondary: manifest name of the second embedder; mean (D2,), components (dim2, D2): its projection;
    scale1, scale2, offset: the fused score's terms; max_score: fused score of two perfect matches; tail: the fused
    score's impostor tail (`edge.evaluation.calibration.TailModel` JSON)."""

    secondary: str
    mean: np.ndarray
    components: np.ndarray
    scale1: float
    scale2: float
    offset: float
    max_score: float
    tail: dict[str, Any]

    @property
    def dim2(self) -> int:
        """Dimensions of the projected second embedding."""
        return int(self.components.shape[0])

    def project(self, raw: np.ndarray) -> np.ndarray:
        """The second embedder's raw descriptor (D2,) → the projected unit vector (dim2,) float32."""
        v = np.asarray(raw, np.float32).reshape(-1)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        p = (v - self.mean) @ self.components.T
        return np.asarray(p / max(float(np.linalg.norm(p)), 1e-12), dtype=np.float32)

    def meta(self) -> dict[str, Any]:
        """What a watchlist payload records of the fusion (numbers only; the projection stays on the device)."""
        return {"secondary": self.secondary, "dim2": self.dim2, "scale1": self.scale1, "scale2": self.scale2,
                "offset": self.offset}


def load_fusion(section: dict[str, Any], directory: Path, sha256_file: Callable[[Path], str]) -> Fusion:
    """The manifest's "fusion" section → Fusion (projection file checked against its sha256)."""
    try:
        proj = section["projection"]
        path = Path(directory) / proj["file"]
        if not path.is_file() or sha256_file(path) != proj["sha256"]:
            raise ModelError(f"fusion projection {path} is missing or its checksum does not match the manifest")
        with np.load(path, allow_pickle=False) as z:
            mean, comp = z["mean"].astype(np.float32), z["components"].astype(np.float32)
        return Fusion(str(section["secondary"]), mean, comp, float(section["scale1"]), float(section["scale2"]),
                      float(section["offset"]), float(section["max_score"]), dict(section.get("impostor_tail") or {}))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"the model manifest's fusion section is malformed ({err!r})") from None


def fused_query(embedding: np.ndarray, embedding2: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The query row [scale1·e1, scale2·e2] whose dot product with a template row [t1, t2] is the fused score minus
    the offset."""
    return np.concatenate([float(meta["scale1"]) * np.asarray(embedding, np.float32),
                           float(meta["scale2"]) * np.asarray(embedding2, np.float32)])
