"""The fakes several test modules share: a transport that records, a watchlist store that accepts (or refuses) any
bundle, a clock the test moves. One of each, so a change to the interface they stand in for is made once."""

from __future__ import annotations

from pathlib import Path

from edge.install_state import InstalledState


class FakeTransport:
    """What `WatchlistSync` and the publishers talk to instead of an MQTT client: the topics subscribed now
    (in order) and every publish as (topic, payload, retain)."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.published: list[tuple[str, bytes, bool]] = []

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        if topic in self.subscribed:
            self.subscribed.remove(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))


class FakeStore:
    """Stands in for the device's `WatchlistStore`, which sync hands the assembled download to: it accepts any bundle
    as version `installs_as`, or with `accept=False` refuses every one as a bad signature. `version`: the version
    installed now (None: nothing). `attempts` counts every install call, `installed` the accepted bundles."""

    def __init__(self, version: int | None = None, accept: bool = True, installs_as: int = 2) -> None:
        self.version, self.accept, self.installs_as = version, accept, installs_as
        self.installed: list[bytes] = []
        self.attempts = 0

    def current(self):
        return None, ({"version": self.version} if self.version else None)

    def state(self) -> InstalledState:
        return InstalledState("ok" if self.version else "none", self.version)

    def install_file(self, path: Path):
        """The sync's way in: the download assembled on disk."""
        return self.install(Path(path).read_bytes())

    def install(self, data: bytes):
        from edge.install_state import InstallResult

        self.attempts += 1
        if not self.accept:
            return InstallResult(False, "bad_signature", self.installs_as, "signature does not verify")
        self.installed.append(data)
        self.version = self.installs_as
        return InstallResult(True, "installed", self.installs_as, f"installed v{self.installs_as}")


class FakeClock:
    """A clock for `clock=` parameters: returns `t`, which the test moves; with `step`, each reading first advances
    it by `step` seconds (a log whose every record gets a later time)."""

    def __init__(self, t: float = 100.0, step: float = 0.0) -> None:
        self.t, self.step = t, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t
