"""BlazeFace face detection: letterbox, anchors, decoding, weighted NMS — pure numpy around one interpreter.

The models (MediaPipe BlazeFace short range 128×128 and full range 192×192, converted by
`tools/convert_detector.py`) take RGB pixels 0..255 and return, per anchor, 16 regressors (box centre, size and
6 keypoints as offsets in input pixels) and a score (a logit, or a probability when the sigmoid is in the graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.errors import ModelError
from edge.types import Detection
from edge.vision.runtime import Model


@dataclass(frozen=True)
class DetectorSpec:
    """Anchor layout of a BlazeFace variant (MediaPipe's SsdAnchorsCalculator options).

    input_size: square input side in pixels. strides: one per anchor layer; consecutive equal strides share a
    grid. anchors_per_layer: anchors per grid cell contributed by each layer.
    """

    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int


SPECS: dict[str, DetectorSpec] = {
    "short_range": DetectorSpec(128, (8, 16, 16, 16), 2),  # 16·16·2 + 8·8·6 = 896 anchors
    "full_range": DetectorSpec(192, (4,), 1),  # 48·48 = 2304 anchors
}


def make_anchors(spec: DetectorSpec) -> np.ndarray:
    """Anchor centres as (N, 2) float32 (x, y) in [0, 1], in the model's output order."""
    grids = []
    i = 0
    while i < len(spec.strides):
        stride, per_cell = spec.strides[i], 0
        while i < len(spec.strides) and spec.strides[i] == stride:
            per_cell += spec.anchors_per_layer
            i += 1
        side = math.ceil(spec.input_size / stride)
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        centres = np.stack([(xs + 0.5) / side, (ys + 0.5) / side], axis=-1).reshape(-1, 1, 2)
        grids.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(grids).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square model input: input = image · scale + (pad_x, pad_y), in pixels."""

    scale: float
    pad_x: int
    pad_y: int


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize an RGB image to fit a size×size square (aspect kept, centred, black padding)."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = resized
    return canvas, Letterbox(scale, pad_x, pad_y)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh so that large logits neither overflow nor warn."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def decode(
    regressors: np.ndarray,
    scores: np.ndarray,
    anchors: np.ndarray,
    input_size: int,
    min_score: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode raw outputs into candidates above `min_score`.

    regressors: (N, 16) input-pixel offsets. scores: (N,) probabilities. Returns boxes (M, 4) x0,y0,x1,y1,
    keypoints (M, 6, 2) and scores (M,), coordinates normalised to the model input ([0, 1]).
    """
    keep = np.flatnonzero(scores >= min_score)
    r = regressors[keep] / np.float32(input_size)
    a = anchors[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    hw, hh = r[:, 2] / 2, r[:, 3] / 2
    boxes = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)
    keypoints = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
    return boxes, keypoints, scores[keep]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (4,) box with (M, 4) boxes (x0, y0, x1, y1)."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted NMS: each cluster (IoU > threshold with the best remaining candidate) becomes one
    detection whose box and keypoints are the score-weighted mean of the cluster and whose score is the best."""
    remaining = np.argsort(-scores, kind="stable")
    out = []
    while remaining.size:
        top = remaining[0]
        in_cluster = iou(boxes[top], boxes[remaining]) > iou_threshold
        in_cluster[0] = True  # a degenerate (zero-area) top box has IoU 0 with itself: it must still be consumed
        cluster = remaining[in_cluster]
        weights = scores[cluster]
        total = weights.sum()
        box = (boxes[cluster] * weights[:, None]).sum(axis=0) / total
        kps = (keypoints[cluster] * weights[:, None, None]).sum(axis=0) / total
        out.append((box, kps, float(scores[top])))
        remaining = remaining[~in_cluster]
    return out


class FaceDetector:
    """Find faces in RGB images of any size.

    model: a loaded BlazeFace model. variant: "short_range" (faces within ~2 m) or "full_range" (up to ~5 m).
    score_kind: "logit" if the model outputs raw logits, "probability" if the sigmoid is in the graph.
    min_score: detection threshold on the probability. iou_threshold: NMS clustering IoU.
    """

    def __init__(
        self,
        model: Model,
        variant: str = "full_range",
        score_kind: str = "logit",
        min_score: float = 0.5,
        iou_threshold: float = 0.3,
    ) -> None:
        if variant not in SPECS:
            raise ModelError(f"unknown detector variant {variant!r}; choose one of {sorted(SPECS)}")
        if score_kind not in ("logit", "probability"):
            raise ModelError(f"detector score kind must be 'logit' or 'probability', got {score_kind!r}")
        self.model = model
        self.spec = SPECS[variant]
        self.variant = variant
        self.score_kind = score_kind
        self.min_score = float(min_score)
        self.iou_threshold = float(iou_threshold)
        self.anchors = make_anchors(self.spec)
        size = self.spec.input_size
        if model.input_shape != (1, size, size, 3):
            raise ModelError(f"detector model {model.name} has input {model.input_shape}; "
                             f"{variant} needs (1, {size}, {size}, 3)")
        shapes = model.output_shapes
        try:
            self._reg_idx = next(i for i, s in enumerate(shapes) if s[-1] == 16)
            self._score_idx = next(i for i, s in enumerate(shapes) if s[-1] == 1)
        except StopIteration:
            raise ModelError(
                f"detector model {model.name} outputs {shapes}; expected (1, N, 16) and (1, N, 1)") from None
        if shapes[self._reg_idx][1] != len(self.anchors):
            raise ModelError(
                f"detector model {model.name} has {shapes[self._reg_idx][1]} anchors; {variant} has {len(self.anchors)}"
            )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB image, best score first, coordinates in image pixels."""
        size = self.spec.input_size
        tensor, lb = letterbox(rgb, size)
        outputs = self.model.run(tensor)
        regressors = outputs[self._reg_idx].reshape(-1, 16)
        raw = outputs[self._score_idx].reshape(-1)
        scores = sigmoid(raw) if self.score_kind == "logit" else raw
        boxes, keypoints, scores = decode(regressors, scores, self.anchors, size, self.min_score)
        if not len(scores):
            return []
        offset = np.array([lb.pad_x, lb.pad_y], dtype=np.float32)
        detections = []
        for box, kps, score in weighted_nms(boxes, keypoints, scores, self.iou_threshold):
            b = ((box.reshape(2, 2) * size - offset) / lb.scale).reshape(-1)
            k = (kps * size - offset) / lb.scale
            detections.append(
                Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), score=score,
                          keypoints=k.astype(np.float32))
            )
        return detections
