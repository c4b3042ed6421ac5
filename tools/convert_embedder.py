"""Convert dlib's ResNet face descriptor to TFLite (float32 reference + full-int8 shipped).

Source model
    ``dlib_face_recognition_resnet_model_v1.dat`` (CC0, Davis E. King) as shipped in the
    ``face_recognition_models`` package.  It is parsed directly (see ``tools/dlib_dat.py``),
    rebuilt as a TensorFlow graph, exported through a SavedModel and converted with the
    TFLite converter.

Model contract (both outputs)
    input  ``[1, 150, 150, 3]``: a dlib face chip (``dlib.get_face_chip(img, shape_5pt,
           size=150, padding=0.25)``), RGB, pixel values 0..255.  The float32 model takes
           float32, the int8 model takes uint8 (scale 1, zero point 0: feed the raw chip).
           dlib's normalisation ``(x - mean_rgb) / 256`` is part of both graphs (in the int8
           model it is folded exactly into the first, unpadded convolution).
    output ``[1, 128]`` float32: dlib's raw descriptor (not L2-normalised); compare with the
           Euclidean distance like dlib (threshold ~0.6).  The int8 model is full-integer
           (``TFLITE_BUILTINS_INT8`` only) with a float32 output (final DEQUANTIZE).

Pinned versions (dev-time only; the appliance only needs a TFLite interpreter)
    tensorflow-cpu==2.21.0, tf-keras==2.21.0, dlib-bin==20.0.1.post1,
    face_recognition_models==0.3.0, ai-edge-litert==2.3.0, numpy 2.x, pillow.

Calibration / verification data
    Real face chips made with dlib itself: HOG detector + the 5-point shape predictor
    (never the 68-point one, whose licence excludes commercial use) + ``get_face_chip``.
    Every ``--calib-dir`` must hold a ``manifest.csv`` with ``path`` and ``identity``
    columns (paths relative to the folder); 150x150 images are taken as ready chips.
    Every 4th identity (sorted) is held out of calibration; parity is reported on the
    held-out chips and on all chips.  Calibration uses the remaining chips plus their
    horizontal flips (``--experiments`` also tries shifted/brightness-scaled copies and
    per-tensor weights; the default recipe scored best, see the report).

Run (from the repository root)::

    TF_CPP_MIN_LOG_LEVEL=2 /root/venvs/tools/bin/python tools/convert_embedder.py \\
        --out models/ \\
        --calib-dir /work/shared/data/dlib_johns --calib-dir /work/shared/data/deepface \\
        --calib-dir /work/shared/data/face_recognition \\
        --calib-dir /work/shared/data/facenet_pytorch \\
        --report /tmp/edge_work/embedder_report.json

``--experiments`` additionally converts and scores the alternative quantization recipes
and runs TFLite's QuantizationDebugger; ``--compat-python PY`` loads both models in another
Python that has ``tflite-runtime`` (e.g. 2.14 with numpy<2) and records their parity;
``--skip-latency`` skips the timing runs; ``--chip-cache F.npz`` caches the detected chips.
Conversion is deterministic: the same inputs give byte-identical files.  The script prints
the sha256 of each written model.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlib_dat import DlibNet, Layer, parse_dlib_dat  # noqa: E402

CHIP_SIZE = 150
CHIP_PADDING = 0.25
HOLDOUT_EVERY = 4
FLOAT_NAME = "dlib_resnet_v1_float32.tflite"
INT8_NAME = "dlib_resnet_v1_int8.tflite"
SAME_PERSON_THRESHOLD = 0.6
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# --------------------------------------------------------------------------------------
# Network structure


@dataclass
class ConvSpec:
    """A dlib ``con`` followed by its ``affine`` (batch norm), folded into one conv."""

    kernel: np.ndarray  # HWIO float32
    bias: np.ndarray  # (out,) float32
    stride: int
    padding: str  # "SAME" or "VALID"


@dataclass
class ResUnit:
    """``relu(add_prev(block(x), shortcut(x)))`` with block = conv-bn-relu-conv-bn."""

    conv1: ConvSpec
    conv2: ConvSpec
    downsample: bool  # shortcut is a 2x2/2 average pool (dlib ``residual_down``)


@dataclass
class ResNetSpec:
    """The face-recognition ResNet in TensorFlow-friendly form."""

    mean_rgb: np.ndarray  # (3,) float32
    stem: ConvSpec
    pool_size: int
    pool_stride: int
    units: list[ResUnit]
    fc: np.ndarray  # (in, out) float32
    input_size: int = CHIP_SIZE


def _conv_padding(layer: Layer, kh: int, kw: int) -> str:
    """Map dlib's symmetric padding to TensorFlow's SAME/VALID (exactly, or fail)."""
    a = layer.attrs
    if a["pad_y"] == 0 and a["pad_x"] == 0:
        return "VALID"
    if (
        a["stride_y"] == 1
        and a["stride_x"] == 1
        and kh % 2 == 1
        and kw % 2 == 1
        and a["pad_y"] == kh // 2
        and a["pad_x"] == kw // 2
    ):
        return "SAME"
    raise ValueError(f"padding {a} has no exact SAME/VALID equivalent")


def _fold_conv_affine(con: Layer, affine: Layer) -> ConvSpec:
    """Fold ``affine`` (gamma, beta per output channel) into the preceding conv."""
    if con.kind != "con" or affine.kind != "affine":
        raise ValueError(f"expected con+affine, got {con.kind}+{affine.kind}")
    if con.attrs["stride_y"] != con.attrs["stride_x"]:
        raise ValueError("anisotropic stride not supported")
    filters = con.arrays["filters"].astype(np.float64)  # (out, in, kh, kw)
    bias = con.arrays.get("bias", np.zeros(filters.shape[0], np.float32)).astype(np.float64)
    gamma = affine.arrays["gamma"].astype(np.float64).reshape(-1)
    beta = affine.arrays["beta"].astype(np.float64).reshape(-1)
    kernel = np.transpose(filters * gamma[:, None, None, None], (2, 3, 1, 0))
    return ConvSpec(
        kernel=kernel.astype(np.float32),
        bias=(bias * gamma + beta).astype(np.float32),
        stride=int(con.attrs["stride_y"]),
        padding=_conv_padding(con, filters.shape[2], filters.shape[3]),
    )


def build_spec(net: DlibNet) -> ResNetSpec:
    """Match the parsed layer list against dlib's ``anet_type`` and fold batch norms.

    Expected forward order: ``con affine relu max_pool``, then residual units
    ``con affine relu con affine [avg_pool] add_prev relu``, then ``avg_pool`` (global)
    and ``fc_no_bias``.
    """
    L = net.layers  # noqa: N806  (short name keeps the pattern matching readable)
    kinds = [layer.kind for layer in L]
    if kinds[:4] != ["con", "affine", "relu", "max_pool"]:
        raise ValueError(f"unexpected stem {kinds[:4]}")
    stem = _fold_conv_affine(L[0], L[1])
    mp = L[3].attrs
    if mp["pad_y"] or mp["pad_x"] or mp["nr"] != mp["nc"] or mp["stride_y"] != mp["stride_x"]:
        raise ValueError(f"unsupported max_pool {mp}")
    i = 4
    units: list[ResUnit] = []
    while kinds[i] == "con":
        if kinds[i : i + 5] != ["con", "affine", "relu", "con", "affine"]:
            raise ValueError(f"unexpected block at layer {i}: {kinds[i:i + 5]}")
        conv1 = _fold_conv_affine(L[i], L[i + 1])
        conv2 = _fold_conv_affine(L[i + 3], L[i + 4])
        i += 5
        down = kinds[i] == "avg_pool"
        if down:
            a = L[i].attrs
            if (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["pad_y"], a["pad_x"]) != (
                2, 2, 2, 2, 0, 0,
            ):
                raise ValueError(f"unexpected shortcut pool {a}")
            i += 1
        if kinds[i : i + 2] != ["add_prev", "relu"]:
            raise ValueError(f"expected add_prev relu at layer {i}, got {kinds[i:i + 2]}")
        i += 2
        units.append(ResUnit(conv1, conv2, down))
    if kinds[i:] != ["avg_pool", "fc_no_bias"] or L[i].attrs["nr"] != 0:
        raise ValueError(f"unexpected head {kinds[i:]}")
    return ResNetSpec(
        mean_rgb=np.asarray(net.mean_rgb, np.float32),
        stem=stem,
        pool_size=int(mp["nr"]),
        pool_stride=int(mp["stride_y"]),
        units=units,
        fc=L[i + 1].arrays["weights"].astype(np.float32),
        input_size=net.input_rows,
    )


def fold_input_normalisation(stem: ConvSpec, mean_rgb: np.ndarray) -> ConvSpec:
    """Fold ``(x - mean) / 256`` into an unpadded (VALID) first convolution exactly.

    conv((x - m) / 256, W) + b == conv(x, W / 256) + (b - sum_{h,w,i} W[h,w,i,:] m_i / 256)
    holds for every output position because a VALID conv never reads padding.
    """
    if stem.padding != "VALID":
        raise ValueError("input normalisation can only be folded into a VALID conv")
    k = stem.kernel.astype(np.float64)
    shift = np.einsum("hwio,i->o", k, mean_rgb.astype(np.float64)) / 256.0
    bias = stem.bias.astype(np.float64) - shift
    return ConvSpec(
        (k / 256.0).astype(np.float32), bias.astype(np.float32), stem.stride, stem.padding
    )


# --------------------------------------------------------------------------------------
# TensorFlow graph + TFLite conversion


def make_tf_module(spec: ResNetSpec, fold_norm: bool) -> Any:
    """Return a ``tf.Module`` whose ``serve`` maps [1,150,150,3] RGB 0..255 to [1,128]."""
    import tensorflow as tf

    class DlibFaceResNet(tf.Module):
        """dlib_face_recognition_resnet_model_v1 as TensorFlow ops (batch norm folded)."""

        def __init__(self) -> None:
            super().__init__(name="dlib_face_resnet_v1")
            stem = fold_input_normalisation(spec.stem, spec.mean_rgb) if fold_norm else spec.stem
            self._convs: list[tuple[tf.Variable, tf.Variable, int, str]] = []

            def var(c: ConvSpec) -> int:
                self._convs.append(
                    (tf.Variable(c.kernel, trainable=False), tf.Variable(c.bias, trainable=False),
                     c.stride, c.padding)
                )
                return len(self._convs) - 1

            self._stem = var(stem)
            self._units = [(var(u.conv1), var(u.conv2), u.downsample) for u in spec.units]
            self._fc = tf.Variable(spec.fc, trainable=False)
            self._mean = tf.constant(spec.mean_rgb.reshape(1, 1, 1, 3))

        def _conv(self, x: tf.Tensor, idx: int) -> tf.Tensor:
            kernel, bias, stride, padding = self._convs[idx]
            y = tf.nn.conv2d(x, kernel, strides=stride, padding=padding)
            return tf.nn.bias_add(y, bias)

        @tf.function(
            input_signature=[
                tf.TensorSpec([1, spec.input_size, spec.input_size, 3], tf.float32, name="image")
            ]
        )
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            x = image if fold_norm else (image - self._mean) * (1.0 / 256.0)
            x = tf.nn.relu(self._conv(x, self._stem))
            x = tf.nn.max_pool2d(x, spec.pool_size, spec.pool_stride, "VALID")
            for c1, c2, down in self._units:
                y = self._conv(tf.nn.relu(self._conv(x, c1)), c2)
                sc = tf.nn.avg_pool2d(x, 2, 2, "VALID") if down else x
                # dlib's add_prev zero-pads the smaller operand (bottom/right, channels).
                ys, ss = y.shape, sc.shape
                h, w, c = max(ys[1], ss[1]), max(ys[2], ss[2]), max(ys[3], ss[3])
                if (ys[1], ys[2], ys[3]) != (h, w, c):
                    y = tf.pad(y, [[0, 0], [0, h - ys[1]], [0, w - ys[2]], [0, c - ys[3]]])
                if (ss[1], ss[2], ss[3]) != (h, w, c):
                    sc = tf.pad(sc, [[0, 0], [0, h - ss[1]], [0, w - ss[2]], [0, c - ss[3]]])
                x = tf.nn.relu(y + sc)
            x = tf.nn.avg_pool2d(x, [x.shape[1], x.shape[2]], 1, "VALID")  # avg_pool_everything
            x = tf.reshape(x, [1, x.shape[3]])
            return {"descriptor": tf.matmul(x, self._fc)}

    return DlibFaceResNet()


def export_saved_model(spec: ResNetSpec, fold_norm: bool, directory: Path) -> Path:
    """Export the graph as a SavedModel (weights included) and return its path."""
    import tensorflow as tf

    module = make_tf_module(spec, fold_norm)
    path = directory / ("saved_model_folded" if fold_norm else "saved_model")
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@dataclass(frozen=True)
class QuantRecipe:
    """Settings for one full-integer post-training quantization run."""

    name: str
    augment: bool = False  # shifted / brightness-scaled copies on top of flips
    per_channel: bool = True
    description: str = ""


DEFAULT_RECIPE = QuantRecipe(
    "per_channel_flips", augment=False, per_channel=True,
    description="per-channel weights; calibration chips + horizontal flips",
)
EXPERIMENT_RECIPES = [
    DEFAULT_RECIPE,
    QuantRecipe("per_channel_flips_aug", augment=True, per_channel=True,
                description="per-channel weights; chips + flips + shifted/brightness copies"),
    QuantRecipe("per_tensor_flips", augment=False, per_channel=False,
                description="_experimental_disable_per_channel=True; chips + flips"),
    QuantRecipe("per_tensor_flips_aug", augment=True, per_channel=False,
                description="_experimental_disable_per_channel=True; chips + flips + aug"),
]


def convert_float32(saved_model: Path) -> bytes:
    """Plain float32 conversion (reference model)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    return converter.convert()


