"""Raspberry Pi CSI cameras through picamera2 (libcamera): the only module that imports picamera2.

Two streams from one sensor readout: a "main" RGB888 stream at full size (kept for optional evidence crops) and a
small "lores" YUV420 stream for inference. The ISP scales the lores stream for free, so the CPU converts only
lores-size pixels. picamera2 returns a YUV420 buffer as a (height * 3/2, stride) uint8 array whose rows may be
padded past the width; OpenCV converts it in one call and the padding is cropped off the RGB result.

picamera2 is not on PyPI for the Pi's libcamera: it comes from apt (python3-picamera2), so it is imported inside
`open()` and the package still imports on a laptop.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edge.device.capture.base import CameraError, SourceBase
from edge.types import Frame

log = logging.getLogger(__name__)

INSTALL_HINT = ("picamera2 is not installed: on Raspberry Pi OS install python3-picamera2 with apt and create the "
                "venv with --system-site-packages")


def yuv420_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 (I420) array of shape (height * 3/2, stride ≥ width) as (height, width, 3) uint8 RGB."""
    import cv2

    if yuv.ndim != 2 or yuv.shape[0] != height * 3 // 2 or yuv.shape[1] < width:
        raise CameraError(f"unexpected YUV420 buffer of shape {yuv.shape} for a {width}x{height} stream")
    rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
    if rgb.shape[1] != width:
        rgb = np.ascontiguousarray(rgb[:, :width])
    return rgb


class PiCameraSource(SourceBase):
    """Frames from a Raspberry Pi camera module.

    width, height: main stream size in pixels (full field of view; RGB, kept for evidence when `keep_main`).
    lores_width, lores_height: inference stream size in pixels (even, ≤ main; keep the main's aspect ratio).
    fps: frame rate requested from the sensor (frames/s). camera_num: libcamera camera index.
    keep_main: also fetch the main stream of the same request; `last_main` then holds its RGB array.
    """

    def __init__(self, width: int = 1280, height: int = 720, lores_width: int = 640, lores_height: int = 360,
                 fps: float = 15.0, camera_num: int = 0, keep_main: bool = False) -> None:
        super().__init__()
        for name, value in (("width", width), ("height", height), ("lores_width", lores_width),
                            ("lores_height", lores_height)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % 2:
                raise CameraError(f"picamera2 {name} must be a positive even number of pixels, got {value!r}")
        if lores_width > width or lores_height > height:
            raise CameraError(f"picamera2 lores stream {lores_width}x{lores_height} may not exceed the main stream "
                              f"{width}x{height}")
        if not fps or fps <= 0:
            raise CameraError(f"picamera2 fps must be > 0, got {fps!r}")
        self.width, self.height = width, height
        self.lores_width, self.lores_height = lores_width, lores_height
        self.fps = float(fps)
        self.camera_num = camera_num
        self.keep_main = keep_main
        self.last_main: np.ndarray | None = None
        self._cam = None
        self._lock = threading.Lock()  # held by the reader while it uses self._cam
        self._lores_size = (lores_width, lores_height)

    def describe(self) -> str:
        return f"Raspberry Pi camera {self.camera_num} (picamera2)"

    def open(self) -> None:
        """Open, configure and start the camera; raises `CameraError` naming the cause."""
        if self._cam is not None:
            return
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError(INSTALL_HINT) from None
        self._stop.clear()
        try:
            cam = Picamera2(self.camera_num)
        except Exception as err:  # noqa: BLE001 - RuntimeError / IndexError when no camera is connected or it is busy
            raise CameraError(f"{self.describe()} could not be opened: {err} (is the ribbon cable seated, the camera "
                              f"detected by `rpicam-hello --list-cameras`, and not used by another process?)") from None
        try:
            extra = {}
            try:  # OpenCV's I420 conversion assumes BT.601 limited range: ask the ISP for exactly that
                from libcamera import ColorSpace
                extra["colour_space"] = ColorSpace.Smpte170m()
            except ImportError:
                pass
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                lores={"size": (self.lores_width, self.lores_height), "format": "YUV420"},
                controls={"FrameRate": self.fps}, **extra)
            cam.configure(config)
            # picamera2 may align the requested sizes to what the ISP supports: convert at the size it chose.
            self._lores_size = tuple(config["lores"]["size"])
            cam.start()
        except Exception as err:  # noqa: BLE001 - whatever the driver raises, the camera could not be configured
            try:
                cam.close()
            except Exception:  # noqa: BLE001 - best effort: the configure error is the one reported
                pass
            raise CameraError(f"{self.describe()} could not be configured for {self.width}x{self.height} + lores "
                              f"{self.lores_width}x{self.lores_height} at {self.fps:g} fps: {err}") from None
        with self._lock:
            self._cam = cam
        log.info("opened %s: main %dx%d, lores %dx%d at %g fps", self.describe(), self.width, self.height,
                 *self._lores_size, self.fps)

    def read(self) -> Frame | None:
        """Block until the next lores frame; RGB at the lores size. None after close()."""
        captured = None
        with self._lock:
            cam = self._cam
            if cam is None and not self._stop.is_set():
                raise CameraError(f"{self.describe()}: read() called before open()")
            if cam is not None and not self._stop.is_set():
                try:
                    if self.keep_main:  # both arrays from the same request, so they show the same instant
                        (yuv, main), _metadata = cam.capture_arrays(["lores", "main"])
                    else:
                        yuv, main = cam.capture_array("lores"), None
                except Exception as err:  # noqa: BLE001 - any driver failure is a read failure, as a CameraError
                    self.stats.read_failures += 1
                    self.stats.last_error = f"{self.describe()} stopped delivering frames: {err}"
                    raise CameraError(self.stats.last_error) from None
                captured = (yuv, main)
        if captured is None or self._stop.is_set():
            self._shutdown()  # close() came while we were capturing: we own the camera's release
            return None
        yuv, main = captured
        width, height = self._lores_size
        rgb = yuv420_to_rgb(yuv, width, height)
        if main is not None:
            self.last_main = np.ascontiguousarray(main[..., ::-1])  # picamera2's RGB888 is B, G, R in memory
        return self._make_frame(rgb)

    def _shutdown(self) -> None:
        with self._lock:
            cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()

    def close(self) -> None:
        """Stop and release the camera; from another thread, the reader releases it after its current frame."""
        self._stop.set()
        if self._lock.acquire(blocking=False):
            try:
                cam, self._cam = self._cam, None
            finally:
                self._lock.release()
            if cam is not None:
                try:
                    cam.stop()
                finally:
                    cam.close()
