"""Face alignment: a similarity transform from BlazeFace keypoints to the embedder's chip template.

dlib's descriptor was trained on 150×150 chips cut by dlib's 5-point landmarks with padding 0.25. BlazeFace gives
other keypoints (eyes, nose tip, mouth centre, ear tragions), so `TEMPLATE` holds where those keypoints fall on
dlib's chips, averaged over real photos by `tools/fit_alignment.py` (numbers in models/manifest.json). The ear
tragions move with head yaw, so by default only the eyes, nose and mouth drive the fit.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Chip side in pixels for dlib's ResNet descriptor.
CHIP_SIZE = 150

#: Mean BlazeFace keypoint positions on dlib's 150×150 (padding 0.25) chips, in chip pixels, `KEYPOINT_NAMES`
#: order. Fitted by tools/fit_alignment.py on the dev photos (see models/manifest.json "alignment").
TEMPLATE = np.array(
    [
        [45.99, 46.14],
        [100.28, 46.85],
        [73.21, 78.89],
        [72.80, 105.30],
        [16.20, 60.40],
        [130.13, 61.69],
    ],
    dtype=np.float32,
)

#: Weight of each keypoint in the fit (eyes, nose, mouth; not the ears).
TEMPLATE_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity transform (rotation, uniform scale, translation; no reflection)
    mapping (K, 2) points `src` onto `dst` (Umeyama 1991). Returns a 2×3 float64 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_s = float((w * (s ** 2).sum(axis=1)).sum())
    scale = float((sig * sign).sum() / var_s) if var_s > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align_face(
    rgb: np.ndarray,
    keypoints: np.ndarray,
    size: int = CHIP_SIZE,
    template: np.ndarray = TEMPLATE,
    weights: np.ndarray = TEMPLATE_WEIGHTS,
) -> np.ndarray:
    """Cut the aligned (size × size) uint8 RGB chip for a face with (6, 2) keypoints in image pixels.

    When the face is much larger than the chip, the face region is first shrunk with area averaging, as dlib's
    chip extractor does with its image pyramid, so the chip is not aliased.
    """
    tmpl = template * (size / CHIP_SIZE) if size != CHIP_SIZE else template
    m = similarity_transform(keypoints, tmpl, weights)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale >= 0.5:
        return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    # Footprint of the chip in the image, then an area-averaged shrink of just that region.
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    h, w = rgb.shape[:2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    crop = rgb[y0:y1, x0:x1]
    cw, ch = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA)
    sx, sy = cw / (x1 - x0), ch / (y1 - y0)
    # A pixel q of the shrunk crop samples image point p = (q + 0.5) / s − 0.5 + origin (cv2's pixel centres).
    m2 = m.copy()
    m2[:, 0] = m[:, 0] / sx
    m2[:, 1] = m[:, 1] / sy
    origin = np.array([x0 + 0.5 / sx - 0.5, y0 + 0.5 / sy - 0.5], np.float64)
    m2[:, 2] = m[:, 2] + m[:, :2] @ origin
    return cv2.warpAffine(small, m2, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


#: The five-point ArcFace template on a 112×112 chip (insightface's `arcface_dst`, used by every ArcFace-class
#: embedder trained on MS1M-style aligned faces): left eye, right eye, nose tip, left and right mouth corner, pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

#: Side of the ArcFace chip the template is given for, pixels.
ARCFACE_SIZE = 112


def arcface_chip(rgb: np.ndarray, points5: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The (size × size) uint8 RGB chip of a face aligned by a similarity from its five ArcFace points (image
    pixels, `ARCFACE_TEMPLATE` order) to the template (scaled to `size`); area-averaged when shrinking."""
    # align_face takes templates in 150-px units and scales them to `size`.
    return align_face(rgb, np.asarray(points5, np.float64), size, ARCFACE_TEMPLATE * (CHIP_SIZE / ARCFACE_SIZE),
                      np.ones(5, np.float32))

#: Median positions of BlazeFace's keypoints (`KEYPOINT_NAMES` order) on ONet-aligned ArcFace chips, 112-px chip
#: pixels: the template of alignment "keypoints" for ArcFace-class embedders. Fitted by `tools/devset.py fit-arc` on
#: 822 single-face dev photos with eyes ≥ 30 px apart (tuned on the dev set); the ears get weight 0 like dlib's.
ARCFACE_KEYPOINT_TEMPLATE = np.array(
    [[37.402, 52.598], [73.602, 52.707], [55.68, 75.494], [55.872, 92.793], [20.194, 60.307], [92.381, 59.43]],
    dtype=np.float32)