def int8_converter(saved_model: Path, calib: np.ndarray, recipe: QuantRecipe) -> Any:
    """A configured full-integer converter (uint8 input, float32 output)."""
    import tensorflow as tf

    def representative() -> Iterator[list[np.ndarray]]:
        for chip in calib:
            yield [chip[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    converter._experimental_disable_per_channel = not recipe.per_channel  # noqa: SLF001
    return converter


def calibration_set(chips: np.ndarray, augment: bool, seed: int = 0) -> np.ndarray:
    """Calibration chips: originals + horizontal flips (+ shifted / brightness copies).

    The first sample gets one pixel at 0 and one at 255 so that the calibrated input range
    is exactly [0, 255] (uint8 scale 1, zero point 0 -> the caller feeds raw pixels).
    """
    out = [chips, chips[:, :, ::-1]]
    if augment:
        rng = np.random.default_rng(seed)
        aug = []
        for chip in np.concatenate(out):
            dy, dx = rng.integers(-3, 4, size=2)
            shifted = np.roll(chip, (int(dy), int(dx)), axis=(0, 1))
            gain = rng.uniform(0.8, 1.2)
            aug.append(np.clip(shifted.astype(np.float32) * gain, 0, 255).astype(np.uint8))
        out.append(np.stack(aug))
    cal = np.concatenate(out).copy()
    if cal.min() > 0 or cal.max() < 255:
        cal[0, 0, 0, 0] = 0
        cal[0, 0, 1, 0] = 255
    return cal


# --------------------------------------------------------------------------------------
# Data: dlib face chips


@dataclass
class ChipSet:
    """Face chips with their provenance and the hold-out mask."""

    chips: np.ndarray  # (N, 150, 150, 3) uint8 RGB
    sources: list[str]
    identities: list[str]
    held_out: np.ndarray  # (N,) bool
    skipped: list[str] = field(default_factory=list)


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def make_chips(calib_dirs: Sequence[Path], models_dir: Path) -> ChipSet:
    """Detect (HOG), align (5-point) and crop 150x150 chips from every manifest image."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models_dir / "shape_predictor_5_face_landmarks.dat"))
    chips: list[np.ndarray] = []
    sources: list[str] = []
    idents: list[str] = []
    skipped: list[str] = []
    for root in calib_dirs:
        with open(root / "manifest.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            rel = row["path"]
            if row.get("byte_duplicate_of"):
                continue  # identical file already listed
            path = root / rel
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.exists():
                skipped.append(f"{root.name}/{rel}: missing or not an image")
                continue
            img = _load_rgb(path)
            ident = row.get("identity") or "unknown"
            if img.shape[:2] == (CHIP_SIZE, CHIP_SIZE):
                found = [img]
            else:
                upsample = 1 if max(img.shape[:2]) <= 1200 else 0
                dets = detector(img, upsample)
                if not dets and upsample == 0:
                    dets = detector(img, 1)
                found = [
                    dlib.get_face_chip(img, predictor(img, d), size=CHIP_SIZE, padding=CHIP_PADDING)
                    for d in dets
                ]
                if not found:
                    skipped.append(f"{root.name}/{rel}: no face found")
            for k, chip in enumerate(found):
                chips.append(np.ascontiguousarray(chip, dtype=np.uint8))
                sources.append(f"{root.name}/{rel}#{k}")
                idents.append(f"{root.name}:{ident}")
    groups = sorted({i for ident in idents for i in _split_ident(ident)})
    held = {g for n, g in enumerate(groups) if n % HOLDOUT_EVERY == HOLDOUT_EVERY - 1}
    mask = np.array([any(i in held for i in _split_ident(ident)) for ident in idents])
    return ChipSet(np.stack(chips), sources, idents, mask, skipped)


def _split_ident(ident: str) -> list[str]:
    """``"ds:a;b"`` -> ``["ds:a", "ds:b"]`` (multi-face images list every person)."""
    ds, _, names = ident.partition(":")
    return [f"{ds}:{n}" for n in names.split(";")]


# --------------------------------------------------------------------------------------
# Evaluation


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_interpreter(model: bytes | Path, threads: int = 2, xnnpack: bool = True) -> Any:
    """ai_edge_litert interpreter; ``xnnpack=False`` uses only the builtin (reference) kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_path": str(model)} if isinstance(model, Path) else {"model_content": model}
    interp = Interpreter(num_threads=threads, experimental_op_resolver_type=resolver, **source)
    interp.allocate_tensors()
    return interp


_COMPAT_SNIPPET = """
import sys, numpy as np
from tflite_runtime import __version__ as version
from tflite_runtime.interpreter import Interpreter
chips = np.load(sys.argv[2])
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
res = []
for c in chips:
    it.set_tensor(inp["index"], c[None].astype(inp["dtype"]))
    it.invoke()
    res.append(it.get_tensor(out["index"])[0].astype(np.float32))
np.save(sys.argv[3], np.stack(res))
print(version)
"""


def run_compat_runtime(
    python: Path, model: Path, chips: np.ndarray, tmpdir: Path
) -> tuple[str, np.ndarray]:
    """Run ``model`` in another Python that has ``tflite_runtime`` (e.g. 2.14) installed."""
    import subprocess

    src, dst = tmpdir / "compat_chips.npy", tmpdir / "compat_out.npy"
    np.save(src, chips)
    done = subprocess.run(
        [str(python), "-c", _COMPAT_SNIPPET, str(model), str(src), str(dst)],
        check=True, capture_output=True, text=True,
    )
    return done.stdout.strip().splitlines()[-1], np.load(dst)


def run_tflite(interp: Any, chips: np.ndarray) -> np.ndarray:
    """Descriptors for uint8 chips; quantizes the input if the model expects integers."""
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    res = np.empty((len(chips), 128), np.float32)
    for n, chip in enumerate(chips):
        x = chip[None].astype(np.float32)
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            oscale, ozero = out["quantization"]
            y = (y - ozero) * oscale
        res[n] = y.reshape(-1)
    return res


def dlib_descriptors(chips: np.ndarray, model_path: Path) -> np.ndarray:
    import dlib

    model = dlib.face_recognition_model_v1(str(model_path))
    return np.stack(
        [np.asarray(model.compute_face_descriptor(np.ascontiguousarray(c)), np.float32)
         for c in chips]
    )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def parity(ref: np.ndarray, got: np.ndarray) -> dict[str, float | int]:
    """Agreement of two descriptor sets (row-aligned)."""
    cos = _cos(ref, got)
    l2 = np.linalg.norm(ref - got, axis=1)
    return {
        "n": int(len(ref)),
        "max_abs_diff": float(np.max(np.abs(ref - got))),
        "cosine_min": float(cos.min()),
        "cosine_median": float(np.median(cos)),
        "cosine_mean": float(cos.mean()),
        "l2_err_max": float(l2.max()),
        "l2_err_median": float(np.median(l2)),
    }


def pair_agreement(ref: np.ndarray, got: np.ndarray, same: np.ndarray) -> dict[str, float | int]:
    """Euclidean distances over all chip pairs: dlib vs candidate."""
    iu = np.triu_indices(len(ref), 1)

    def dists(d: np.ndarray) -> np.ndarray:
        return np.linalg.norm(d[:, None, :] - d[None, :, :], axis=2)[iu]

    dr, dg = dists(ref), dists(got)
    diff = np.abs(dr - dg)
    flips = (dr < SAME_PERSON_THRESHOLD) != (dg < SAME_PERSON_THRESHOLD)
    s = same[iu]
    return {
        "pairs": int(len(dr)),
        "same_identity_pairs": int(s.sum()),
        "dist_abs_diff_max": float(diff.max()),
        "dist_abs_diff_median": float(np.median(diff)),
        "dist_abs_diff_p99": float(np.percentile(diff, 99)),
        "threshold_0.6_decision_flips": int(flips.sum()),
        "dlib_accuracy_at_0.6": float(np.mean((dr < SAME_PERSON_THRESHOLD) == s)),
        "candidate_accuracy_at_0.6": float(np.mean((dg < SAME_PERSON_THRESHOLD) == s)),
    }


def model_info(path: Path) -> dict[str, Any]:
    """Tensor dtypes, shapes, quantization params, op census, size and hash."""
    interp = make_interpreter(path, 1, xnnpack=False)  # op census without delegate nodes

    def tinfo(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(d["quantization"][0]),
            "zero_point": int(d["quantization"][1]),
        }

    ops: dict[str, int] = {}
    for op in interp._get_ops_details():  # noqa: SLF001
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    tensor_types: dict[str, int] = {}
    for t in interp.get_tensor_details():
        name = np.dtype(t["dtype"]).name
        tensor_types[name] = tensor_types.get(name, 0) + 1
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
        "input": tinfo(interp.get_input_details()[0]),
        "output": tinfo(interp.get_output_details()[0]),
        "ops": ops,
        "tensor_dtypes": tensor_types,
    }


def time_it(fn: Callable[[int], None], n_items: int, warmup: int = 5, runs: int = 60) -> float:
    """Median milliseconds of ``fn(i)`` over ``runs`` calls after ``warmup`` calls."""
    for i in range(warmup):
        fn(i % n_items)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i % n_items)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _tflite_step(interp: Any, chips: np.ndarray) -> Callable[[int], None]:
    """One timed inference: set input chip ``i``, invoke, read the descriptor."""
    inp = interp.get_input_details()[0]
    out_idx = interp.get_output_details()[0]["index"]
    data = chips.astype(inp["dtype"])  # int8 model: uint8, scale 1, zero point 0

    def step(i: int) -> None:
        interp.set_tensor(inp["index"], data[i : i + 1])
        interp.invoke()
        interp.get_tensor(out_idx)

    return step


