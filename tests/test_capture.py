"""Frame sources: real video files made from the bundled photos, a camera that vanishes and comes back (a fake
cv2.VideoCapture), image-folder replay, and picamera2 through a fake module."""

from __future__ import annotations

import sys
import threading
import time
import types
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.device.capture import CameraError, FrameSource, OpenCVSource, PiCameraSource, ReplaySource, open_source
from edge.device.capture.opencv import redact_url
from edge.device.capture.picamera import INSTALL_HINT, yuv420_to_rgb

FACES = Path(__file__).parent / "data" / "faces"
SIZE = (160, 120)  # width, height of the test videos
RED = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
RED[..., 0] = 255  # pure red in RGB


def photos(n: int) -> list[np.ndarray]:
    """n bundled photos as RGB arrays of the test size (cycled if n exceeds the photos available)."""
    from edge.imageio import read_image

    files = sorted(FACES.glob("*.jpg"))
    return [cv2.resize(read_image(files[i % len(files)]), SIZE) for i in range(n)]


def make_video(path: Path, frames: list[np.ndarray], fps: float = 20.0, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, SIZE)
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_all(source, limit: int = 1000) -> list:
    frames = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    return frames


# --- video files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fourcc,suffix", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_video_file_is_read_fully_as_rgb(tmp_path, fourcc, suffix):
    video = make_video(tmp_path / f"clip{suffix}", photos(6) + [RED], fps=20.0, fourcc=fourcc)
    with OpenCVSource(video) as source:
        assert isinstance(source, FrameSource)
        assert source.fps == pytest.approx(20.0)
        assert source.describe() == f"video file {video}"
        frames = read_all(source)
        assert source.read() is None  # stays at the end
    assert len(frames) == 7
    assert [f.index for f in frames] == list(range(7))
    assert all(f.rgb.shape == (SIZE[1], SIZE[0], 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(a.monotonic <= b.monotonic and a.captured_at <= b.captured_at for a, b in pairwise(frames))
    r, g, b = frames[-1].rgb.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, "the red frame must come out red: BGR was not converted to RGB"
    # the photos survive the codec: each decoded frame is close to the photo it was made from
    for frame, rgb in zip(frames, photos(6), strict=False):  # the 7th frame is RED, checked above
        assert np.abs(frame.rgb.astype(int) - rgb).mean() < 20
    assert source.stats.frames == 7 and source.stats.read_failures == 0


def test_realtime_pacing_follows_the_file_frame_rate(tmp_path):
    video = make_video(tmp_path / "clip.mp4", photos(10), fps=20.0)
    source = OpenCVSource(video, pace="realtime")
    source.open()
    start = time.monotonic()
    frames = read_all(source)
    realtime = time.monotonic() - start
    source.close()
    fast = OpenCVSource(video, pace="fast")
    fast.open()
    start = time.monotonic()
    assert len(read_all(fast)) == 10
    quick = time.monotonic() - start
    fast.close()
    assert len(frames) == 10
    assert 0.35 <= realtime <= 1.5, f"10 frames at 20 fps should take about 0.45 s, took {realtime:.2f} s"
    gaps = np.diff([f.monotonic for f in frames])
    assert np.median(gaps) == pytest.approx(0.05, abs=0.02)
    assert quick < realtime / 2


def test_loop_restarts_the_file_and_keeps_counting(tmp_path):
    originals = photos(3)
    video = make_video(tmp_path / "clip.mp4", originals)
    with OpenCVSource(video, loop=True) as source:
        frames = [source.read() for _ in range(8)]
    assert [f.index for f in frames] == list(range(8))
    for i, frame in enumerate(frames):
        assert np.abs(frame.rgb.astype(int) - originals[i % 3]).mean() < 20


def test_missing_or_broken_video_file_is_a_readable_error(tmp_path):
    with pytest.raises(CameraError, match="^video file .*nowhere.mp4 not found$"):
        OpenCVSource(tmp_path / "nowhere.mp4").open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(CameraError) as err:
        OpenCVSource(junk).open()
    assert str(err.value) == (f"video file {junk} could not be opened: not a video, or OpenCV has no decoder for "
                              f"its codec")
    with pytest.raises(CameraError, match="is a directory: use the 'replay' source"):
        OpenCVSource(str(tmp_path)).open()


def test_read_before_open_and_bad_options():
    with pytest.raises(CameraError, match=r"read\(\) called before open\(\)"):
        OpenCVSource("x.mp4").read()
    with pytest.raises(CameraError, match="unknown pace 'slow': choose one of realtime, fast"):
        OpenCVSource("x.mp4", pace="slow")
    with pytest.raises(CameraError, match="reconnect_min_s ≤ reconnect_max_s"):
        OpenCVSource(0, reconnect_min_s=5, reconnect_max_s=1)


# --- live sources: a camera that vanishes and comes back -----------------------------------------------------


class FakeCamera:
    """Scripted stand-in for cv2.VideoCapture: the "device" delivers frames, vanishes, refuses to open, returns."""

    def __init__(self, frames_per_session=(3, 1000), refusals=2, read_delay=0.0):
        self.sessions = list(frames_per_session)  # frames delivered by each successful open, then read fails
        self.refusals = refusals  # failed opens after each vanishing
        self.read_delay = read_delay
        self.opens = 0
        self.failed_opens = 0
        self.released = 0
        self.reading = False
        self.frame_value = 0
        self.lock = threading.Lock()
        self._refusals_left = 0

    def factory(self, *args, **kwargs):
        return _FakeCapture(self)


class _FakeCapture:
    def __init__(self, cam: FakeCamera):
        self.cam = cam
        if cam._refusals_left > 0 or not cam.sessions:
            cam._refusals_left -= 1
            cam.failed_opens += 1
            self.remaining = None
        else:
            cam.opens += 1
            self.remaining = cam.sessions.pop(0)

    def isOpened(self):
        return self.remaining is not None

    def set(self, *args):
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        cam = self.cam
        cam.reading = True
        try:
            if cam.read_delay:
                time.sleep(cam.read_delay)
            if self.remaining is None or self.remaining <= 0:
                cam._refusals_left = cam.refusals  # the device vanished: the next opens fail
                return False, None
            self.remaining -= 1
            cam.frame_value = (cam.frame_value + 1) % 256
            bgr = np.zeros((24, 32, 3), np.uint8)
            bgr[..., 0] = 200  # blue in BGR
            bgr[0, 0, 1] = cam.frame_value
            return True, bgr
        finally:
            cam.reading = False

    def release(self):
        assert not self.cam.reading, "release() while a read() was in progress"
        self.cam.released += 1


@pytest.fixture
def fake_camera(monkeypatch):
    cam = FakeCamera()
    monkeypatch.setattr(cv2, "VideoCapture", cam.factory)
    return cam


def test_live_source_reconnects_after_the_device_vanishes_and_keeps_delivering(fake_camera, caplog):
    source = OpenCVSource(0, width=32, height=24, reconnect_min_s=0.01, reconnect_max_s=0.05)
    source.open()
    frames = [source.read() for _ in range(10)]  # 3 frames, vanish, 2 refused opens, then frames again
    source.close()
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(10))
    r, g, b = frames[0].rgb[1, 1]
    assert (r, b) == (0, 200), "BGR must be converted to RGB"
    assert source.stats.reconnects == 1
    assert source.stats.read_failures == 1
    assert source.stats.frames == 10
    assert fake_camera.failed_opens == 2 and fake_camera.opens == 2
    # the latest failure is the refused re-open (the read failure before it is in the log)
    assert source.stats.last_error.startswith("camera /dev/video0 could not be reopened: ")
    assert fake_camera.released == fake_camera.opens + fake_camera.failed_opens  # every capture object released
    assert "camera /dev/video0 stopped delivering frames; reconnecting" in caplog.text
    assert "reconnected to camera /dev/video0 after 3 attempt(s)" in caplog.text


def test_close_from_another_thread_unblocks_a_reconnecting_read(fake_camera):
    fake_camera.sessions = [1]  # one frame, then the device is gone for good
    source = OpenCVSource("rtsp://user:secret@10.0.0.5:554/stream", reconnect_min_s=0.05, reconnect_max_s=30)
    source.open()
    assert source.read() is not None
    result = {}

    def reader():
        result["frame"] = source.read()  # blocks: the stream stopped, reopening keeps failing
        result["returned"] = time.monotonic()

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.6)  # long enough for the backoff to grow well past 0.5 s
    assert thread.is_alive(), "read() must block while reconnecting, not raise or return"
    closed_at = time.monotonic()
    source.close()
    thread.join(2.0)
    assert not thread.is_alive()
    assert result["frame"] is None
    assert result["returned"] - closed_at < 0.5
    assert source.stats.read_failures == 1 and source.stats.reconnects == 0
    assert "secret" not in source.stats.last_error
    assert source.stats.last_error.startswith("RTSP stream rtsp://user:***@10.0.0.5:554/stream ")
    assert source.read() is None


