"""Frame sources: cameras, streams, video files and image folders behind one `FrameSource` protocol.

`open_source("opencv", device=0)` builds a source by kind; `open()` it, `read()` frames until None, `close()` it
(or use it as a context manager). Vendor libraries (picamera2) are imported only when a source opens.
"""

from __future__ import annotations

import inspect

from edge.device.capture.base import CameraError, FrameSource, SourceStats
from edge.device.capture.opencv import OpenCVSource
from edge.device.capture.picamera import PiCameraSource
from edge.device.capture.replay import ReplaySource

#: Source kinds accepted by `open_source`, and the class that implements each.
SOURCE_KINDS: dict[str, type] = {
    "opencv": OpenCVSource,
    "picamera2": PiCameraSource,
    "replay": ReplaySource,
}


def open_source(kind: str, **kwargs) -> FrameSource:
    """Build (not yet open) the frame source of `kind` with its keyword options.

    Raises `CameraError` for an unknown kind or an option that kind does not take, naming the valid choices.
    """
    cls = SOURCE_KINDS.get(kind)
    if cls is None:
        raise CameraError(f"unknown camera kind {kind!r}: choose one of {', '.join(SOURCE_KINDS)}")
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]  # the class itself, not an instance
    accepted = [name for name in signature.parameters if name != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise CameraError(f"camera kind {kind!r} does not take option(s) {', '.join(unknown)}; "
                          f"its options are: {', '.join(accepted)}")
    try:
        signature.bind(None, **kwargs)
    except TypeError as err:
        raise CameraError(f"camera kind {kind!r}: {err}") from None
    return cls(**kwargs)


__all__ = ["CameraError", "FrameSource", "OpenCVSource", "PiCameraSource", "ReplaySource", "SOURCE_KINDS",
           "SourceStats", "open_source"]
