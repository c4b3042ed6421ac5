"""Face quality: is this face worth embedding? Size, sharpness, pose and detector confidence — pure functions.

Figures: eye distance in image pixels; sharpness = variance of the Laplacian of the grey 150×150 chip; yaw =
horizontal offset of the nose tip from the eyes' midpoint divided by the eye distance (0 = frontal, ~0.5 = strong
profile); roll = angle of the eye line in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.types import Detection


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a face must meet. min_eye_distance: pixels; min_sharpness: Laplacian variance of the chip;
    max_yaw: |yaw ratio|; max_roll: degrees; min_score: detector probability."""

    min_eye_distance: float = 24.0
    min_sharpness: float = 40.0
    max_yaw: float = 0.45
    max_roll: float = 35.0
    min_score: float = 0.5


@dataclass(frozen=True)
class Quality:
    """Measured figures and the verdict; `reason` is None when the face passes."""

    eye_distance: float
    sharpness: float
    yaw: float
    roll: float
    score: float
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        return {"eye_distance_px": round(self.eye_distance, 1), "sharpness": round(self.sharpness, 1),
                "yaw": round(self.yaw, 3), "roll_deg": round(self.roll, 1), "score": round(self.score, 3)}


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip (higher = sharper)."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def pose(keypoints: np.ndarray) -> tuple[float, float]:
    """(yaw ratio, roll degrees) from BlazeFace keypoints."""
    right_eye, left_eye, nose = keypoints[0], keypoints[1], keypoints[2]
    eyes = left_eye - right_eye
    dist = float(np.hypot(*eyes)) or 1e-6
    roll = math.degrees(math.atan2(float(eyes[1]), float(eyes[0])))
    # Project the nose's offset from the eyes' midpoint onto the eye line.
    offset = float(np.dot(nose - (right_eye + left_eye) / 2, eyes / dist))
    return offset / dist, roll


def assess(det: Detection, chip: np.ndarray, limits: QualityThresholds = QualityThresholds()) -> Quality:
    """Measure a detected face and its chip; the first failed limit is the reason."""
    eye = det.eye_distance
    sharp = sharpness(chip)
    yaw, roll = pose(det.keypoints)
    reason = None
    if eye < limits.min_eye_distance:
        reason = "face too small"
    elif det.score < limits.min_score:
        reason = "low detection score"
    elif abs(yaw) > limits.max_yaw or abs(roll) > limits.max_roll:
        reason = "extreme pose"
    elif sharp < limits.min_sharpness:
        reason = "too blurry"
    return Quality(eye, sharp, yaw, roll, float(det.score), reason)
