"""The `broker` and `models` markers, computed from what a test uses, and a check that the `models` one is right.

`broker`: the test's fixtures (its whole closure) include a mosquitto fixture.
`models`: the test's fixtures include `models` (conftest.py: the models directory, which every fixture that loads
model files — the analyzers, a module's own — takes its path from), or the test carries the marker itself:
`@pytest.mark.models`, or `pytestmark = pytest.mark.models` for a module whose tests load the models through the CLI
or the app.

The check: while each test runs (setup and call), every open of a model file (*.tflite, *.npz) under the models
directory is seen with inotify, whichever process opens it (the test's own, or an `edge` it starts); a test that
opened one without the `models` marker fails, naming the files. So a new test that loads the models cannot slip
into the `-m "not models"` selection unnoticed. What it cannot see is a model a fixture loaded for an earlier test
and caches: hence the rule that such a fixture takes `models`, which marks all its users (a test that gets one by
`request.getfixturevalue` marks itself). inotify sees every process on the host, so another pytest run or an
`edge` started from the same checkout would count too: the check is on only when `EDGE_CHECK_MODEL_MARKERS=1`
(tests/run.sh, hence CI, sets it; the session header says whether it is on). Without inotify (not Linux) it is off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

import pytest

#: A test using this fixture, directly or through another fixture (conftest.py's analyzers), is marked `models`.
MODEL_FIXTURES = {"models"}
BROKER_FIXTURES = {"broker", "tls_certs", "pki"}
MODEL_SUFFIXES = (".tflite", ".npz")

_IN_OPEN = 0x20
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


class ModelOpens:
    """Names of the model files opened (by any process) since the last `drain`, from an inotify watch on the models
    directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_OPEN) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"inotify_add_watch {directory}")

    def drain(self) -> set[str]:
        opened: set[str] = set()
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return opened
            at = 0
            while at < len(buf):
                _, mask, _, size = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size:at + _EVENT.size + size].rstrip(b"\0").decode(errors="replace")
                at += _EVENT.size + size
                if mask & _IN_Q_OVERFLOW:
                    opened.add("(inotify queue overflow: some model file)")
                elif name.endswith(MODEL_SUFFIXES):
                    opened.add(name)

    def close(self) -> None:
        os.close(self.fd)


_WATCH = pytest.StashKey["ModelOpens | None"]()


def pytest_configure(config):
    from edge.paths import models_dir

    config.stash[_WATCH] = None
    if os.environ.get("EDGE_CHECK_MODEL_MARKERS") != "1":
        return
    try:
        config.stash[_WATCH] = ModelOpens(models_dir())
    except (OSError, AttributeError):  # not Linux (no inotify in libc), or no models directory
        pass


def pytest_report_header(config):
    watch = config.stash.get(_WATCH, None)
    return ("models marker check: on (inotify on " + str(watch.directory) + ")" if watch is not None else
            "models marker check: off (EDGE_CHECK_MODEL_MARKERS=1 and inotify turn it on)")


def pytest_unconfigure(config):
    watch = config.stash.get(_WATCH, None)
    if watch is not None:
        watch.close()


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & BROKER_FIXTURES:
            item.add_marker(pytest.mark.broker)
        if names & MODEL_FIXTURES:
            item.add_marker(pytest.mark.models)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    watch = item.config.stash.get(_WATCH, None)
    if watch is not None:
        watch.drain()  # opens before this test (collection, an earlier test's stragglers) are not its own


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    watch = item.config.stash.get(_WATCH, None)
    if watch is None or call.when != "call":
        return
    opened = watch.drain()
    report = outcome.get_result()
    if opened and item.get_closest_marker("models") is None and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} opened {', '.join(sorted(opened))} (in {watch.directory}) but is not "
                           "marked `models`, so `-m 'not models'` would select it: take the models directory from "
                           "the `models` fixture (or a fixture that does), or mark the test (@pytest.mark.models) or "
                           "its module (pytestmark = pytest.mark.models)")
