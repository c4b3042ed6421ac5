"""Rebuild a small float TFLite graph (BlazeFace style) as TensorFlow ops.

The MediaPipe BlazeFace ``.tflite`` files store fp16 weights behind
``DEQUANTIZE`` ops and compute in float32.  Converting such a file straight to
a full-integer model is not possible with the TFLite converter (it only
accepts TensorFlow graphs), so this module parses the flatbuffer with the
schema bindings shipped in ``ai_edge_litert`` and replays every operator with
the equivalent ``tf.nn`` op.  The result is an ordinary TensorFlow function
that can be exported via SavedModel and post-training quantized.

Supported builtin ops: CONV_2D, DEPTHWISE_CONV_2D, ADD, SUB, MUL, ABS, MAX_POOL_2D, PAD,
RELU, RESHAPE, CONCATENATION, RESIZE_BILINEAR, DEQUANTIZE (fp16 constants), plus a
``PRELU`` pseudo-op that :meth:`TFLiteGraph.fuse_prelu` substitutes for the
``relu(x) + c * (x - |x|)`` pattern TensorFlow exports PReLU as (MobileFaceNet).
Anything else raises ``NotImplementedError``.

Only used at development time by ``tools/convert_detector.py`` and ``tools/convert_mobilefacenet.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

# TensorType enum of the TFLite schema -> numpy dtype (only what we need).
_TENSOR_DTYPES: dict[int, np.dtype] = {
    schema.TensorType.FLOAT32: np.dtype(np.float32),
    schema.TensorType.FLOAT16: np.dtype(np.float16),
    schema.TensorType.INT32: np.dtype(np.int32),
    schema.TensorType.INT64: np.dtype(np.int64),
    schema.TensorType.UINT8: np.dtype(np.uint8),
    schema.TensorType.INT8: np.dtype(np.int8),
}
_OP_NAMES: dict[int, str] = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_PADDING = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}
#: elementwise binary operators with a fused activation
_BINARY_OPS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "ADD": tf.add,
    "SUB": tf.subtract,
    "MUL": tf.multiply,
}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the source graph."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class OpInfo:
    """An operator of the source graph (builtin options kept as the schema object)."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object | None


@dataclass(frozen=True)
class HeadTransform:
    """Clip the result of a CONV_2D that feeds a model output to [lo, hi].

    Emitted as MAXIMUM + MINIMUM right after the conv.  In int8 these are
    same-scale ops, so the quantizer gives the conv output the clipped range
    instead of the huge, data dependent raw range of far-off anchors.  (A fused
    RELU_N1_TO_1 on a rescaled conv does *not* work: the calibrator records the
    pre-activation range.)
    """

    lo: float
    hi: float


