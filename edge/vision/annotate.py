"""Drawing detections onto images (for `edge detect --annotate` and the demo)."""

from __future__ import annotations

import cv2
import numpy as np

from edge.types import Detection

_KEYPOINT_COLOURS = ((255, 64, 64), (64, 64, 255), (64, 255, 64), (255, 255, 0), (255, 0, 255), (0, 255, 255))


def annotate(rgb: np.ndarray, detections: list[Detection], labels: list[str] | None = None) -> np.ndarray:
    """A copy of the RGB image with each face's box, keypoints and label (default: its score)."""
    out = rgb.copy()
    thick = max(1, round(max(rgb.shape[:2]) / 400))
    for i, det in enumerate(detections):
        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 220, 0), thick)
        for (x, y), colour in zip(det.keypoints, _KEYPOINT_COLOURS, strict=True):
            cv2.circle(out, (int(round(x)), int(round(y))), thick + 1, colour, -1)
        text = labels[i] if labels else f"{det.score:.2f}"
        cv2.putText(out, text, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 220, 0), thick)
    return out
