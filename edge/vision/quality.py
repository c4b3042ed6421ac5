"""Face quality: is this face worth embedding? Size, sharpness, pose and detector confidence — pure functions.

Figures: eye distance in image pixels; sharpness in [0, 1] = 1 − the blur effect (Crété-Roffet et al. 2007) of the
face's centre measured at the face's own resolution (a chip is never judged after upscaling, so a sharp 110 px face
is as sharp as a sharp 400 px one); yaw = horizontal offset of the nose tip from the eyes' midpoint divided by the
eye distance (0 = frontal, ~0.5 = strong profile); roll = angle of the eye line in degrees.

OpenCV is imported inside the three functions that measure pixels: the CLI's parser reads this module's limits for
its help texts, and `edge --help` (or `edge keys …`) must run on a host without OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.types import Detection

#: Eye distance on the 150×150 aligned chip, chip pixels (the alignment template's; used to find a chip's scale).
CHIP_EYE_DISTANCE = 54.3


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a face must meet. min_eye_distance: pixels; min_sharpness: 0–1 (1 − blur effect at the face's own
    resolution); max_yaw: |yaw ratio|; max_roll: degrees; min_score: detector probability."""

    min_eye_distance: float = 24.0
    min_sharpness: float = 0.40
    max_yaw: float = 0.45
    max_roll: float = 35.0
    min_score: float = 0.5


#: The enrollment gate (`edge watchlist build`, `edge eval openset`): gallery photos are single, posed portraits,
#: so it rejects only what hurts — tuned on the dev set (../shared/data) to reject 1.8 % of CelebA in-the-wild
#: portraits (3,172: 28 pose, 19 small, 6 ambiguous several faces, 3 blurry, 3 no face) and 1.0 % of the low-res
#: CelebA crops; FNIR at FPIR 0.003 0.5275 with it vs 0.5377 without (README, "Recognition").
ENROLLMENT_LIMITS = QualityThresholds(min_eye_distance=12.0, min_sharpness=0.40, max_yaw=1.0, max_roll=50.0,
                                      min_score=0.5)


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

    def to_json(self) -> dict[str, Any]:
        return {"eye_distance_px": round(self.eye_distance, 1), "sharpness": round(self.sharpness, 3),
                "yaw": round(self.yaw, 3), "roll_deg": round(self.roll, 1), "score": round(self.score, 3)}


def laplacian_variance(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip (the former sharpness figure; depends on the face's resolution)."""
    import cv2

    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def blur_effect(grey: np.ndarray, kernel: int = 9) -> float:
    """Crété-Roffet blur effect of a grey image in [0, 1] (0 = sharp, 1 = flat): how much of the neighbouring-pixel
    variation survives a `kernel`-pixel box blur, the worse of the vertical and horizontal directions."""
    import cv2

    f = grey.astype(np.float32)
    worst = 0.0
    for axis, ksize in ((0, (1, kernel)), (1, (kernel, 1))):  # cv2 ksize = (width, height)
        b = cv2.blur(f, ksize)
        d_f = np.abs(np.diff(f, axis=axis))
        d_b = np.abs(np.diff(b, axis=axis))
        s_f = float(d_f.sum())
        if s_f <= 1e-6:
            return 1.0
        s_v = float(np.maximum(0.0, d_f - d_b).sum())
        worst = max(worst, (s_f - s_v) / s_f)
    return worst


def sharpness(chip: np.ndarray, eye_distance: float) -> float:
    """Sharpness in [0, 1] of an aligned (S × S) RGB chip whose face has `eye_distance` pixels between the eyes
    in the source image: the chip is first brought back to the face's own resolution (never judged upscaled),
    then 1 − `blur_effect` of its central face region (eyes to mouth, no background)."""
    import cv2

    size = chip.shape[0]
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    lo, hi = round(size * 0.2), round(size * 0.85)
    face = grey[lo:hi, round(size * 0.18):round(size * 0.82)]
    native = eye_distance / (CHIP_EYE_DISTANCE * size / 150.0)  # image pixels per chip pixel
    if native < 1.0:
        w = max(8, round(face.shape[1] * native))
        h = max(8, round(face.shape[0] * native))
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
    return 1.0 - blur_effect(face)


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
    sharp = sharpness(chip, eye)
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


@dataclass(frozen=True)
class SubjectPick:
    """Which face of a photo is its subject: `index` into the detections (None = none or ambiguous), the reason
    (and detail) when there is none, and a warning when other faces were present but clearly not the subject."""

    index: int | None
    reason: str | None = None
    warning: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class SubjectRule:
    """Which face of a photo with several is its subject: a booking or press portrait has its subject large and
    centred, often with a bystander cut by the edge. Faces with an eye distance of at least `min_relative` × the
    largest one's are *sizeable*; the sizeable face nearest the image centre is the subject when its eyes' midpoint
    lies within `max_offset` of the centre (fraction of the image's width and height: 0 = exactly central,
    0.5 = anywhere) and no other sizeable face is about as central (within `separation`) unless the subject is
    `dominance` × larger than it."""

    dominance: float = 1.5
    max_offset: float = 0.35
    min_relative: float = 0.5
    separation: float = 0.1


#: The default subject rule (a module-level constant: a frozen dataclass shared as an argument default).
DEFAULT_SUBJECT_RULE = SubjectRule()


def _offset(det: Detection, image_size: tuple[int, int]) -> float:
    """How far a face's eye midpoint lies from the image centre, as a fraction of the image size (Chebyshev)."""
    w, h = image_size
    cx, cy = (det.keypoints[0] + det.keypoints[1]) / 2
    return float(max(abs(cx - w / 2) / max(w, 1), abs(cy - h / 2) / max(h, 1)))


def subject_face(dets: list[Detection], image_size: tuple[int, int],
                 rule: SubjectRule = DEFAULT_SUBJECT_RULE) -> SubjectPick:
    """Pick a photo's subject among its detections (`SubjectRule`); image_size: (width, height) in pixels.

    One face: it. Several: the sizeable face nearest the centre, with a warning naming the others; none when the
    central candidates are too far off centre or two of them are about as central and alike in size."""
    if not dets:
        return SubjectPick(None, "no face")
    if len(dets) == 1:
        return SubjectPick(0)
    largest = max(max(d.eye_distance, 1e-6) for d in dets)
    sizeable = [i for i, d in enumerate(dets) if max(d.eye_distance, 1e-6) >= rule.min_relative * largest]
    by_centre = sorted(sizeable, key=lambda i: _offset(dets[i], image_size))
    best = by_centre[0]
    off = _offset(dets[best], image_size)
    if off > rule.max_offset:
        return SubjectPick(None, "several faces", detail=f"{len(dets)} faces, none near the centre "
                           f"(the most central is {off:.2f} of the image off it)")
    if len(by_centre) > 1:
        rival = by_centre[1]
        ratio = max(dets[best].eye_distance, 1e-6) / max(dets[rival].eye_distance, 1e-6)
        if _offset(dets[rival], image_size) - off < rule.separation and ratio < rule.dominance:
            return SubjectPick(None, "several faces",
                               detail=f"{len(dets)} faces, no clear subject: two about as central and as large")
    return SubjectPick(best, warning=f"{len(dets)} faces; enrolled the one nearest the centre")