def latency(float_path: Path, int8_path: Path, dlib_model: Path, chips: np.ndarray,
            runs: int = 100, warmup: int = 10) -> dict[str, Any]:
    """Median ms per chip for both TFLite models (1 and 2 threads) and for dlib."""
    import dlib

    res: dict[str, Any] = {"runs": runs, "warmup": warmup, "cpu_count": os.cpu_count(),
                           "machine": platform.machine(), "processor": _cpu_name()}
    for label, path in (("float32", float_path), ("int8", int8_path)):
        for threads in (1, 2):
            step = _tflite_step(make_interpreter(path, threads), chips)
            res[f"{label}_tflite_threads{threads}_ms"] = time_it(step, len(chips), warmup, runs)
    step = _tflite_step(make_interpreter(int8_path, 1, xnnpack=False), chips)
    res["int8_tflite_builtin_kernels_threads1_ms"] = time_it(step, len(chips), warmup, runs)
    model = dlib.face_recognition_model_v1(str(dlib_model))
    contiguous = [np.ascontiguousarray(c) for c in chips]
    res["dlib_compute_face_descriptor_ms"] = time_it(
        lambda i: model.compute_face_descriptor(contiguous[i]), len(chips), warmup, runs
    )
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def quant_debug(saved_model: Path, calib: np.ndarray, debug: np.ndarray, recipe: QuantRecipe,
                csv_path: Path) -> list[dict[str, Any]]:
    """Per-layer quantization error (TFLite QuantizationDebugger); worst layers first."""
    import tensorflow as tf

    converter = int8_converter(saved_model, calib, recipe)

    def debug_data() -> Iterator[list[np.ndarray]]:
        for chip in debug:
            yield [chip[None].astype(np.float32)]

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_data
    )
    debugger.run()
    with open(csv_path, "w") as fh:
        debugger.layer_statistics_dump(fh)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        # Error in units of the output's quantization step: ~0.29 is pure rounding noise.
        scale = float(r.get("scale") or 0.0)
        mse = float(r.get("mean_squared_error") or 0.0)
        r["rmse/scale"] = mse**0.5 / scale if scale > 0 else 0.0
    rows.sort(key=lambda r: -float(r["rmse/scale"]))
    keep = ("op_name", "tensor_name", "scale", "zero_point", "mean_squared_error", "rmse/scale",
            "mean_error", "max_abs_error")
    return [{k: r[k] for k in keep if k in r} for r in rows[:8]]


