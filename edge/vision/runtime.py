"""TFLite runtime: the only module that imports LiteRT or tflite-runtime.

`load_model` reads a model file, checks its sha256 against the manifest *before* handing the bytes to the
interpreter (the bytes that were checked are the bytes that run), and wraps one interpreter in a `Model` whose
`run` takes and returns float or integer arrays: input quantization and output dequantization follow the
tensors' own parameters, so float32 reference models and full-int8 models are called the same way.

An interpreter is not thread-safe: each `Model` is owned by exactly one thread. `invoke()` releases the GIL, so
two threads with two `Model`s run in parallel.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.errors import ModelError
from edge.files import read_file

#: Largest model file read, bytes (the largest shipped, dlib's float32 ResNet, is 22 MB).
MAX_MODEL_BYTES = 1 << 30
#: Runtime backends in order of preference: (name, interpreter module).
BACKENDS: tuple[tuple[str, str], ...] = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)


@dataclass(frozen=True)
class RuntimeOptions:
    """How interpreters are created.

    num_threads: CPU threads per interpreter (≥ 1).
    backend: "auto" (LiteRT, then tflite-runtime), "litert" or "tflite-runtime".
    delegate: path or soname of a delegate library (e.g. "libedgetpu.so.1" for a Coral Edge TPU), or None.
    """

    num_threads: int = 2
    backend: str = "auto"
    delegate: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ModelError(f"num_threads must be an integer ≥ 1, got {self.num_threads!r}")
        names = [name for name, _ in BACKENDS]
        if self.backend != "auto" and self.backend not in names:
            raise ModelError(f"unknown runtime backend {self.backend!r}; choose one of: auto, {', '.join(names)}")


def _import_backend(backend: str) -> tuple[str, Any]:
    """Return (name, interpreter module) for the requested backend, or raise a ModelError naming what to install."""
    tried = []
    for name, module in BACKENDS:
        if backend not in ("auto", name):
            continue
        try:
            return name, importlib.import_module(module)
        except ImportError as err:
            tried.append(f"{name} ({err})")
    raise ModelError(
        "no TFLite runtime is installed: tried " + "; ".join(tried)
        + ". Install `ai-edge-litert` (pip install ai-edge-litert) or `tflite-runtime`."
    )


def available_backend(backend: str = "auto") -> str:
    """Name of the runtime backend that `load_model` would use."""
    return _import_backend(backend)[0]


_DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}


def backend_version(backend: str = "auto") -> str:
    """"<backend> <version> (<module>)" of the runtime `load_model` would use; ModelError when none is installed."""
    from importlib import metadata

    name, module = _import_backend(backend)
    try:
        version = metadata.version(_DISTRIBUTIONS[name])
    except metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown version")
    return f"{name} {version} ({module.__name__})"


def load_delegate(delegate: str, backend: str = "auto") -> Any:
    """Load a delegate library (e.g. "libedgetpu.so.1") with the runtime's loader; ModelError naming the fix."""
    _, module = _import_backend(backend)
    try:
        return module.load_delegate(delegate)
    except (ValueError, OSError, RuntimeError) as err:
        raise ModelError(
            f"delegate {delegate!r} could not be loaded ({err}); install its runtime library"
            " (for a Coral Edge TPU: libedgetpu1-std) or remove `delegate` from the configuration"
        ) from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Model:
    """One interpreter with a single input and one or more outputs.

    `run(x)` accepts a float or uint8 array of the input's shape (without or with the batch axis) and returns the
    outputs as float32 arrays in the model's output order.
    """

    def __init__(self, interpreter: Any, name: str, backend: str) -> None:
        self.name = name
        self.backend = backend
        self._it = interpreter
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelError(f"model {name} has {len(inputs)} inputs; exactly one is supported")
        self._input = inputs[0]
        self._outputs = interpreter.get_output_details()
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"])
        self.input_dtype: np.dtype = np.dtype(self._input["dtype"])
        self.output_shapes: list[tuple[int, ...]] = [tuple(int(d) for d in o["shape"]) for o in self._outputs]
        scale, zero = self._input.get("quantization", (0.0, 0))
        self._in_scale, self._in_zero = float(scale), int(zero)
        self._quantize_input: Callable[[np.ndarray], np.ndarray] = self._make_input_converter()

    def _make_input_converter(self) -> Callable[[np.ndarray], np.ndarray]:
        dtype = self.input_dtype
        if dtype == np.float32:
            return lambda x: np.asarray(x, dtype=np.float32)
        if self._in_scale == 0.0:
            raise ModelError(f"model {self.name}: integer input without quantization parameters")
        info = np.iinfo(dtype)
        if self._in_scale == 1.0 and self._in_zero == 0 and dtype == np.uint8:
            # The common case for our models: the input *is* the pixel value.
            return lambda x: x if x.dtype == np.uint8 else np.clip(np.rint(x), 0, 255).astype(np.uint8)
        scale, zero = self._in_scale, self._in_zero
        return lambda x: np.clip(np.rint(np.asarray(x, np.float32) / scale + zero), info.min, info.max).astype(dtype)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one inference; `x` in the model's real-valued input units (e.g. pixels 0..255)."""
        if x.ndim == len(self.input_shape) - 1:
            x = x[None]
        if tuple(x.shape) != self.input_shape:
            raise ModelError(f"model {self.name} expects input {self.input_shape}, got {tuple(x.shape)}")
        self._it.set_tensor(self._input["index"], self._quantize_input(x))
        self._it.invoke()
        outs = []
        for o in self._outputs:
            y = self._it.get_tensor(o["index"])
            if y.dtype != np.float32:
                scale, zero = o.get("quantization", (0.0, 0))
                y = (y.astype(np.float32) - zero) * np.float32(scale) if scale else y.astype(np.float32)
            outs.append(y)
        return outs


def load_model(
    path: str | Path,
    sha256: str | None = None,
    options: RuntimeOptions | None = None,
    name: str | None = None,
) -> Model:
    """Load a .tflite file into a `Model`.

    path: the model file. sha256: expected hex digest; a mismatch (truncated, corrupt or swapped file) is refused
    with a message naming the file. options: threads, backend, delegate.
    """
    options = options or RuntimeOptions()
    path = Path(path)
    name = name or path.name
    content = read_file(path, "model file", MAX_MODEL_BYTES, ModelError)
    if sha256 is not None:
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            raise ModelError(
                f"model file {path} does not match its checksum (expected sha256 {sha256[:12]}…, got {actual[:12]}…,"
                f" {len(content)} bytes): the file is corrupt, truncated or not the model the manifest names"
            )
    backend, module = _import_backend(options.backend)
    delegates = [load_delegate(options.delegate, options.backend)] if options.delegate else []
    try:
        interpreter = module.Interpreter(
            model_content=content,
            num_threads=options.num_threads,
            experimental_delegates=delegates or None,
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"model file {path} cannot be loaded by {backend}: {first}") from None
    return Model(interpreter, name, backend)
