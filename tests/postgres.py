"""A throwaway PostgreSQL cluster for the store tests: `initdb` + `pg_ctl` on a free loopback port in a temporary
directory (Debian's `postgresql` package; tests/run.sh installs it). `initdb` and `postgres` refuse to run as
root, and CI runs as root: then they run as the `postgres` user the package creates (`runuser -u postgres --`).

    def test_x(postgres_url):            # postgresql://edge@127.0.0.1:PORT/edge, a fresh database per test
        store = EventStore(postgres_url)

Without PostgreSQL installed the fixture fails (never skips).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from edge.evaluation.loopback_broker import free_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): the store tests need the real "
                "server; install it with `sudo apt-get install postgresql`", pytrace=False)


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    def __init__(self) -> None:
        self.bin = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data, self.sock = self.dir / "data", self.dir / "sock"
        self.sock.mkdir()
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.sock, "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "edge", "--no-sync", "-E",
                   "UTF8"])
        self.start()

    def start(self) -> None:
        """Start (or restart, after `halt`) the cluster."""
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w",
                   "start"])

    def halt(self) -> None:
        """Stop the cluster at once (`-m immediate`, as a crash), keeping its data for `start`."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            pytest.fail(f"{' '.join(cmd[:1])} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}", pytrace=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://edge@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        for _ in range(50):
            try:
                shutil.rmtree(self.dir)
                return
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server():
    server = Postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's throwaway cluster."""
    return postgres_server.create_database()
