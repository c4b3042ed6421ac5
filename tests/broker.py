"""Fixtures for tests against a real mosquitto running the committed firmware-config/mosquitto/edge.conf.

`tls_certs` (session): a fresh test PKI (tools/make_test_certs.py) in a temporary directory; devices cam-a … cam-d.
`broker` (function): a started `Broker` on a free loopback port, with its own persistence and log; stopped after
the test. Its config is edge.conf with only /etc/mosquitto/edge/, the port (bound to 127.0.0.1), the persistence
and log locations and the user substituted, so the tests exercise the production TLS and ACL settings.

    def test_x(broker):
        client = MqttClient(broker.client_settings("cam-a"), [("edge/cam-a/events/ack", 1)])
        broker.kill(); broker.start()   # SIGKILL, then restart on the same port with the same persistence

If mosquitto is not installed the fixtures fail (CI installs it with apt); they never skip.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.evaluation.loopback_broker import find_mosquitto as _find_mosquitto
from edge.evaluation.loopback_broker import free_port  # noqa: F401 - used by tests
from edge.evaluation.loopback_broker import render_config as _render_config

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "firmware-config" / "mosquitto"
DEVICES = ("cam-a", "cam-b", "cam-c", "cam-d", "cam-e", "operator-2")  # operator-2: a second consumer
START_TIMEOUT = 5.0  # seconds for mosquitto to accept connections


def _load_cert_tool():
    """tools/ is not a package: load tools/make_test_certs.py by path (one implementation for CLI and tests)."""
    if "make_test_certs" in sys.modules:
        return sys.modules["make_test_certs"]
    spec = importlib.util.spec_from_file_location("make_test_certs", ROOT / "tools" / "make_test_certs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_test_certs"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH), or fail the test."""
    found = _find_mosquitto()
    if not found:
        pytest.fail("mosquitto is not installed (or not on PATH, /usr/sbin, /usr/local/sbin): the broker tests need "
                    "the real broker; install it with `sudo apt-get install mosquitto`", pytrace=False)
    return found


def render_config(text: str, etc_dir: Path, port: int, data_dir: Path, log_file: Path) -> str:
    """edge.conf with its deployment paths, port and user replaced (`edge.evaluation.loopback_broker`); fails the
    test if one of them is no longer there."""
    try:
        return _render_config(text, etc_dir, port, data_dir, log_file)
    except ValueError as err:
        raise AssertionError(f"{err}; update edge/evaluation/loopback_broker.py to match") from None


class Broker:
    """One mosquitto process on a fixed loopback port; `kill()`/`start()` keep the port and persistence dir."""

    def __init__(self, pki, work_dir: Path, port: int | None = None) -> None:
        self.pki = pki
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(work_dir)
        self.etc_dir = self.dir / "etc"
        self.data_dir = self.dir / "data"
        self.log_file = self.dir / "mosquitto.log"
        self.conf_file = self.etc_dir / "edge.conf"
        self.proc: subprocess.Popen | None = None
        self._binary = find_mosquitto()
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki.ca, self.etc_dir / "ca.crt")
        shutil.copy(pki.server_cert, self.etc_dir / "server.crt")
        shutil.copy(pki.server_key, self.etc_dir / "server.key")
        shutil.copy(CONF_DIR / "acl", self.etc_dir / "acl")
        self.conf_file.write_text(render_config((CONF_DIR / "edge.conf").read_text(), self.etc_dir, self.port,
                                                self.data_dir, self.log_file))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start mosquitto (again) and wait until the port accepts; fails the test with the log if it does not."""
        if self.running:
            raise RuntimeError("the broker is already running")
        self.proc = subprocess.Popen([self._binary, "-c", str(self.conf_file)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode(errors="replace")
                pytest.fail(f"mosquitto exited with status {self.proc.returncode} on start:\n{output}\n"
                            f"log:\n{self.log()}", pytrace=False)
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        pytest.fail(f"mosquitto did not accept connections on {self.host}:{self.port} within {START_TIMEOUT:g} s; "
                    f"log:\n{self.log()}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL, like a power cut: state since the last autosave is lost and clients see no clean disconnect."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence database and exits."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def log(self) -> str:
        """mosquitto's log so far (connections, refusals, TLS errors)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else "(no log written)"

    def load_acl(self, text: str, timeout: float = 5.0) -> None:
        """Replace the broker's ACL file (e.g. `edge fleet acl` output) and reload it with SIGHUP, as an operator
        does; returns once mosquitto logged the reload."""
        (self.etc_dir / "acl").write_text(text)
        before = self.log().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not reload its ACL within {timeout:g} s; log:\n{self.log()}", pytrace=False)
            time.sleep(0.02)

    def client_settings(self, name: str | None, **kw):
        """MqttSettings for this broker with `name`'s client certificate (a device id, "operator" or "rogue";
        None = no client certificate). client_id defaults to `name`; keyword arguments override any field."""
        from edge.messaging.mqtt import MqttSettings

        fields = dict(host=self.host, port=self.port, client_id=name or "no-cert", ca_file=self.pki.ca,
                      reconnect_min=0.1, reconnect_max=1.0, keepalive=10)
        if name is not None:
            fields.update(cert_file=self.pki.cert(name), key_file=self.pki.key(name))
        unknown = set(kw) - {f.name for f in dataclasses.fields(MqttSettings)}
        if unknown:
            raise TypeError(f"MqttSettings has no field(s) {', '.join(sorted(unknown))}")
        fields.update(kw)
        return MqttSettings(**fields)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """A test PKI (make_test_certs.Pki): CA, broker, cam-a, cam-b, operator, and rogue (another CA's "cam-a")."""
    return _load_cert_tool().make_pki(tmp_path_factory.mktemp("pki"), DEVICES)


@pytest.fixture
def broker(tls_certs, tmp_path):
    """A running mosquitto with the production config on a free loopback port (see `Broker`)."""
    instance = Broker(tls_certs, tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
