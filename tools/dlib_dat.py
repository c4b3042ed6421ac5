"""Parser for dlib's serialized ``dlib_face_recognition_resnet_model_v1.dat``.

dlib writes networks with its own binary serialization (``dlib/serialize.h``):

* integers: one control byte (low nibble = number of payload bytes, bit 0x80 = negative)
  followed by the magnitude in little-endian order;
* strings: a length (integer as above) then the raw bytes;
* bools: one ASCII byte ``'0'`` / ``'1'``;
* ``float`` / ``double`` scalars: an int64 mantissa and an int16 exponent, each an
  integer as above, value = mantissa * 2**exponent;
* ``tensor``: a version integer (2), four int64 dims ``(n, k, rows, cols)`` and then the raw
  little-endian float32 payload;
* ``alias_tensor``: a version integer (1) then four dims (no payload).

``add_layer`` serializes its sub-network before its own layer details, so the file holds the
loss header, the wrapper versions outermost-first, the input layer and then every layer's
details in forward order.  Tag and skip layers contribute only a version integer.

This module only *reads* the file.  It knows the per-layer formats used by the face
recognition network (``con_4``/``con_5``, ``affine_``, ``relu_``, ``max_pool_2``,
``avg_pool_2``, ``add_prev_``, ``fc_2``) and checks that the whole file is consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DlibFormatError(ValueError):
    """Raised when the file does not follow the expected dlib serialization."""


@dataclass
class Layer:
    """One layer's details, in forward order.

    ``kind`` is the dlib serialization tag (e.g. ``"con"``, ``"affine"``); ``arrays`` holds
    the float32 parameters (conv filters ``(out, in, kh, kw)``, biases, gamma, beta, fc
    weights ``(in, out)``) and ``attrs`` the integer attributes (stride, padding, ...).
    """

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, int | float] = field(default_factory=dict)


@dataclass
class DlibNet:
    """The parsed network: input normalisation plus the layer details in forward order."""

    loss: str
    input_rows: int
    input_cols: int
    mean_rgb: tuple[float, float, float]
    wrapper_versions: list[int]
    layers: list[Layer]

    @property
    def num_params(self) -> int:
        """Total number of stored float parameters."""
        return int(sum(a.size for layer in self.layers for a in layer.arrays.values()))


class _Reader:
    """Cursor over the raw bytes implementing dlib's primitive decoders."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def string(self) -> str:
        n = self.integer()
        if not 0 <= n < 1 << 16:
            raise DlibFormatError(f"implausible string length {n} at {self.pos}")
        return self._take(n).decode("ascii")

    def boolean(self) -> bool:
        b = self._take(1)
        if b not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {b!r} at {self.pos - 1}")
        return b == b"1"

    def scalar(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise DlibFormatError(f"unexpected tensor version {version} at {self.pos}")
        dims = tuple(self.integer() for _ in range(4))
        count = int(np.prod(dims))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.integer()
        if version != 1:
            raise DlibFormatError(f"unexpected alias_tensor version {version} at {self.pos}")
        n, k, r, c = (self.integer() for _ in range(4))
        return n, k, r, c

    def peek_string(self, expected: str) -> bool:
        """True if the next item is the string ``expected`` (cursor unchanged)."""
        save = self.pos
        try:
            return self.string() == expected
        except (DlibFormatError, UnicodeDecodeError):
            return False
        finally:
            self.pos = save


def _read_layer(r: _Reader) -> Layer:
    """Read one layer's details (the part written by the layer's own ``serialize``)."""
    tag = r.string()
    if tag in ("con_4", "con_5"):
        params = r.tensor().reshape(-1)
        num_filters = r.integer()
        nr, nc = r.integer(), r.integer()
        stride_y, stride_x = r.integer(), r.integer()
        pad_y, pad_x = r.integer(), r.integer()
        fshape = r.alias_tensor()
        bshape = r.alias_tensor()
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.scalar()
        use_bias = r.boolean() if tag == "con_5" else True
        nfilt = int(np.prod(fshape))
        filters = params[:nfilt].reshape(fshape)
        arrays = {"filters": filters}
        if use_bias:
            arrays["bias"] = params[nfilt : nfilt + int(np.prod(bshape))].copy()
        if filters.shape[0] != num_filters or filters.shape[2:] != (nr, nc):
            raise DlibFormatError(f"inconsistent con_ shapes {fshape} vs {num_filters},{nr},{nc}")
        if params.size != nfilt + (bshape[1] if use_bias else 0):
            raise DlibFormatError("con_ parameter count mismatch")
        return Layer(
            "con",
            arrays,
            {"stride_y": stride_y, "stride_x": stride_x, "pad_y": pad_y, "pad_x": pad_x},
        )
    if tag == "affine_":
        params = r.tensor().reshape(-1)
        gshape = r.alias_tensor()
        r.alias_tensor()  # beta shape == gamma shape
        mode = r.integer()
        n = int(np.prod(gshape))
        if params.size != 2 * n:
            raise DlibFormatError("affine_ parameter count mismatch")
        arrays = {"gamma": params[:n].copy(), "beta": params[n:].copy()}
        return Layer("affine", arrays, {"mode": mode})
    if tag == "relu_":
        return Layer("relu")
    if tag in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.integer() for _ in range(6))
        kind = "max_pool" if tag.startswith("max") else "avg_pool"
        return Layer(
            kind,
            attrs={"nr": nr, "nc": nc, "stride_y": sy, "stride_x": sx, "pad_y": py, "pad_x": px},
        )
    if tag == "add_prev_":
        return Layer("add_prev")
    if tag == "fc_2":
        num_outputs = r.integer()
        num_inputs = r.integer()
        params = r.tensor().reshape(-1)
        wshape = r.alias_tensor()
        bshape = r.alias_tensor()
        bias_mode = r.integer()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for _ in range(4):
            r.scalar()
        nw = num_inputs * num_outputs
        arrays = {"weights": params[:nw].reshape(num_inputs, num_outputs)}
        if bias_mode == 0:
            arrays["bias"] = params[nw : nw + int(np.prod(bshape))].copy()
        if wshape[:2] != (num_inputs, num_outputs):
            raise DlibFormatError(f"unexpected fc weight shape {wshape}")
        return Layer("fc_no_bias" if bias_mode == 1 else "fc", arrays, {"bias_mode": bias_mode})
    raise DlibFormatError(f"unsupported layer type {tag!r} at offset {r.pos}")