@dataclass
class TFLiteGraph:
    """Parsed single-subgraph TFLite model: tensors, operators, constants."""

    path: Path
    tensors: dict[int, TensorInfo]
    ops: list[OpInfo]
    constants: dict[int, np.ndarray]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    producers: dict[int, OpInfo] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> TFLiteGraph:
        """Parse ``path`` with the flatbuffer object API."""
        path = Path(path)
        model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
        if len(model.subgraphs) != 1:
            raise NotImplementedError("only single-subgraph models are supported")
        sg = model.subgraphs[0]
        tensors: dict[int, TensorInfo] = {}
        constants: dict[int, np.ndarray] = {}
        for i, t in enumerate(sg.tensors):
            dtype = _TENSOR_DTYPES[t.type]
            shape = tuple(int(s) for s in (t.shape if t.shape is not None else ()))
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            tensors[i] = TensorInfo(i, name, shape, dtype)
            buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
            if buf is not None and buf.data is not None and len(buf.data) > 0:
                raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
                constants[i] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        ops: list[OpInfo] = []
        for k, op in enumerate(sg.operators):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            ops.append(
                OpInfo(
                    index=k,
                    name=_OP_NAMES[builtin],
                    inputs=tuple(int(i) for i in op.inputs),
                    outputs=tuple(int(i) for i in op.outputs),
                    options=op.builtinOptions,
                )
            )
        graph = cls(
            path=path,
            tensors=tensors,
            ops=ops,
            constants=constants,
            inputs=tuple(int(i) for i in sg.inputs),
            outputs=tuple(int(i) for i in sg.outputs),
        )
        graph.producers = {o: op for op in ops for o in op.outputs}
        graph._fold_dequantize()
        return graph

    def _fold_dequantize(self) -> None:
        """Turn DEQUANTIZE(fp16 constant) into a float32 constant (exact)."""
        for op in self.ops:
            if op.name == "DEQUANTIZE" and op.inputs[0] in self.constants:
                src = self.constants[op.inputs[0]]
                self.constants[op.outputs[0]] = src.astype(np.float32)

    def output_name(self, index: int) -> str:
        """Name of output tensor ``index``."""
        return self.tensors[index].name

    def output_index(self, name: str) -> int:
        """Tensor index of the graph output called ``name``."""
        for i in self.outputs:
            if self.tensors[i].name == name:
                return i
        raise KeyError(name)

    def fuse_prelu(self) -> int:
        """Replace every ``ADD(RELU(x), MUL(c, SUB(x, ABS(x))))`` by one ``PRELU(x, alpha = 2c)`` pseudo-op.

        relu(x) + c·(x − |x|) = relu(x) + 2c·min(x, 0): a PReLU with slope 2c.  Replayed as
        ``relu(x) + relu(−x)·(−alpha)``, the form the TFLite converter fuses into its own PRELU op.
        Returns the number of patterns replaced.
        """
        replaced = 0
        for k, op in enumerate(list(self.ops)):
            if op.name != "ADD" or op.options.fusedActivationFunction != 0:
                continue
            prods = [self.producers.get(i) for i in op.inputs]
            relu = next((p for p in prods if p is not None and p.name == "RELU"), None)
            mul = next((p for p in prods if p is not None and p.name == "MUL"), None)
            if relu is None or mul is None:
                continue
            x = relu.inputs[0]
            const = next((i for i in mul.inputs if i in self.constants), None)
            sub = next((self.producers.get(i) for i in mul.inputs if i not in self.constants), None)
            if const is None or sub is None or sub.name != "SUB" or sub.inputs[0] != x:
                continue
            absop = self.producers.get(sub.inputs[1])
            if absop is None or absop.name != "ABS" or absop.inputs[0] != x:
                continue
            alpha = (2.0 * self.constants[const].astype(np.float32)).reshape(-1)
            alpha_idx = -1000 - k  # a synthetic constant index, never a real tensor
            self.constants[alpha_idx] = alpha
            self.ops[self.ops.index(op)] = OpInfo(op.index, "PRELU", (x, alpha_idx), op.outputs, None)
            replaced += 1
        # Drop the pattern's now-unused RELU/ABS/SUB/MUL ops (repeat until nothing more is dead).
        while True:
            live = {i for op in self.ops for i in op.inputs} | set(self.outputs)
            keep = [op for op in self.ops if any(o in live for o in op.outputs)]
            if len(keep) == len(self.ops):
                break
            self.ops = keep
        self.producers = {o: op for op in self.ops for o in op.outputs}
        return replaced

    def head_convs(self, output: int) -> list[int]:
        """CONV_2D ops whose result reaches ``output`` only via RESHAPE/CONCATENATION."""
        found: list[int] = []
        stack = [output]
        while stack:
            op = self.producers[stack.pop()]
            if op.name == "CONV_2D":
                found.append(op.index)
            elif op.name in ("RESHAPE", "CONCATENATION"):
                stack.extend(i for i in op.inputs if i not in self.constants)
            else:
                raise ValueError(f"unexpected op {op.name} between head conv and output")
        return sorted(found)

    def consumers(self, tensor: int) -> list[OpInfo]:
        """Operators reading ``tensor``."""
        return [op for op in self.ops if tensor in op.inputs]

    def depthwise_pointwise_pairs(self) -> list[tuple[OpInfo, OpInfo]]:
        """(DEPTHWISE_CONV_2D, 1x1 CONV_2D) pairs with nothing in between.

        The depthwise conv must have no fused activation and feed only the
        pointwise conv, so per-channel rescaling between them is exact.
        """
        pairs: list[tuple[OpInfo, OpInfo]] = []
        for op in self.ops:
            if op.name != "DEPTHWISE_CONV_2D" or op.options.fusedActivationFunction != 0:
                continue
            users = self.consumers(op.outputs[0])
            if len(users) != 1 or users[0].name != "CONV_2D" or op.outputs[0] in self.outputs:
                continue
            pw = users[0]
            w = self.constants[pw.inputs[1]]
            if w.shape[1:3] != (1, 1) or pw.inputs[0] != op.outputs[0]:
                continue
            pairs.append((op, pw))
        return pairs

    def equalize_depthwise(self, act_absmax: Mapping[int, np.ndarray], alpha: float = 0.5) -> list[dict[str, float]]:
        """Cross-layer equalization of depthwise -> pointwise pairs (exact in float).

        ``act_absmax`` maps a depthwise op index to the per-channel max |output|
        seen on calibration data.  Channel ``c`` of the depthwise output is
        divided by ``s_c = a_c**alpha / w_c**(1 - alpha)`` (``w_c``: max
        |pointwise weight| of input channel c) and the pointwise weights of that
        input channel are multiplied by ``s_c``.  With ``alpha = 0.5`` activation
        and weight ranges both become ``sqrt(a_c * w_c)``; larger ``alpha``
        flattens the activation ranges further at the cost of the weights.  This
        evens out the per-tensor int8 activation range that otherwise is
        dominated by a few outlier channels.
        Constants are modified in place.
        """
        summary: list[dict[str, float]] = []
        for dw, pw in self.depthwise_pointwise_pairs():
            if dw.index not in act_absmax:
                continue
            for idx in (dw.inputs[1], dw.inputs[2], pw.inputs[1]):
                if len(self.consumers(idx)) != 1:
                    raise ValueError(f"constant {idx} is shared; cannot equalize")
            a = np.maximum(np.asarray(act_absmax[dw.index], np.float64), 1e-6)
            w_pw = self.constants[pw.inputs[1]].astype(np.float64)  # [O, 1, 1, C]
            w = np.maximum(np.abs(w_pw).max(axis=(0, 1, 2)), 1e-8)
            scale = a**alpha / w ** (1.0 - alpha)
            self.constants[dw.inputs[1]] = (self.constants[dw.inputs[1]] / scale).astype(np.float32)
            self.constants[dw.inputs[2]] = (self.constants[dw.inputs[2]] / scale).astype(np.float32)
            self.constants[pw.inputs[1]] = (w_pw * scale).astype(np.float32)
            new_a = a / scale
            summary.append(
                {
                    "depthwise_op": dw.index,
                    "act_range_max_before": float(a.max()),
                    "act_range_max_after": float(new_a.max()),
                    "act_range_median_before": float(np.median(a)),
                    "act_range_median_after": float(np.median(new_a)),
                }
            )
        return summary

    def build(
        self,
        head_transforms: Mapping[int, HeadTransform] | None = None,
        keep: Sequence[int] = (),
        relu_cap: float | None = None,
        free_batch: bool = False,
    ) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
        """Return ``fn(x) -> {output_name: tensor}`` replaying the graph in TF.

        ``x`` is the model's own input (float32, already normalised).
        ``head_transforms`` maps CONV_2D op indices to a :class:`HeadTransform`.
        Intermediate tensors listed in ``keep`` are returned under ``keep_key(index)``.
        ``free_batch``: RESHAPE targets whose first dimension is the source graph's batch size get -1 there, so a
        graph exported for a fixed batch (MobileFaceNet: 2) runs at any batch.
        """
        transforms = dict(head_transforms or {})
        consts = {
            i: tf.constant(v.astype(np.float32) if v.dtype == np.float16 else v) for i, v in self.constants.items()
        }

        def fn(x: tf.Tensor) -> dict[str, tf.Tensor]:
            values: dict[int, tf.Tensor] = dict(consts)
            values[self.inputs[0]] = x
            for op in self.ops:
                if op.name == "DEQUANTIZE" and op.outputs[0] in self.constants:
                    continue
                values[op.outputs[0]] = self._apply(op, values, transforms.get(op.index), relu_cap, free_batch)
            result = {self.tensors[i].name: values[i] for i in self.outputs}
            result.update({keep_key(i): values[i] for i in keep})
            return result

        return fn

    def _apply(
        self,
        op: OpInfo,
        v: dict[int, tf.Tensor],
        head: HeadTransform | None,
        relu_cap: float | None = None,
        free_batch: bool = False,
    ) -> tf.Tensor:
        """Emit the TF equivalent of one TFLite operator."""
        o = op.options
        ins = op.inputs
        if op.name == "CONV_2D":
            return self._conv_2d(o, ins, v, head)
        if op.name == "DEPTHWISE_CONV_2D":
            return self._depthwise_conv_2d(o, ins, v)
        if op.name in _BINARY_OPS:
            return _activation(_BINARY_OPS[op.name](v[ins[0]], v[ins[1]]), o.fusedActivationFunction)
        if op.name == "ABS":
            return tf.abs(v[ins[0]])
        if op.name == "PRELU":
            # Exactly the Keras PReLU form relu(x) + relu(−x)·(−alpha), alpha shaped (1, 1, C), that the converter's
            # MatchPreluOp pattern folds into one PRELU op (checked: a (C,) alpha or relu(x) − alpha·relu(−x) stay
            # NEG/RELU/MUL/ADD, and NEG then runs in float between DEQUANTIZE/QUANTIZE in the int8 model).
            neg_alpha = tf.constant(-self.constants[ins[1]].reshape(1, 1, -1))
            return tf.nn.relu(v[ins[0]]) + tf.nn.relu(tf.negative(v[ins[0]])) * neg_alpha
        if op.name == "RELU":
            # Optional cap (MINIMUM, same-scale in int8) bounds the calibrated
            # range of the residual trunk, which otherwise has rare outliers.
            if relu_cap is not None:
                return tf.minimum(tf.nn.relu(v[ins[0]]), relu_cap)
            return tf.nn.relu(v[ins[0]])
        if op.name == "MAX_POOL_2D":
            y = tf.nn.max_pool2d(
                v[ins[0]],
                ksize=[1, o.filterHeight, o.filterWidth, 1],
                strides=[1, o.strideH, o.strideW, 1],
                padding=_PADDING[o.padding],
            )
            return _activation(y, o.fusedActivationFunction)
        if op.name == "PAD":
            return tf.pad(v[ins[0]], tf.constant(self.constants[ins[1]].astype(np.int32)))
        if op.name == "RESHAPE":
            return self._reshape(o, ins, v, free_batch)
        if op.name == "CONCATENATION":
            y = tf.concat([v[i] for i in ins], axis=int(o.axis))
            return _activation(y, o.fusedActivationFunction)
        if op.name == "RESIZE_BILINEAR":
            size = [int(s) for s in self.constants[ins[1]]]
            return tf.compat.v1.image.resize_bilinear(
                v[ins[0]],
                size,
                align_corners=bool(o.alignCorners),
                half_pixel_centers=bool(o.halfPixelCenters),
            )
        raise NotImplementedError(f"op {op.name} not supported")

    def _conv_2d(
        self, o: Any, ins: tuple[int, ...], v: dict[int, tf.Tensor], head: HeadTransform | None
    ) -> tf.Tensor:
        """CONV_2D: convolution, bias (zeros when absent), fused activation, then the head's clamp if any."""
        w = self.constants[ins[1]].astype(np.float32)  # [O, kh, kw, I]
        b = (
            self.constants[ins[2]].astype(np.float32)
            if len(ins) > 2 and ins[2] >= 0
            else np.zeros(w.shape[0], np.float32)
        )
        y = tf.nn.conv2d(
            v[ins[0]],
            tf.constant(np.transpose(w, (1, 2, 3, 0))),
            strides=[1, o.strideH, o.strideW, 1],
            padding=_PADDING[o.padding],
            dilations=[1, o.dilationHFactor, o.dilationWFactor, 1],
        )
        y = tf.nn.bias_add(y, tf.constant(b))
        y = _activation(y, o.fusedActivationFunction)
        if head is not None:
            y = tf.minimum(tf.maximum(y, head.lo), head.hi)
        return y

    def _depthwise_conv_2d(self, o: Any, ins: tuple[int, ...], v: dict[int, tf.Tensor]) -> tf.Tensor:
        """DEPTHWISE_CONV_2D (undilated): convolution, bias if present, fused activation."""
        w = self.constants[ins[1]].astype(np.float32)  # [1, kh, kw, C*mult]
        c_in = self.tensors[ins[0]].shape[-1]
        mult = int(o.depthMultiplier) or w.shape[-1] // c_in
        kernel = w[0].reshape(w.shape[1], w.shape[2], c_in, mult)
        if o.dilationHFactor != 1 or o.dilationWFactor != 1:
            raise NotImplementedError("dilated depthwise conv")
        y = tf.nn.depthwise_conv2d(
            v[ins[0]],
            tf.constant(kernel),
            strides=[1, o.strideH, o.strideW, 1],
            padding=_PADDING[o.padding],
        )
        if len(ins) > 2 and ins[2] >= 0:
            y = tf.nn.bias_add(y, tf.constant(self.constants[ins[2]].astype(np.float32)))
        return _activation(y, o.fusedActivationFunction)

    def _reshape(self, o: Any, ins: tuple[int, ...], v: dict[int, tf.Tensor], free_batch: bool) -> tf.Tensor:
        """RESHAPE to the constant shape input (else the options' newShape); with `free_batch`, a first dimension
        equal to the source graph's batch size becomes -1."""
        if len(ins) > 1 and ins[1] in self.constants:
            shape = [int(s) for s in self.constants[ins[1]]]
        else:
            shape = [int(s) for s in o.newShape]
        if free_batch and shape and shape[0] == self.tensors[self.inputs[0]].shape[0]:
            shape[0] = -1
        return tf.reshape(v[ins[0]], shape)

def keep_key(index: int) -> str:
    """Result key of an intermediate tensor requested via ``build(keep=...)``."""
    return f"#{index}"


def _activation(x: tf.Tensor, kind: int) -> tf.Tensor:
    """Apply a TFLite fused activation."""
    if kind == schema.ActivationFunctionType.NONE:
        return x
    if kind == schema.ActivationFunctionType.RELU:
        return tf.nn.relu(x)
    if kind == schema.ActivationFunctionType.RELU6:
        return tf.nn.relu6(x)
    if kind == schema.ActivationFunctionType.RELU_N1_TO_1:
        return tf.clip_by_value(x, -1.0, 1.0)
    raise NotImplementedError(f"fused activation {kind}")
