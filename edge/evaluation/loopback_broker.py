"""A throwaway mosquitto on a loopback port running the committed `firmware-config/mosquitto/edge.conf` (TLS,
client certificates, the ACL given), for benchmarks; the tests' broker fixture renders the config the same way.
Nothing here is used on a device."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.errors import DataError

ROOT = Path(__file__).resolve().parent.parent.parent
CONF_DIR = ROOT / "firmware-config" / "mosquitto"


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_config(text: str, etc_dir: Path, port: int, data_dir: Path, log_file: Path) -> str:
    """edge.conf with its deployment paths, port (bound to 127.0.0.1) and user replaced; ValueError naming the
    line when one of them is no longer in the file."""
    replacements = [
        ("/etc/mosquitto/edge/", f"{etc_dir}/"),
        ("listener 8883\n", f"listener {port} 127.0.0.1\n"),
        ("persistence_location /var/lib/mosquitto/\n", f"persistence_location {data_dir}/\n"),
        ("log_dest file /var/log/mosquitto/mosquitto.log\n", f"log_dest file {log_file}\n"),
        # As root, mosquitto drops to this user, who could not read a temporary directory.
        ("user mosquitto\n", f"user {getpass.getuser()}\n"),
    ]
    for old, new in replacements:
        if old not in text:
            raise ValueError(f"firmware-config/mosquitto/edge.conf no longer contains {old.strip()!r}")
        text = text.replace(old, new)
    return text


class LoopbackBroker:
    """mosquitto with the shipped config in `work_dir`: `pki` has ca, server_cert, server_key (make_test_certs)."""

    def __init__(self, pki, work_dir: Path, acl: str) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise DataError("mosquitto is not installed: `sudo apt-get install mosquitto` (the bench runs the real"
                            " broker with the shipped configuration)")
        if not (CONF_DIR / "edge.conf").exists():
            raise DataError(f"{CONF_DIR / 'edge.conf'} is missing: run the bench from the repository")
        self.binary, self.port, self.host = binary, free_port(), "127.0.0.1"
        etc, data = Path(work_dir) / "etc", Path(work_dir) / "data"
        etc.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki.ca, etc / "ca.crt")
        shutil.copy(pki.server_cert, etc / "server.crt")
        shutil.copy(pki.server_key, etc / "server.key")
        (etc / "acl").write_text(acl)
        self.log_file = Path(work_dir) / "mosquitto.log"
        self.conf = etc / "edge.conf"
        self.conf.write_text(render_config((CONF_DIR / "edge.conf").read_text(), etc, self.port, data,
                                           self.log_file))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LoopbackBroker":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DataError(f"mosquitto exited on start (status {self.proc.returncode}); see {self.log_file}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise DataError(f"mosquitto did not accept connections on {self.host}:{self.port} within 10 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