def _skip_add_layer_state(r: _Reader, bottom: bool) -> None:
    """Skip the training state ``add_layer`` writes after the details.

    Three bools (setup called, gradient stale, output disabled) and three tensors
    (x_grad, cached_output, params_grad); the bottom layer (the one holding the input layer)
    additionally stores its sample-expansion factor.
    """
    for _ in range(3):
        r.boolean()
    for _ in range(3):
        r.tensor()
    if bottom:
        r.integer()


def parse_dlib_dat(path: str | Path) -> DlibNet:
    """Parse a dlib ``loss_metric`` + ``input_rgb_image_sized`` network file.

    Raises :class:`DlibFormatError` unless the whole file is consumed exactly.
    """
    r = _Reader(Path(path).read_bytes())
    r.integer()  # loss-layer version
    loss = r.string()
    if loss != "loss_metric_2":
        raise DlibFormatError(f"unsupported loss layer {loss!r}")
    r.scalar()  # margin
    r.scalar()  # distance threshold

    versions: list[int] = []
    while not r.peek_string("input_rgb_image_sized"):
        versions.append(r.integer())
        if len(versions) > 10_000:
            raise DlibFormatError("input layer not found")
    # The last version read belongs to the bottom add_layer (which owns the input layer).
    r.string()
    mean_rgb = (r.scalar(), r.scalar(), r.scalar())
    rows, cols = r.integer(), r.integer()

    layers: list[Layer] = []
    bottom = True
    while r.pos < len(r.data):
        layers.append(_read_layer(r))
        _skip_add_layer_state(r, bottom)
        bottom = False
    return DlibNet(loss, rows, cols, mean_rgb, versions, layers)


def _selftest(path: str) -> None:
    net = parse_dlib_dat(path)
    counts: dict[str, int] = {}
    for layer in net.layers:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    print(net.loss, net.input_rows, net.input_cols, net.mean_rgb)
    print(counts, "params:", net.num_params)


if __name__ == "__main__":
    import sys

    _selftest(sys.argv[1])
