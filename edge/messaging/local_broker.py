"""A throwaway MQTT broker on a free loopback port for `edge demo`: mosquitto when installed, else the embedded
pure-Python amqtt broker (the `demo` extra). Never used on a device (production: firmware-config/mosquitto)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """A broker on a free loopback port, anonymous, for the demo only (production: firmware-config/mosquitto):
    mosquitto if installed, else the pure-Python `amqtt` broker (the `demo` extra) embedded in a thread."""

    def __init__(self, workdir: Path, prefer_mosquitto: bool = True) -> None:
        self.binary = (shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
                       if prefer_mosquitto else None)
        self.port = _free_port()
        self.conf = workdir / "mosquitto-demo.conf"
        self.proc: subprocess.Popen | None = None
        self.kind: str | None = None
        self._loop: Any = None
        self._amqtt: Any = None

    def start(self) -> bool:
        """Start a broker; False when neither mosquitto nor amqtt is available."""
        if self.binary and self._start_mosquitto():
            self.kind = "mosquitto"
        elif self._start_amqtt():
            self.kind = "amqtt"
        return self.kind is not None

    def _wait(self) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _start_mosquitto(self) -> bool:
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        if self.binary is None:
            return False
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if self._wait():
            return True
        self.stop()
        return False

    def _start_amqtt(self) -> bool:
        try:
            from amqtt.broker import Broker
        except ImportError:
            return False
        import asyncio
        import logging

        logging.getLogger("amqtt").setLevel(logging.ERROR)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._amqtt = Broker(config, loop=self._loop)
            try:
                self._loop.run_until_complete(self._amqtt.start())
            except Exception:  # noqa: BLE001 - a broker that cannot listen: the demo says so and runs without one
                self._amqtt = None
                return
            finally:
                started.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="edge-demo-broker", daemon=True).start()
        return started.wait(10) and self._amqtt is not None  # start() returns once it listens

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        if self._amqtt is not None and self._loop is not None:
            import asyncio

            try:
                asyncio.run_coroutine_threadsafe(self._amqtt.shutdown(), self._loop).result(5)
            except Exception:  # noqa: BLE001 - shutting the demo's broker down must not hide the demo's result
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._amqtt = None