# --------------------------------------------------------------------------------------
# Main


def default_models_dir() -> Path:
    import face_recognition_models

    return Path(face_recognition_models.face_recognition_model_location()).parent


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("models"), help="output directory")
    ap.add_argument("--calib-dir", type=Path, action="append", default=[],
                    help="folder with manifest.csv (repeatable)")
    ap.add_argument("--dat", type=Path, default=None, help="dlib .dat (default: package copy)")
    ap.add_argument("--report", type=Path, default=Path("/tmp/edge_work/embedder_report.json"))
    ap.add_argument("--chip-cache", type=Path, default=None,
                    help="optional .npz cache of the detected chips (dev speed-up)")
    ap.add_argument("--experiments", action="store_true",
                    help="also score alternative quantization recipes + QuantizationDebugger")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--compat-python", type=Path, default=None,
                    help="python with tflite_runtime (e.g. 2.14) to check loading + parity")
    args = ap.parse_args(argv)
    if not args.calib_dir:
        ap.error("at least one --calib-dir is needed for int8 calibration")

    import tensorflow as tf

    models_dir = default_models_dir()
    dat = args.dat or models_dir / "dlib_face_recognition_resnet_model_v1.dat"
    report: dict[str, Any] = {
        "source": {"dat": str(dat), "sha256": sha256(dat)},
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    import dlib

    report["versions"]["dlib"] = dlib.__version__

    net = parse_dlib_dat(dat)
    spec = build_spec(net)
    report["source"].update(
        params=net.num_params, layers=len(net.layers), residual_units=len(spec.units),
        mean_rgb=list(map(float, spec.mean_rgb)),
    )
    print(f"parsed {dat.name}: {len(net.layers)} layers, {net.num_params} params")

    # ---- chips
    if args.chip_cache and args.chip_cache.exists():
        z = np.load(args.chip_cache, allow_pickle=False)
        cs = ChipSet(z["chips"], list(z["sources"]), list(z["identities"]), z["held_out"],
                     list(z["skipped"]))
    else:
        cs = make_chips(args.calib_dir, models_dir)
        if args.chip_cache:
            np.savez(args.chip_cache, chips=cs.chips, sources=cs.sources,
                     identities=cs.identities, held_out=cs.held_out, skipped=cs.skipped)
    calib_chips = cs.chips[~cs.held_out]
    report["data"] = {
        "calib_dirs": [str(p) for p in args.calib_dir],
        "chips": int(len(cs.chips)),
        "held_out_chips": int(cs.held_out.sum()),
        "calibration_source_chips": int(len(calib_chips)),
        "identities": len({i for ident in cs.identities for i in _split_ident(ident)}),
        "holdout_rule": f"every {HOLDOUT_EVERY}th identity (sorted dataset:identity)",
        "skipped": cs.skipped,
    }
    print(f"chips: {len(cs.chips)} ({int(cs.held_out.sum())} held out)")
    same = np.array([[bool(set(_split_ident(a)) & set(_split_ident(b))) for b in cs.identities]
                     for a in cs.identities])

    ref = dlib_descriptors(cs.chips, dat)
    report["data"]["dlib_descriptor_norm_median"] = float(np.median(np.linalg.norm(ref, axis=1)))

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convert_embedder_") as tmp:
        tmpdir = Path(tmp)
        # ---- float32 reference
        sm_float = export_saved_model(spec, fold_norm=False, directory=tmpdir)
        float_path = args.out / FLOAT_NAME
        float_path.write_bytes(convert_float32(sm_float))
        f32 = run_tflite(make_interpreter(float_path), cs.chips)
        report["float32"] = model_info(float_path)
        report["float32"]["parity_vs_dlib_all"] = parity(ref, f32)

        # ---- int8
        sm_int8 = export_saved_model(spec, fold_norm=True, directory=tmpdir)
        experiments: list[dict[str, Any]] = []
        recipes = EXPERIMENT_RECIPES if args.experiments else [DEFAULT_RECIPE]
        chosen: bytes | None = None
        for recipe in recipes:
            calib = calibration_set(calib_chips, recipe.augment)
            t0 = time.time()
            model = int8_converter(sm_int8, calib, recipe).convert()
            got = run_tflite(make_interpreter(model), cs.chips)
            held, allp = parity(ref[cs.held_out], got[cs.held_out]), parity(ref, got)
            entry: dict[str, Any] = {
                "recipe": recipe.name,
                "description": recipe.description,
                "calibration_samples": int(len(calib)),
                "convert_seconds": round(time.time() - t0, 1),
                "held_out": held,
                "calibration_chips": parity(ref[~cs.held_out], got[~cs.held_out]),
                "all": allp,
                "pairs_all": pair_agreement(ref, got, same),
            }
            experiments.append(entry)
            print(f"[{recipe.name}] cos min held-out {held['cosine_min']:.5f} "
                  f"all {allp['cosine_min']:.5f}")
            if recipe == DEFAULT_RECIPE:
                chosen = model
        assert chosen is not None
        int8_path = args.out / INT8_NAME
        int8_path.write_bytes(chosen)
        i8 = run_tflite(make_interpreter(int8_path), cs.chips)
        info = model_info(int8_path)
        if (info["input"]["dtype"], info["input"]["scale"], info["input"]["zero_point"]) != (
            "uint8", 1.0, 0,
        ):
            raise RuntimeError(f"int8 input is not raw uint8 pixels: {info['input']}")
        report["int8"] = info
        report["int8"]["recipe"] = DEFAULT_RECIPE.name
        report["int8"]["output_type"] = "float32 (DEQUANTIZE of the int8 FULLY_CONNECTED output)"
        h = cs.held_out
        report["int8"]["parity_vs_dlib"] = {
            "held_out": parity(ref[h], i8[h]),
            "calibration_chips": parity(ref[~h], i8[~h]),
            "all": parity(ref, i8),
            "flipped_all": parity(dlib_descriptors(cs.chips[:, :, ::-1], dat),
                                  run_tflite(make_interpreter(int8_path), cs.chips[:, :, ::-1])),
        }
        report["int8"]["pairs_vs_dlib"] = {
            "all": pair_agreement(ref, i8, same),
            "held_out": pair_agreement(ref[h], i8[h], same[np.ix_(h, h)]),
        }
        report["int8"]["parity_vs_float32_tflite_all"] = parity(f32, i8)
        i8_ref = run_tflite(make_interpreter(int8_path, 1, xnnpack=False), cs.chips)
        report["int8"]["parity_vs_dlib_builtin_kernels"] = {
            "note": "ai_edge_litert without XNNPACK (reference int8 kernels, as on runtimes "
                    "without the XNNPACK int8 path)",
            "held_out": parity(ref[h], i8_ref[h]),
            "all": parity(ref, i8_ref),
            "pairs_all": pair_agreement(ref, i8_ref, same),
        }
        if args.compat_python:
            compat: dict[str, Any] = {"python": str(args.compat_python)}
            for label, path in (("float32", float_path), ("int8", int8_path)):
                version, got = run_compat_runtime(args.compat_python, path, cs.chips, tmpdir)
                compat["tflite_runtime_version"] = version
                compat[label] = {"held_out": parity(ref[h], got[h]), "all": parity(ref, got)}
            report["tflite_runtime_check"] = compat
        report["experiments"] = experiments
        report["recipe_selection"] = (
            f"{DEFAULT_RECIPE.name} is the fixed default; it had the best cosine min on the "
            "calibration chips and on the held-out chips among the --experiments recipes"
        )
        if args.experiments:
            report["quant_debugger_worst_layers"] = quant_debug(
                sm_int8, calibration_set(calib_chips, DEFAULT_RECIPE.augment),
                cs.chips[h][:16], DEFAULT_RECIPE, args.report.with_name("embedder_layer_stats.csv"),
            )

    if not args.skip_latency:
        report["latency"] = latency(float_path, int8_path, dat, cs.chips)

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    for path in (float_path, int8_path):
        print(f"{sha256(path)}  {path}")
    p = report["int8"]["parity_vs_dlib"]
    f32_diff = report["float32"]["parity_vs_dlib_all"]["max_abs_diff"]
    print(f"float32 max|diff| {f32_diff:.2e}; int8 cos min held-out "
          f"{p['held_out']['cosine_min']:.5f} all {p['all']['cosine_min']:.5f}")
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
