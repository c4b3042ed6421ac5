"""edge/device/sdnotify.py against a real AF_UNIX datagram socket, and the app's watchdog gating on pipeline
progress."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from edge.device import sdnotify
from edge.device.sdnotify import Notifier, ProgressWatchdog


@pytest.fixture
def sock_path(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    yield s, path
    s.close()


def recv_all(s: socket.socket, timeout: float = 0.2) -> list[str]:
    out, s_timeout = [], s.gettimeout()
    s.settimeout(timeout)
    try:
        while True:
            out.append(s.recv(4096).decode())
    except (socket.timeout, BlockingIOError):
        pass
    finally:
        s.settimeout(s_timeout)
    return out


def test_ready_status_watchdog_stopping_sequence(sock_path, monkeypatch):
    s, path = sock_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_env()
    assert n.enabled
    assert n.ready() and n.status("watching: 3 faces") and n.watchdog() and n.stopping()
    assert recv_all(s) == ["READY=1", "STATUS=watching: 3 faces", "WATCHDOG=1", "STOPPING=1"]
    assert sdnotify.sd_notify("WATCHDOG=1") is True  # the module-level function app.py uses
    assert recv_all(s) == ["WATCHDOG=1"]


def test_abstract_namespace(monkeypatch):
    name = f"edge-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier.from_env().ready("up")
        assert recv_all(s) == ["READY=1\nSTATUS=up"]
    finally:
        s.close()


def test_unset_env_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier.from_env()
    assert not n.enabled
    assert n.notify("READY=1") is False and n.watchdog() is False
    assert sdnotify.sd_notify("READY=1") is False
    assert n.watchdog_interval() is None and sdnotify.watchdog_interval() is None


def test_dead_socket_is_not_fatal(tmp_path):
    assert Notifier(str(tmp_path / "nobody-listens")).notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_progress_watchdog_stops_pinging_when_progress_stalls(sock_path):
    s, path = sock_path
    clock = SimpleNamespace(t=100.0)
    pipeline = SimpleNamespace(last_progress=100.0)
    wd = ProgressWatchdog(Notifier(path, 30_000_000), lambda: pipeline.last_progress, stall_s=5.0,
                          clock=lambda: clock.t)
    sent = []
    for _ in range(20):  # 10 s of progress: one ping per second
        clock.t += 0.5
        pipeline.last_progress = clock.t
        sent.append(wd.tick())
    assert sum(sent) == 10
    assert recv_all(s) == ["WATCHDOG=1"] * 10
    for _ in range(40):  # the inference thread hangs: pings stop once progress is 5 s old
        clock.t += 0.5
        wd.tick()
    assert len(recv_all(s)) == 5  # at +0.5 .. +4.5 s after the last progress; none from +5 s on
    assert not wd.tick(clock.t + 100)
    assert recv_all(s) == []


class _FakePipeline:
    """Only what the control worker (edge.device.control) reads: last_progress (time.monotonic())."""

    def __init__(self) -> None:
        self.last_progress = time.monotonic()
        self.advancing = True

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            if self.advancing:
                self.last_progress = time.monotonic()


def test_app_control_loop_pings_only_while_the_pipeline_progresses(sock_path, monkeypatch):
    """The device's real control worker (no MQTT client) on a simulated clock, against a fake pipeline whose
    last_progress stops advancing: pings over the real socket while it moves, none once it has stalled > 5 s."""
    from edge.device.control import Control

    s, path = sock_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    pipeline = _FakePipeline()
    config = SimpleNamespace(mqtt=SimpleNamespace(status_interval_s=60.0), health=SimpleNamespace(log_interval_s=1e9))
    clock = [1000.0]
    control = Control(config, SimpleNamespace(prefix="edge", device_id="t"), SimpleNamespace(inc=lambda *_: None),
                      pipeline, store=None, outbox=None, audit=None, clock=lambda: clock[0])

    def advance(seconds: float) -> None:  # 50 ms passes, as the worker runs them
        for _ in range(int(seconds / 0.05)):
            clock[0] += 0.05
            if pipeline.advancing:
                pipeline.last_progress = clock[0]
            control.step(clock[0])

    pipeline.last_progress = clock[0]
    advance(10)  # 10 s of progress
    moving = recv_all(s, 0.05)
    assert len(moving) >= 5 and set(moving) == {"WATCHDOG=1"}, moving
    pipeline.advancing = False
    advance(8)  # pings for up to 5 s of it, then none
    recv_all(s, 0.05)
    advance(10)  # 10 more s of stall
    assert recv_all(s, 0.05) == [], "WATCHDOG=1 sent while the inference thread made no progress"
    pipeline.advancing = True
    advance(3)
    assert "WATCHDOG=1" in recv_all(s, 0.05), "pings must resume when progress resumes"
