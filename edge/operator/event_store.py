"""The operator's event store: every match event received, once (keyed by `event_id`), durable before the device is
told it may forget it. SQLite today; issue 13 adds PostgreSQL and the review console on top."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from edge.durable import private_dir, private_file
from edge.errors import EdgeError


class EventStore:
    """The operator's event store: SQLite (WAL, synchronous=FULL), one row per `event_id`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent, chmod_existing=False)
        try:
            private_file(self.path)  # names and evidence: 0600 before SQLite creates it (its -wal/-shm copy the mode)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, "
                            "seq INTEGER NOT NULL, received_at REAL NOT NULL, body TEXT NOT NULL)")
            self.db.execute("CREATE INDEX IF NOT EXISTS by_device_seq ON events(device_id, seq)")
        except sqlite3.DatabaseError as err:
            raise EdgeError(f"event store {self.path} cannot be opened: {err}") from None

    def add(self, events: list[dict]) -> list[dict]:
        """Store a batch in one transaction; returns the ones that were new."""
        new = []
        with self.db:
            for ev in events:
                cur = self.db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                                      (ev["event_id"], ev["device_id"], ev["seq"], time.time(), json.dumps(ev)))
                if cur.rowcount:
                    new.append(ev)
        return new

    def seqs(self, device_id: str) -> list[int]:
        """All stored seqs of a device, ascending."""
        return [r[0] for r in self.db.execute("SELECT seq FROM events WHERE device_id=? ORDER BY seq", (device_id,))]

    def close(self) -> None:
        self.db.close()
