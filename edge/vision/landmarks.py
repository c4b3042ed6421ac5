"""dlib's 5-point face landmarks and face chips, re-implemented in numpy (no dlib at run time).

`ShapePredictor` evaluates dlib's ensemble of regression trees (Kazemi & Sullivan 2014,
dlib/image_processing/shape_predictor.h) from the arrays `tools/convert_shape_predictor.py` extracts from
``shape_predictor_5_face_landmarks.dat``. `dlib_chip` reproduces ``get_face_chip_details`` + ``extract_image_chip``
(dlib/image_transforms/interpolation.h): a similarity from dlib's 5-point template, a 2:1 Gaussian pyramid when
shrinking, then bilinear sampling with a black border, with dlib's own pixel conventions. Together they cut the chips
dlib's ResNet descriptor was trained on. Points are (x, y) image pixels; dlib rectangles are (left, top, right,
bottom) with inclusive right/bottom, as ``dlib.rectangle``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.types import Detection

#: dlib's point order, named for the subject (as `edge.types.KEYPOINT_NAMES`: the left eye is on the image's right).
POINT_NAMES: tuple[str, ...] = ("left_eye_outer", "left_eye_inner", "right_eye_outer", "right_eye_inner", "nose_base")

#: Where get_face_chip_details puts the 5 points, as fractions of an unpadded chip (dlib's constants).
CHIP_TEMPLATE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                          [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                          [0.4901123135679, 0.6277975316475]])

Rect = tuple[float, float, float, float]


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (no reflection) mapping (K, 2) `src` onto `dst`: (2×2 matrix, translation)."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - ms, dst - md
    var = float((s * s).sum()) or 1.0
    a = float((s * d).sum()) / var
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / var
    m = np.array([[a, -b], [b, a]])
    return m, md - m @ ms


class ShapePredictor:
    """dlib's cascade of regression-tree forests. Arrays (C cascades, T complete trees of depth D, P pixels):

    initial_shape (N, 2) mean shape in rect-normalised units; split_idx (C, T, 2^D-1, 2) feature pixel pairs;
    split_thresh (C, T, 2^D-1) int16 = floor of dlib's float thresholds (intensity differences are integers);
    leaves (C, T, 2^D, N, 2) shape increments; anchor (C, P) anchor point of each feature pixel; deltas (C, P, 2)
    its offset from that point in the mean shape.
    """

    FIELDS = ("initial_shape", "split_idx", "split_thresh", "leaves", "anchor", "deltas")

    def __init__(self, initial_shape: np.ndarray, split_idx: np.ndarray, split_thresh: np.ndarray,
                 leaves: np.ndarray, anchor: np.ndarray, deltas: np.ndarray) -> None:
        n_cascades, n_trees, n_splits = split_thresh.shape
        self.initial_shape = initial_shape.astype(np.float64)
        self._shape0 = initial_shape.astype(np.float32)
        self._idx1 = split_idx[..., 0].reshape(n_cascades, -1).astype(np.intp)
        self._idx2 = split_idx[..., 1].reshape(n_cascades, -1).astype(np.intp)
        self._thresh = split_thresh.reshape(n_cascades, -1).astype(np.int32)
        self._leaves = leaves.astype(np.float32).reshape(n_cascades, n_trees * (n_splits + 1), -1)
        self._anchor = anchor.astype(np.intp)
        self._deltas = deltas.astype(np.float32)
        self._tree_base = np.arange(n_trees) * (n_splits + 1)
        self._bits = (1 << np.arange(n_splits)).astype(np.float32)  # exact in float32
        # The leaf a tree reaches depends only on its nodes' split outcomes: tabulate it for every outcome pattern.
        codes = np.arange(1 << n_splits)
        node = np.zeros_like(codes)
        while (node < n_splits).any():
            inner = node < n_splits
            go_left = (codes >> np.minimum(node, n_splits - 1)) & 1
            node = np.where(inner, 2 * node + 2 - go_left, node)
        self._leaf_of = (node - n_splits).astype(np.intp)
        # Similarity from the mean shape to the current one in closed form: a = s·x / |s|², b = (s × x) / |s|².
        s = self.initial_shape - self.initial_shape.mean(axis=0)
        var = float((s * s).sum())
        self._sim_a = (s / var).ravel()
        self._sim_b = (np.stack([-s[:, 1], s[:, 0]], axis=1) / var).ravel()
        self.n_parts = len(initial_shape)

    def predict(self, image: np.ndarray, rect: Rect) -> np.ndarray:
        """The (N, 2) float64 landmarks in image pixels for the face in `rect` (dlib convention, pixels).

        `image` is (H, W) grey or (H, W, 3) RGB uint8; RGB pixels count as (r + g + b) // 3, as dlib's
        get_pixel_intensity. dlib rounds its output to whole pixels; this returns the unrounded points.
        """
        left, top, right, bottom = (float(v) for v in rect)
        origin = np.array([left, top])
        span = np.array([right - left, bottom - top])
        h, w = image.shape[:2]
        flat = image.reshape(h * w, -1)  # a copy only if the image is not contiguous
        shape = self._shape0
        n_trees = len(self._tree_base)
        steps = np.empty((n_trees + 1, shape.size), np.float32)
        for c in range(len(self._idx1)):
            xy = shape.astype(np.float64).ravel()
            a, b = float(xy @ self._sim_a), float(xy @ self._sim_b)
            m = np.array([[a, b], [-b, a]], np.float32)  # transposed similarity, in float as dlib
            pts = (self._deltas[c] @ m + shape[self._anchor[c]]) * span + origin
            ix = np.floor(pts + 0.5).astype(np.intp)
            inside = (ix[:, 0].astype(np.uintp) < w) & (ix[:, 1].astype(np.uintp) < h)
            pix = np.take(flat, np.where(inside, ix[:, 1] * w + ix[:, 0], 0), axis=0).astype(np.int32)
            feat = (pix[:, 0] + pix[:, 1] + pix[:, 2]) // 3 if pix.shape[1] == 3 else pix[:, 0]
            feat[~inside] = 0
            outcome = feat[self._idx1[c]] - feat[self._idx2[c]] > self._thresh[c]
            code = outcome.reshape(n_trees, -1).astype(np.float32) @ self._bits
            steps[0] = shape.ravel()
            np.take(self._leaves[c], self._tree_base + self._leaf_of[code.astype(np.intp)], axis=0, out=steps[1:])
            # dlib adds the trees' leaves one by one in float32; numpy reduces a C-ordered array over its first
            # axis row by row, which keeps exactly that rounding.
            shape = steps.sum(axis=0, dtype=np.float32).reshape(-1, 2)
        return np.asarray(origin + shape.astype(np.float64) * span)


def load_shape_predictor(path: str | Path) -> ShapePredictor:
    """Load the arrays written by tools/convert_shape_predictor.py (plain .npz, no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return ShapePredictor(**{k: z[k] for k in ShapePredictor.FIELDS})


# --- BlazeFace detection -> the rectangle dlib's HOG detector would give --------------------------------------------

#: rect centre = BlazeFace eye midpoint + w · RECT_CENTRE @ f and rect side = w · RECT_SIDE @ f (w = box width,
#: f = `rect_features`). Least squares against dlib's HOG rectangles (upsample 1) of 676 faces in 674 CelebA
#: in-the-wild dev photos, default int8 BlazeFace (`tools/convert_shape_predictor.py --fit-rect`). Residual RMS:
#: centre 3.4 / 4.5 %, side 9 % of the box width (mostly HOG's own scale steps).
RECT_CENTRE = np.array([[0.25227, 0.16506, 0.02076, -0.07855], [0.00446, 0.60443, 0.36242, -0.21727]])
RECT_SIDE = np.array([0.16084, -1.62554, 0.01686, 1.60852])


def rect_features(det: Detection) -> tuple[np.ndarray, np.ndarray, float]:
    """(eye midpoint px, f, box width w px): f = (mouth − eye midpoint) / w, eye distance / w, 1."""
    kp = det.keypoints.astype(np.float64)
    eyes = (kp[0] + kp[1]) / 2
    w = float(det.width) or 1.0
    f = np.array([(kp[3, 0] - eyes[0]) / w, (kp[3, 1] - eyes[1]) / w, float(np.linalg.norm(kp[1] - kp[0])) / w, 1.0])
    return eyes, f, w


def _square(centre: np.ndarray, side: float) -> Rect:
    half = (side - 1) / 2  # dlib rectangles include their right/bottom pixel
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def detection_rect(det: Detection) -> Rect:
    """The square dlib HOG rectangle (left, top, right, bottom; pixels) for a BlazeFace detection."""
    eyes, f, w = rect_features(det)
    return _square(eyes + w * (RECT_CENTRE @ f), w * float(RECT_SIDE @ f))


#: The same for dlib's own 5 points (for a re-seed): rect centre = eye-centres midpoint + d · POINTS_CENTRE @ g,
#: side = d · POINTS_SIDE @ g, d = distance between the eye centres, g = features of `points_features`.
#: Fitted on the same faces as RECT_CENTRE, against dlib's own landmarks in its HOG rectangles.
POINTS_CENTRE = np.array([[0.18479, -0.01891, 0.01406], [0.02861, 0.18531, 0.31554]])
POINTS_SIDE = np.array([0.06855, 1.77615, 1.13551])


def points_features(points5: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(eye-centres midpoint px, feature vector, eye-centre distance px) of 5 dlib points."""
    p = np.asarray(points5, np.float64)
    left, right = (p[0] + p[1]) / 2, (p[2] + p[3]) / 2
    mid = (left + right) / 2
    d = float(np.linalg.norm(left - right)) or 1.0
    return mid, np.array([(p[4, 0] - mid[0]) / d, (p[4, 1] - mid[1]) / d, 1.0]), d


def points_rect(points5: np.ndarray) -> Rect:
    """The dlib HOG rectangle (pixels) a face with these 5 dlib landmarks would have been found in."""
    mid, g, d = points_features(points5)
    return _square(mid + d * (POINTS_CENTRE @ g), d * float(POINTS_SIDE @ g))


#: Predict again in the `points_rect` of the first prediction? Off: on 789 held-out dev faces it changed nothing
#: measurable (median landmark error 0.507 vs 0.509 px, descriptor cosine median 0.9995 both) at twice the cost.
RESEED = False


def detection_landmarks(predictor: ShapePredictor, image: np.ndarray, det: Detection,
                        reseed: bool = RESEED) -> np.ndarray:
    """dlib's 5 landmarks (image pixels, (5, 2) float64) for a BlazeFace detection: predicted in `detection_rect`
    and, with `reseed`, again in the rectangle dlib's HOG detector would give for those landmarks."""
    points = predictor.predict(image, detection_rect(det))
    return predictor.predict(image, points_rect(points)) if reseed else points


# --- dlib's face chip ----------------------------------------------------------------------------------------------


def _rect_down(r: np.ndarray) -> np.ndarray:
    """pyramid_down<2>::rect_down of a drectangle (l, t, r, b)."""
    return np.asarray(r / 2.0 - np.array([1.25, 0.75, 1.25, 0.75]))


def _area(r: np.ndarray) -> float:
    """drectangle area: (r - l + 1)(b - t + 1), 0 when empty."""
    if r[0] > r[2] or r[1] > r[3]:
        return 0.0
    return float((r[2] - r[0] + 1) * (r[3] - r[1] + 1))


_GAUSS5 = np.array([1, 4, 6, 4, 1], np.float32)


def pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2>: separable [1 4 6 4 1]² filter, every other pixel, integer /256 (truncated)."""
    nr, nc = img.shape[:2]
    if nr <= 8 or nc <= 8:
        return img[:0, :0]
    # Filter sums are integers <= 256·255, exact in float32; output (r, c) is centred on input (2r + 2, 2c + 2).
    t = cv2.sepFilter2D(img, cv2.CV_32F, _GAUSS5, _GAUSS5, borderType=cv2.BORDER_REPLICATE)
    out = t[2:2 + 2 * ((nr - 3) // 2):2, 2:2 + 2 * ((nc - 3) // 2):2] * (1 / 256)
    return out.astype(np.uint8)  # truncates, as dlib's integer division


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's interpolate_bilinear at float points (same float64 operations, truncated to uint8); black where the
    2×2 neighbourhood leaves the image."""
    h, w = img.shape[:2]
    flat = img.reshape(h * w, -1)
    xr, yr = x.ravel(), y.ravel()
    x0, y0 = np.floor(xr), np.floor(yr)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 < w - 1) & (y0 < h - 1)
    i = np.where(ok, y0 * w + x0, 0).astype(np.intp)
    fx, fy = (xr - x0)[:, None], (yr - y0)[:, None]
    gx = 1 - fx
    top = gx * np.take(flat, i, axis=0, mode="clip")
    top += fx * np.take(flat, i + 1, axis=0, mode="clip")
    bottom = gx * np.take(flat, i + w, axis=0, mode="clip")
    bottom += fx * np.take(flat, i + w + 1, axis=0, mode="clip")
    top *= 1 - fy
    bottom *= fy
    top += bottom
    out = top.astype(np.uint8)  # a convex mix of 0..255: assign_pixel's saturation never triggers
    out[~ok] = 0
    return np.asarray(out.reshape(x.shape + img.shape[2:]))


def dlib_chip(rgb: np.ndarray, points5: np.ndarray, size: int = 150, padding: float = 0.25,
              exact: bool = False) -> np.ndarray:
    """dlib.get_face_chip(img, shape, size, padding): the (size, size, 3) uint8 chip for 5 landmarks (pixels).

    exact: sample with dlib's own bilinear arithmetic in numpy (pixel-identical to dlib, ~1.5–2.5 ms); by default
    OpenCV's warpAffine samples the same points in float32 and truncates like dlib (~0.2 ms; its fixed-point
    weights differ from dlib's by rounding only: tests/test_landmarks.py bounds pixels and descriptor cosine)."""
    src = (padding + CHIP_TEMPLATE) / (2 * padding + 1) * size
    m, t = _similarity(src, np.asarray(points5, np.float64))
    angle, scale = float(np.arctan2(m[1, 0], m[0, 0])), float(np.hypot(m[0, 0], m[1, 0]))
    cx, cy = m @ np.array([size / 2, size / 2]) + t
    half = (size * scale - 1) / 2
    rect = np.array([cx - half, cy - half, cx + half, cy + half])
    # Pyramid depth: halve until the chip's footprint is no larger than the chip.
    depth, grow, r = 0, 2.0, _rect_down(rect)
    while _area(r) > size * size:
        r, depth, grow = _rect_down(r), depth + 1, grow * 2 + 2
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[rect[0], rect[1]], [rect[2], rect[1]], [rect[0], rect[3]], [rect[2], rect[3]]])
    ctr = np.array([cx, cy])
    turned = (corners - ctr) @ rot.T + ctr
    h, w = rgb.shape[:2]
    # The grown footprint, intersected with the image, rounded to whole pixels: the region the pyramid is built on.
    lo = np.maximum(turned.min(axis=0) - grow, 0)
    hi = np.minimum(turned.max(axis=0) + grow, [w - 1, h - 1])
    x0, y0, x1, y1 = np.floor(np.concatenate([lo, hi]) + 0.5).astype(np.int64)
    level = rgb[y0:y1 + 1, x0:x1 + 1] if x1 >= x0 and y1 >= y0 else rgb[:0, :0]
    for _ in range(depth):
        level = pyramid_down(level)
    if level.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    r = rect - np.array([x0, y0, x0, y0], np.float64)
    for _ in range(depth):
        r = _rect_down(r)
    ctr = np.array([(r[0] + r[2]) / 2, (r[1] + r[3]) / 2])
    tl, tr, bl = ((np.array(p) - ctr) @ rot.T + ctr for p in ((r[0], r[1]), (r[2], r[1]), (r[0], r[3])))
    grid = np.arange(size, dtype=np.float64)
    u, v = grid[None, :] / (size - 1), grid[:, None] / (size - 1)
    if not exact:
        m = np.array([[(tr[0] - tl[0]) / (size - 1), (bl[0] - tl[0]) / (size - 1), tl[0]],
                      [(tr[1] - tl[1]) / (size - 1), (bl[1] - tl[1]) / (size - 1), tl[1]]])
        out = cv2.warpAffine(level.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT)
        return np.clip(out, 0, 255).astype(np.uint8)  # truncate, as dlib's assign_pixel does
    x = tl[0] + u * (tr[0] - tl[0]) + v * (bl[0] - tl[0])
    y = tl[1] + u * (tr[1] - tl[1]) + v * (bl[1] - tl[1])
    return _bilinear(level, x, y)
