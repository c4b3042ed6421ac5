"""OpenCV capture: USB/V4L2 cameras, RTSP/HTTP streams, GStreamer pipelines and video files.

The only module (with its siblings in `edge.device.capture`) that uses `cv2.VideoCapture`.

Live sources (camera index, /dev/video*, URL, pipeline) never give up: a failed read is counted, the capture is
closed and re-opened with exponential backoff, and `read()` keeps blocking until frames flow again or the source
is closed. Files are finite: `read()` returns None at the end unless `loop`.

Threading: one thread reads; `close()`/`stop()` may come from another. A `cv2.VideoCapture` must not be released
while a `read()` on it is in progress, so `close()` releases it only if no read is running; otherwise the reader
releases it on its way out. Waiting for a reconnect or for a paced frame ends at once on `close()`; a read already
inside OpenCV finishes first (bounded by the next camera frame, or by `timeout_s` for network streams).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edge.device.capture.base import CameraError, Pacer, SourceBase, check_pace
from edge.types import Frame

log = logging.getLogger(__name__)

#: Fallback frame rate for realtime pacing when a video file does not declare one.
DEFAULT_FILE_FPS = 25.0


class _OpenFailed(Exception):
    """Internal: opening failed; the message is the reason shown after "could not be opened: "."""


def _classify(device: int | str | Path) -> tuple[str, int | str]:
    """(kind, normalised device): kind is "index", "device", "url", "gstreamer" or "file"."""
    if isinstance(device, bool):
        raise CameraError(f"camera device must be an index, a path, a URL or a pipeline, not {device!r}")
    if isinstance(device, int):
        return "index", device
    if isinstance(device, Path):
        return "file", str(device)
    if not isinstance(device, str) or not device.strip():
        raise CameraError(f"camera device must be an index, a path, a URL or a pipeline, not {device!r}")
    text = device.strip()
    if text.isdigit():
        return "index", int(text)
    if "!" in text:  # GStreamer elements are chained with "!"; checked first as pipelines may contain "://"
        return "gstreamer", text
    if "://" in text:
        return "url", text
    if text.startswith("/dev/"):
        return "device", text
    return "file", text


def redact_url(url: str) -> str:
    """The URL with any password replaced by "***" (safe for logs, health and MQTT status)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey, or BGRA) image as contiguous (H, W, 3) uint8 RGB."""
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class OpenCVSource(SourceBase):
    """Frames from `cv2.VideoCapture`.

    device: V4L2 index (0 or "0"), a device path ("/dev/video0"), an RTSP/HTTP URL, a GStreamer pipeline (any
    string containing "!"), or a video file path.
    width, height, fps: requested capture size (pixels) and rate (frames/s) for cameras; OpenCV may pick the
    nearest mode the camera supports. For files, `fps` overrides the file's own rate for realtime pacing.
    reconnect_min_s, reconnect_max_s: backoff bounds (seconds) between re-open attempts of a live source.
    pace: files only: "fast" (as fast as decoding) or "realtime" (the file's frame rate).
    loop: files only: start again at the end instead of returning None.
    fourcc: cameras only: pixel format to request, e.g. "MJPG" (lets USB cameras reach 720p at 30 fps).
    timeout_s: network streams only: open and read timeout (seconds) so a dead stream is noticed.
    """

    def __init__(self, device: int | str | Path, width: int | None = None, height: int | None = None,
                 fps: float | None = None, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 pace: str = "fast", loop: bool = False, fourcc: str | None = None, timeout_s: float = 5.0) -> None:
        super().__init__()
        self.kind, self.device = _classify(device)
        for name, value in (("width", width), ("height", height)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise CameraError(f"camera {name} must be a positive number of pixels, got {value!r}")
        if fps is not None and not fps > 0:
            raise CameraError(f"camera fps must be > 0, got {fps!r}")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise CameraError(f"reconnect delays must satisfy 0 < reconnect_min_s ≤ reconnect_max_s, "
                              f"got {reconnect_min_s!r} and {reconnect_max_s!r}")
        if fourcc is not None and len(fourcc) != 4:
            raise CameraError(f"fourcc must be 4 characters such as 'MJPG', got {fourcc!r}")
        self.width, self.height, self.requested_fps = width, height, fps
        self.fps = fps
        self.reconnect_min_s, self.reconnect_max_s = float(reconnect_min_s), float(reconnect_max_s)
        self.pace = check_pace(pace)
        self.loop = bool(loop)
        self.fourcc = fourcc
        self.timeout_s = float(timeout_s)
        self._cap = None
        self._lock = threading.Lock()  # held by the reader while it uses self._cap
        self._opened = False
        self._ended = False
        self._pass_frames = 0  # frames delivered since the file was (re)started
        self._backoff = self.reconnect_min_s
        self._pacer = Pacer(None)

    # --- description -----------------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True for cameras and streams (reconnect forever), False for video files (finite)."""
        return self.kind != "file"

    def describe(self) -> str:
        if self.kind == "index":
            return f"camera /dev/video{self.device}" if sys.platform.startswith("linux") else f"camera {self.device}"
        if self.kind == "device":
            return f"camera {self.device}"
        if self.kind == "url":
            scheme = str(self.device).split("://", 1)[0].upper()
            return f"{scheme} stream {redact_url(str(self.device))}"
        if self.kind == "gstreamer":
            text = str(self.device)
            return f"GStreamer pipeline '{text if len(text) <= 80 else text[:77] + '...'}'"
        return f"video file {self.device}"

    # --- opening -----------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the device or file; raises `CameraError` "<source> could not be opened: <reason>"."""
        if self._cap is not None:
            return
        if self.kind == "file":
            path = Path(str(self.device))
            if not path.exists():
                raise CameraError(f"video file {path} not found")
            if path.is_dir():
                raise CameraError(f"video file {path} is a directory: use the 'replay' source for a folder of images")
        self._stop.clear()
        self._ended = False
        try:
            cap = self._open_capture()
        except _OpenFailed as err:
            raise CameraError(f"{self.describe()} could not be opened: {err}") from None
        with self._lock:
            self._cap = cap
        self._opened = True
        self._pass_frames = 0
        self._backoff = self.reconnect_min_s
        self._pacer = Pacer(self.fps)
        log.info("opened %s (%s fps)", self.describe(), f"{self.fps:g}" if self.fps else "unknown")

    def _open_capture(self):
        import cv2

        if self.kind == "index":
            cap = cv2.VideoCapture(self.device)
        elif self.kind == "device":
            cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY)
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(self.device, cv2.CAP_GSTREAMER)
        elif self.kind == "url":
            ms = int(self.timeout_s * 1000)
            cap = cv2.VideoCapture(self.device, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise _OpenFailed(self._open_failure_reason())
        if self.kind in ("index", "device"):
            if self.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.requested_fps:
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep latency low: we want the newest frame, not a backlog
        reported = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if self.requested_fps:
            self.fps = float(self.requested_fps)
        elif 0 < reported < 1000:  # some backends report 0 or absurd values (90000) when they do not know
            self.fps = reported
        elif self.kind == "file":
            self.fps = DEFAULT_FILE_FPS
        else:
            self.fps = None
        return cap

    def _open_failure_reason(self) -> str:
        import cv2

        if self.kind in ("index", "device"):
            node = Path(f"/dev/video{self.device}" if self.kind == "index" else str(self.device))
            if sys.platform.startswith("linux") and not node.exists():
                return "no such device (is the camera plugged in? `v4l2-ctl --list-devices` lists cameras)"
            return ("the device exists but OpenCV could not open it (in use by another process, or no permission: "
                    "add the user to the 'video' group)")
        if self.kind == "gstreamer":
            if "GStreamer:                   NO" in cv2.getBuildInformation().replace("\t", " "):
                return ("this OpenCV build has no GStreamer support (the pip wheels lack it; use the system's "
                        "python3-opencv, or a plain device path or URL)")
            return "the pipeline did not start (check it with gst-launch-1.0)"
        if self.kind == "url":
            return (f"no stream answered within {self.timeout_s:g} s (check host, port, path and credentials)")
        return "not a video, or OpenCV has no decoder for its codec"

    # --- reading -----------------------------------------------------------------------------------------------
    def read(self) -> Frame | None:
        """The next RGB frame; blocks while a live source reconnects; None at the end of a file or after close()."""
        if not self._opened:
            raise CameraError(f"{self.describe()}: read() called before open()")
        if self._stop.is_set() or self._ended:
            self._release()
            return None
        frame = self._read_live() if self.live else self._read_file()
        if frame is None and self._stop.is_set():
            self._release()  # close() came while we were inside OpenCV: we own the capture's release
        return frame

    def _grab(self) -> tuple[bool, np.ndarray | None, str]:
        """One cap.read() under the lock: (ok, bgr, error text)."""
        with self._lock:
            cap = self._cap
            if cap is None or self._stop.is_set():
                return False, None, ""
            try:
                ok, bgr = cap.read()
            except Exception as err:  # noqa: BLE001 - cv2.error from a vanished device: a failure like any other
                return False, None, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if ok and bgr is not None and bgr.size:
            return True, bgr, ""
        return False, None, ""

    def _read_live(self) -> Frame | None:
        while not self._stop.is_set():
            had_cap = self._cap is not None
            ok, bgr, error = self._grab()
            if self._stop.is_set():
                return None
            if ok and bgr is not None:
                self._backoff = self.reconnect_min_s
                return self._make_frame(to_rgb(bgr))
            if had_cap:
                self.stats.read_failures += 1
                message = f"{self.describe()} stopped delivering frames" + (f": {error}" if error else "")
                self.stats.last_error = message
                log.warning("%s; reconnecting", message)
                self._release()
            if not self._reconnect():
                return None
        return None

    def _reconnect(self) -> bool:
        """Re-open with exponential backoff until it works (True) or the source is stopped (False)."""
        attempts = 0
        while True:
            delay, self._backoff = self._backoff, min(self._backoff * 2.0, self.reconnect_max_s)
            if self._stop.wait(delay):
                return False
            attempts += 1
            try:
                cap = self._open_capture()
            except _OpenFailed as err:
                self.stats.last_error = f"{self.describe()} could not be reopened: {err}"
                log.info("%s (attempt %d; next in %.1f s)", self.stats.last_error, attempts, self._backoff)
                continue
            except Exception as err:  # noqa: BLE001 - an unexpected backend error must not kill a live source either
                self.stats.last_error = f"{self.describe()} could not be reopened: {err}"
                continue
            with self._lock:
                if self._stop.is_set():
                    cap.release()
                    return False
                self._cap = cap
            self.stats.reconnects += 1
            log.warning("reconnected to %s after %d attempt(s)", self.describe(), attempts)
            return True

    def _read_file(self) -> Frame | None:
        if self.pace == "realtime" and not self._pacer.wait(self._stop):
            return None
        for _ in range(2):  # at most one rewind per frame
            ok, bgr, error = self._grab()
            if self._stop.is_set():
                return None
            if ok and bgr is not None:
                self._pass_frames += 1
                return self._make_frame(to_rgb(bgr))
            if self._pass_frames == 0:
                self._release()
                self._ended = True
                detail = f": {error}" if error else ""
                raise CameraError(f"{self.describe()} contains no decodable frames{detail}")
            if not self.loop:
                self._release()
                self._ended = True
                return None
            self._release()  # rewinding by re-opening works for every container, unlike seeking
            try:
                cap = self._open_capture()
            except _OpenFailed as err:
                raise CameraError(f"{self.describe()} could not be reopened to loop: {err}") from None
            with self._lock:
                self._cap = cap
            self._pass_frames = 0
        return None

    # --- closing -----------------------------------------------------------------------------------------------
    def _release(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def close(self) -> None:
        """Stop reading and release the capture; prompt from any thread (see the module docstring)."""
        self._stop.set()
        if self._lock.acquire(blocking=False):  # no read in progress: release now
            try:
                cap, self._cap = self._cap, None
            finally:
                self._lock.release()
            if cap is not None:
                cap.release()
        # else: the reader holds the capture and releases it as soon as its read returns
