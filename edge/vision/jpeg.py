"""Face chips as JPEG with OpenCV's encoder, for the device's evidence (`edge.device.event_writer`) and the
operator's reference chips (`edge.watchlist.operator.references`): OpenCV stays in edge/vision and the capture
sources (`tests/test_layers.py`)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def encode_jpeg(rgb: np.ndarray, quality: int, size: tuple[int, int] | None = None) -> bytes | None:
    """An RGB uint8 image as JPEG bytes at `quality` (1-100), first resized to `size` (width, height) with area
    interpolation when given; None when OpenCV cannot encode it."""
    return fit_jpeg(rgb, (quality,), None, size)


def fit_jpeg(rgb: np.ndarray, qualities: Sequence[int], limit: int | None,
             size: tuple[int, int] | None = None) -> bytes | None:
    """The JPEG at the first of `qualities` whose bytes fit `limit` (None: any), the image converted and resized
    (as `encode_jpeg`) once for all of them; None when none fits."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR)
    if size is not None:
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    for quality in qualities:
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and (limit is None or len(jpeg) <= limit):
            return bytes(jpeg.tobytes())
    return None