def test_close_during_a_read_in_progress_lets_the_reader_release(fake_camera):
    fake_camera.read_delay = 0.3
    source = OpenCVSource(2, reconnect_min_s=0.01)
    source.open()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("frame", source.read()))
    thread.start()
    time.sleep(0.1)
    start = time.monotonic()
    source.close()  # must not release the capture under the reader's feet (FakeCapture asserts it)
    assert time.monotonic() - start < 0.1
    thread.join(2.0)
    assert result["frame"] is None  # the frame that arrived after close() is dropped
    assert fake_camera.released == 1


def test_camera_that_cannot_be_opened_names_itself(monkeypatch):
    cam = FakeCamera(frames_per_session=())
    monkeypatch.setattr(cv2, "VideoCapture", cam.factory)
    with pytest.raises(CameraError) as err:
        OpenCVSource("/dev/video7").open()
    assert str(err.value).startswith("camera /dev/video7 could not be opened: ")


def test_real_unreachable_stream_and_pipeline_errors():
    with pytest.raises(CameraError) as err:
        OpenCVSource("rtsp://127.0.0.1:1/cam", timeout_s=1).open()
    assert str(err.value).startswith("RTSP stream rtsp://127.0.0.1:1/cam could not be opened: no stream answered")
    with pytest.raises(CameraError, match="^GStreamer pipeline 'videotestsrc ! appsink' could not be opened: "):
        OpenCVSource("videotestsrc ! appsink").open()


