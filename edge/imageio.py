"""Reading photos from disk as RGB arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError


def read_image(path: str | Path) -> np.ndarray:
    """Read a photo (JPEG, PNG, BMP, WebP, TIFF …) as an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Grey and RGBA images are converted to RGB; 16-bit images to 8-bit.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image") from None
    except OSError as err:
        raise ImageError(f"cannot read image {path}: {err.strerror or err}") from None
    if not data:
        raise ImageError(f"image {path} is empty (0 bytes)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"image {path} cannot be decoded: not an image, or a corrupt/truncated file ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB array as an image file; the format follows the extension (.jpg, .png …)."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError(f"cannot encode an image for {path} (unknown extension {path.suffix!r}?)")
    path.write_bytes(buf.tobytes())
