"""Reading photos from disk as RGB arrays, with errors that name the file — and limits checked before decoding:
a 2.6 MB PNG can declare 30000×30000 pixels (2.7 GB decoded), so the size is read from the header first."""

from __future__ import annotations

import os
import struct
from pathlib import Path

#: Largest photo accepted: bytes on disk, and pixels (width × height) as the file's header declares them.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # e.g. 8660×5773; a decoded RGB copy is 150 MB
# OpenCV's own decoder limit, as a second line for formats whose header is not parsed here (read once, at first use).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402 - after the limit above
import numpy as np  # noqa: E402 - likewise

from edge.errors import ImageError  # noqa: E402 - likewise
from edge.files import read_file  # noqa: E402 - likewise


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG, GIF, BMP, WebP or JPEG header; None for other formats or a header this
    does not understand (OpenCV's own limit then applies)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = data[12:16]
            if kind == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if kind == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                length = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + length
    except struct.error:
        return None
    return None


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo (JPEG, PNG, BMP, WebP, TIFF …) as an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Grey and RGBA images are converted to RGB; 16-bit images to 8-bit.
    """
    path = Path(path)
    data = read_file(path, "image", MAX_IMAGE_BYTES, ImageError)
    if not data:
        raise ImageError(f"image {path} is empty (0 bytes)")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"image {path} declares {size[0]}×{size[1]} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels"
                         " (downscale it first)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"image {path} cannot be decoded: not an image, or a corrupt/truncated file"
                         f" ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB array as an image file, mode 0600 (a face is personal data); the format follows the extension
    (.jpg, .png …). ImageError naming the path when it cannot be encoded or written."""
    from edge.durable import atomic_write

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError(f"cannot encode an image for {path} (unknown extension {path.suffix!r}?)")
    try:
        atomic_write(path, buf.tobytes())
    except OSError as err:
        raise ImageError(f"cannot write {path}: {err.strerror or err}") from None