def test_device_kinds_and_redaction():
    assert OpenCVSource("0").kind == "index" and OpenCVSource(1).device == 1
    assert OpenCVSource("/dev/video2").describe() == "camera /dev/video2"
    assert OpenCVSource("v4l2src device=/dev/video0 ! videoconvert ! appsink").kind == "gstreamer"
    assert OpenCVSource("http://cam.local/mjpg").describe() == "HTTP stream http://cam.local/mjpg"
    assert OpenCVSource("clip.mp4").live is False and OpenCVSource(0).live is True
    assert redact_url("rtsp://admin:pw@cam:554/s") == "rtsp://admin:***@cam:554/s"
    assert redact_url("rtsp://cam/s") == "rtsp://cam/s"


# --- image replay --------------------------------------------------------------------------------------------


def test_replay_folder_skips_and_counts_a_corrupt_image(tmp_path):
    from edge.imageio import write_image

    images = photos(3)
    write_image(tmp_path / "frame_10.png", images[2])
    write_image(tmp_path / "frame_2.png", images[1])
    write_image(tmp_path / "frame_1.png", images[0])
    (tmp_path / "frame_5.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    with ReplaySource(tmp_path, pace="fast") as source:
        frames = read_all(source)
    assert [p.name for p in source.paths] == ["frame_1.png", "frame_2.png", "frame_5.jpg", "frame_10.png"]
    assert len(frames) == 3 and [f.index for f in frames] == [0, 1, 2]
    for frame, rgb in zip(frames, images, strict=True):
        assert np.array_equal(frame.rgb, rgb)  # PNG is lossless
    assert source.stats.skipped == 1
    assert "frame_5.jpg cannot be decoded" in source.stats.last_error


def test_replay_pacing_loop_and_prompt_close(tmp_path):
    from edge.imageio import write_image

    for i, rgb in enumerate(photos(2)):
        write_image(tmp_path / f"{i}.png", rgb)
    with ReplaySource(sorted(tmp_path.glob("*.png")), fps=20.0, loop=True) as source:
        start = time.monotonic()
        frames = [source.read() for _ in range(6)]
        elapsed = time.monotonic() - start
    assert [f.index for f in frames] == list(range(6))
    assert np.array_equal(frames[0].rgb, frames[2].rgb)
    assert 0.2 <= elapsed <= 1.0  # 5 intervals of 50 ms
    slow = ReplaySource(tmp_path, fps=0.5)
    slow.open()
    assert slow.read() is not None
    threading.Timer(0.1, slow.close).start()
    start = time.monotonic()
    assert slow.read() is None  # would wait 2 s for the next paced frame
    assert time.monotonic() - start < 0.5


def test_replay_errors_name_the_folder(tmp_path):
    with pytest.raises(CameraError, match="^image folder .*missing not found$"):
        ReplaySource(tmp_path / "missing").open()
    with pytest.raises(CameraError, match="^image folder .* contains no images"):
        ReplaySource(tmp_path).open()
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    source = ReplaySource(tmp_path, pace="fast", loop=True)
    source.open()
    with pytest.raises(CameraError, match="none of the 1 images of image folder .* could be decoded"):
        source.read()


# --- picamera2 -------------------------------------------------------------------------------------------------


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` raise ImportError
    with pytest.raises(CameraError) as err:
        PiCameraSource().open()
    assert str(err.value) == ("picamera2 is not installed: on Raspberry Pi OS install python3-picamera2 with apt and "
                              "create the venv with --system-site-packages")
    assert str(err.value) == INSTALL_HINT


def i420_with_stride(rgb: np.ndarray, stride: int) -> np.ndarray:
    """The (h * 3/2, stride) array picamera2 returns for a YUV420 stream whose rows are padded to `stride`."""
    h, w = rgb.shape[:2]
    planar = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y, u, v = planar[: w * h], planar[w * h: w * h * 5 // 4], planar[w * h * 5 // 4:]
    buf = np.full(stride * h * 3 // 2, 77, np.uint8)  # padding bytes hold garbage
    out_y = buf[: stride * h].reshape(h, stride)
    out_y[:, :w] = y.reshape(h, w)
    for offset, plane in ((stride * h, u), (stride * h * 5 // 4, v)):
        out = buf[offset: offset + stride * h // 4].reshape(h // 2, stride // 2)
        out[:, : w // 2] = plane.reshape(h // 2, w // 2)
    return buf.reshape(h * 3 // 2, stride)


def make_fake_picamera2(lores_rgb: np.ndarray, stride: int, main_bgr: np.ndarray, fail_init: bool = False):
    calls: list = []

    class Picamera2:
        def __init__(self, camera_num=0):
            calls.append(("init", camera_num))
            if fail_init:
                raise RuntimeError("Camera __init__ sequence did not complete.")

        def create_video_configuration(self, main=None, lores=None, controls=None, **kwargs):
            calls.append(("create_video_configuration", main, lores, controls))
            return {"use_case": "video", "main": dict(main), "lores": dict(lores), "controls": dict(controls)}

        def configure(self, config):
            calls.append(("configure", config["lores"]["size"]))

        def start(self):
            calls.append(("start",))

        def capture_array(self, name="main"):
            calls.append(("capture_array", name))
            return i420_with_stride(lores_rgb, stride)

        def capture_arrays(self, names):
            calls.append(("capture_arrays", tuple(names)))
            return [i420_with_stride(lores_rgb, stride), main_bgr], {"SensorTimestamp": 1}

        def stop(self):
            calls.append(("stop",))

        def close(self):
            calls.append(("close",))

    return types.SimpleNamespace(Picamera2=Picamera2), calls


def test_picamera2_configures_lores_yuv_and_converts_to_rgb(monkeypatch):
    lores = np.zeros((48, 64, 3), np.uint8)
    lores[:, :32] = (230, 20, 20)  # red left half
    lores[:, 32:] = (20, 20, 230)  # blue right half
    main_bgr = np.zeros((96, 128, 3), np.uint8)
    main_bgr[..., 1] = 180  # green in any order
    main_bgr[..., 0] = 90  # blue in BGR
    module, calls = make_fake_picamera2(lores, stride=96, main_bgr=main_bgr)
    monkeypatch.setitem(sys.modules, "picamera2", module)

    source = open_source("picamera2", width=128, height=96, lores_width=64, lores_height=48, fps=12.0)
    source.open()
    frame = source.read()
    second = source.read()
    source.close()

    assert calls[0] == ("init", 0)
    assert calls[1] == ("create_video_configuration", {"size": (128, 96), "format": "RGB888"},
                        {"size": (64, 48), "format": "YUV420"}, {"FrameRate": 12.0})
    assert calls[2:4] == [("configure", (64, 48)), ("start",)]
    assert calls[4:6] == [("capture_array", "lores")] * 2
    assert calls[-2:] == [("stop",), ("close",)]
    assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
    assert (frame.index, second.index) == (0, 1)
    assert np.abs(frame.rgb[:, :28].astype(int) - (230, 20, 20)).max() <= 12
    assert np.abs(frame.rgb[:, 36:].astype(int) - (20, 20, 230)).max() <= 12
    assert source.stats.frames == 2


def test_picamera2_keep_main_and_camera_errors(monkeypatch):
    lores = np.full((48, 64, 3), 128, np.uint8)
    main_bgr = np.zeros((96, 128, 3), np.uint8)
    main_bgr[..., 0] = 200  # blue in picamera2's RGB888 (B, G, R in memory)
    module, calls = make_fake_picamera2(lores, stride=64, main_bgr=main_bgr)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    with PiCameraSource(128, 96, 64, 48, keep_main=True) as source:
        frame = source.read()
    assert ("capture_arrays", ("lores", "main")) in calls
    assert frame.rgb.shape == (48, 64, 3)
    assert source.last_main.shape == (96, 128, 3) and tuple(source.last_main[0, 0]) == (0, 0, 200)

    module, _ = make_fake_picamera2(lores, 64, main_bgr, fail_init=True)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    with pytest.raises(CameraError, match=r"^Raspberry Pi camera 0 \(picamera2\) could not be opened: Camera __init__"):
        PiCameraSource().open()
    with pytest.raises(CameraError, match="lores stream 1280x720 may not exceed the main stream 640x480"):
        PiCameraSource(640, 480, 1280, 720)


def test_yuv420_conversion_rejects_a_wrong_buffer():
    with pytest.raises(CameraError, match=r"unexpected YUV420 buffer of shape \(10, 10\) for a 64x48 stream"):
        yuv420_to_rgb(np.zeros((10, 10), np.uint8), 64, 48)


# --- factory ---------------------------------------------------------------------------------------------------


def test_open_source_builds_each_kind_and_explains_mistakes(tmp_path):
    assert isinstance(open_source("opencv", device=0), OpenCVSource)
    assert isinstance(open_source("replay", paths=tmp_path, fps=5.0), ReplaySource)
    assert isinstance(open_source("picamera2"), PiCameraSource)
    with pytest.raises(CameraError) as err:
        open_source("webcam", device=0)
    assert str(err.value) == "unknown camera kind 'webcam': choose one of opencv, picamera2, replay"
    with pytest.raises(CameraError, match="camera kind 'replay' does not take option\\(s\\) device; its options are: "
                                          "paths, fps, pace, loop"):
        open_source("replay", device=0)
    with pytest.raises(CameraError, match="camera kind 'opencv': missing a required argument: 'device'"):
        open_source("opencv")
