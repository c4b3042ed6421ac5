"""The device's sync runs installs on a worker thread: while a slow install (a delta rebuilding a large index)
runs, `handle` and `tick` return at once, so the control thread keeps acknowledging events and feeding the
watchdog; the outcome is collected by a later `tick` and reported."""

import threading
import time
from types import SimpleNamespace

from edge.messaging.payloads import decode_watchlist_state
from edge.install_state import InstalledState
from edge.messaging.offers import offer_messages
from edge.messaging.sync import WatchlistSync
from fakes import FakeTransport


class SlowStore:
    """Installs block until `release` is set (no crypto here: the sync's threading is what is under test)."""

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()
        self.version, self.threads = None, []

    def current(self):
        return (object(), {"version": self.version}) if self.version else (None, None)

    floor = None

    def state(self):
        return InstalledState("ok" if self.version else "none", self.version)

    def install_file(self, path):
        from pathlib import Path

        return self.install(Path(path).read_bytes())

    def install(self, data):
        self.threads.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(10)
        self.version = 1
        return SimpleNamespace(ok=True, reason="installed", version=1, message="installed v1")


def test_a_slow_install_does_not_block_the_control_thread(tmp_path):
    store, transport = SlowStore(), FakeTransport()
    sync = WatchlistSync(store, transport, "cam-a", tmp_path / "incoming", background=True)
    bundle = b"x" * 5000
    messages = offer_messages(bundle, "cam-a", 1, chunk_bytes=1024, recipients=["cam-a"])
    try:
        t0 = time.monotonic()
        sync.handle(*messages[-1])  # the offer
        for topic, payload in messages[:-1]:
            sync.handle(topic, payload)  # the last chunk completes the bundle: the install starts in the worker
        assert store.started.wait(5) and sync.busy
        for _ in range(5):
            sync.tick()  # the control loop goes on while the install runs
        assert time.monotonic() - t0 < 2 and store.version is None and sync.busy
        store.release.set()
        deadline = time.monotonic() + 5
        while sync.busy and time.monotonic() < deadline:
            sync.tick()
            time.sleep(0.01)
        assert not sync.busy and store.version == 1 and store.threads == ["edge-install_0"]
        states = [decode_watchlist_state(p) for t, p, _ in transport.published if t.endswith("/watchlist/state")]
        assert (states[-1].installed_version, states[-1].state) == (1, "installed")
        assert sync.stats.installs == 1
    finally:
        store.release.set()
        sync.close()


def test_without_background_the_install_runs_inside_handle(tmp_path):
    store, transport = SlowStore(), FakeTransport()
    store.release.set()
    sync = WatchlistSync(store, transport, "cam-a", tmp_path / "incoming")
    messages = offer_messages(b"y" * 3000, "cam-a", 1, chunk_bytes=1024, recipients=["cam-a"])
    for topic, payload in [messages[-1], *messages[:-1]]:
        sync.handle(topic, payload)
    assert store.version == 1 and store.threads == [threading.current_thread().name] and not sync.busy


class FlooredStore(SlowStore):
    """Nothing live, a rollback floor of 5: refused at start (repairable), or wiped (not)."""

    def __init__(self, state):
        super().__init__()
        self.release.set()
        self.floor, self._state = 5, state

    def state(self):
        return InstalledState(self._state)


def test_a_refused_install_can_be_repaired_with_the_same_version_but_a_wiped_one_cannot(tmp_path):
    for state, fetched in (("none", True), ("wiped", False)):
        store, transport = FlooredStore(state), FakeTransport()
        sync = WatchlistSync(store, transport, "cam-a", tmp_path / state)
        offer = offer_messages(b"z" * 2000, "cam-a", 5, chunk_bytes=1024, recipients=["cam-a"])[-1]
        sync.handle(*offer)
        assert (sync.download is not None) == fetched, state
