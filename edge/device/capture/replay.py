"""Replay a list or folder of still images as a frame source (tests, demos, offline evaluation).

Unreadable images are skipped and counted (`stats.skipped`, `stats.last_error`), never fatal: a replay of a
field dump with one truncated JPEG still runs to the end.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edge.device.capture.base import CameraError, Pacer, SourceBase, check_pace
from edge.errors import ImageError
from edge.types import Frame

log = logging.getLogger(__name__)

#: File name endings taken from a folder (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _natural_key(path: Path) -> list:
    """Sort key that puts frame_2.jpg before frame_10.jpg."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, in natural name order."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=_natural_key)


class ReplaySource(SourceBase):
    """Frames from image files.

    paths: a folder (its images, in natural name order: frame_2 before frame_10) or a list of files (kept in the
    given order). fps: nominal rate in frames/s, used by realtime pacing. pace: "realtime" or "fast".
    loop: start again after the last image instead of returning None.
    """

    def __init__(self, paths: list[Path] | list[str] | Path | str, fps: float = 10.0, pace: str = "realtime",
                 loop: bool = False) -> None:
        super().__init__()
        if not fps or fps <= 0:
            raise CameraError(f"replay fps must be > 0, got {fps!r}")
        self.fps = float(fps)
        self.pace = check_pace(pace)
        self.loop = bool(loop)
        self._folder: Path | None = None
        if isinstance(paths, (str, Path)):
            self._folder = Path(paths)
            self._paths: list[Path] = []
        else:
            self._paths = [Path(p) for p in paths]
        self._pos = 0
        self._pass_frames = 0
        self._opened = False
        self._pacer = Pacer(self.fps)

    @property
    def paths(self) -> list[Path]:
        """The images in replay order (known after `open()` for a folder)."""
        return list(self._paths)

    def describe(self) -> str:
        if self._folder is not None:
            return f"image folder {self._folder}"
        return f"image list of {len(self._paths)} file(s)"

    def open(self) -> None:
        """List the images; raises `CameraError` if the folder is missing or holds no images."""
        if self._folder is not None:
            if not self._folder.exists():
                raise CameraError(f"image folder {self._folder} not found")
            if self._folder.is_file():
                self._paths = [self._folder]
            else:
                self._paths = list_images(self._folder)
                if not self._paths:
                    raise CameraError(f"image folder {self._folder} contains no images "
                                      f"({', '.join(IMAGE_SUFFIXES)})")
        elif not self._paths:
            raise CameraError("replay needs at least one image file")
        self._stop.clear()
        self._pos = 0
        self._pass_frames = 0
        self._pacer = Pacer(self.fps)
        self._opened = True

    def read(self) -> Frame | None:
        """The next decodable image as a frame; None after the last one (unless loop) or after close()."""
        from edge.imageio import read_image

        if not self._opened:
            raise CameraError(f"{self.describe()}: read() called before open()")
        while not self._stop.is_set():
            if self._pos >= len(self._paths):
                if not self.loop:
                    return None
                if self._pass_frames == 0:
                    raise CameraError(f"none of the {len(self._paths)} images of {self.describe()} could be "
                                      f"decoded; last error: {self.stats.last_error}")
                self._pos, self._pass_frames = 0, 0
            path = self._paths[self._pos]
            self._pos += 1
            try:
                rgb = read_image(path)
            except ImageError as err:
                self.stats.skipped += 1
                self.stats.last_error = str(err)
                log.warning("replay: skipping %s", err)
                continue
            if self.pace == "realtime" and not self._pacer.wait(self._stop):
                return None
            self._pass_frames += 1
            return self._make_frame(rgb)
        return None

    def close(self) -> None:
        """End the replay; a blocked `read()` returns None."""
        self._stop.set()
