"""Durable event queue: SQLite in WAL mode with synchronous=FULL; an event leaves only when the consumer acks it.

Life of an event: `add` assigns the next `seq`, stores the encoded event and commits (fsync'd) *before* any publish
attempt; the sender takes `due(now, resend_after_s)` rows, publishes them and calls `mark_sent`; the consumer's ack
on `<device>/events/ack` becomes `ack(seqs)`, which deletes exactly those rows. A broker PUBACK is not durable end to
end, so a row stays until acked and is re-sent after `resend_after_s` (duplicates are possible; `event_id` dedups).

seq: the last seq issued lives in the `meta` table and is bumped in the same transaction as the insert, so a seq
is never reused: not after acks or drops, not after a restart, not after a SIGKILL mid-write (a transaction is all
or nothing). One process owns an outbox file; inside it, one connection serves all threads behind a lock.

Bounds (drop, don't block): at most `max_events` rows. When full, `add` drops the OLDEST unacked events, keeping the
newest evidence, and counts them as dropped "full". Rows older than `max_age_s` (since they were added) are dropped
and counted as "age" by every `add` and `prune`. The counts persist in the database and appear in `stats()`.

Corruption: at open the file is checked (`PRAGMA quick_check`) through a read-only connection, which never writes
to it. If it is damaged, every event that can still be read is salvaged, the file (with its -wal) is renamed aside
to `<name>.corrupt-<UTC time>` and kept, and a fresh outbox starts with the salvaged events; `stats()["corruption"]`
carries the OutboxCorruptError message. With `recover=False` the error is raised instead and the file is untouched.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from edge.durable import fsync_dir
from edge.errors import EdgeError
from edge.messaging.payloads import PayloadError, decode_event, encode_event
from edge.messaging.topics import MAX_SEQ
from edge.types import MatchEvent

log = logging.getLogger(__name__)

#: When a damaged file no longer tells the last seq issued, the fresh outbox skips this many seqs past the highest
#: one salvaged, so an ack for an event we can no longer see never deletes a new event with a reused seq.
SEQ_GAP_AFTER_CORRUPTION = 1_000_000
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_COLUMNS = ["seq", "added_at", "payload", "attempts", "last_sent"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,        -- assigned from meta.last_seq, never reused
    added_at REAL NOT NULL,         -- Unix seconds when add() committed it (the age policy's clock)
    payload BLOB NOT NULL,          -- the encoded edge-event/1 JSON, seq included
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent REAL                  -- Unix seconds of the last publish attempt, NULL if never sent
);
CREATE INDEX IF NOT EXISTS events_added_at ON events (added_at);
"""


class OutboxError(EdgeError):
    """The outbox file cannot be opened or written (permissions, disk full, not an outbox)."""


class OutboxCorruptError(OutboxError):
    """The outbox file is damaged. Its message names the file and what was done with it."""


class OutboxEntry(NamedTuple):
    """One stored event. Times are Unix seconds; attempts counts `mark_sent` calls."""

    seq: int
    payload: bytes
    added_at: float
    attempts: int
    last_sent: float | None


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    code = getattr(err, "sqlite_errorcode", None)  # Python ≥ 3.11
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(err)
    return "malformed" in text or "not a database" in text


class Outbox:
    """A durable, bounded queue of encoded match events keyed by a per-device `seq`.

    path: the SQLite file (created mode 0600). max_events: row limit. max_age_s: age limit in seconds.
    clock: Unix seconds (tests inject one). recover: on a damaged file, set it aside and start fresh (True) or
    raise OutboxCorruptError (False).
    """

    def __init__(self, path: str | os.PathLike, max_events: int = 100_000, max_age_s: float = 7 * 86400,
                 clock: Callable[[], float] = time.time, recover: bool = True) -> None:
        if max_events < 1 or max_age_s <= 0:
            raise OutboxError(f"outbox limits must be positive, got max_events={max_events}, max_age_s={max_age_s}")
        self.path = Path(path)
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._held: set[int] = set()  # committed but not yet audited: never published (`hold`, `release`)
        salvage = self._check_existing(recover)
        self._db = self._connect()
        if salvage is not None:
            self._restore(*salvage)
        self._last_seq = int(self._meta("last_seq", 0))
        self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -------------------------------------------------------------------------------------------------- opening

    def _check_existing(self, recover: bool) -> tuple[list[tuple], int, int, str] | None:
        """None if the file is absent or healthy; else salvage it, move it aside and return what to restore."""
        if not self.path.exists():
            return None
        try:
            ro = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.path} cannot be opened: {err}") from None
        try:
            try:
                problems = [r[0] for r in ro.execute("PRAGMA quick_check").fetchall()]
                if problems == ["ok"]:
                    self._check_is_outbox(ro)
                    return None
                cause = "; ".join(problems[:3])
            except sqlite3.DatabaseError as err:
                if not _is_corruption(err):
                    raise OutboxError(f"outbox {self.path} cannot be opened: {err}") from None
                cause = str(err)
            if not recover:
                raise OutboxCorruptError(f"outbox {self.path} is corrupt ({cause}); move it aside or delete it to"
                                         " start a fresh outbox")
            rows, last_seq = _salvage(ro)
        finally:
            ro.close()
        good, bad = [], 0
        for row in rows:
            try:
                ok = decode_event(row[2])["seq"] == row[0]
            except (PayloadError, TypeError):
                ok = False
            good += [row] if ok else []
            bad += 0 if ok else 1
        top = max((r[0] for r in good), default=0)
        next_floor = max(top, last_seq) if last_seq is not None else top + SEQ_GAP_AFTER_CORRUPTION
        aside = self._move_aside()
        message = (f"outbox {self.path} was corrupt ({cause}); kept it as {aside} and started a fresh outbox with"
                   f" {len(good)} salvaged events ({bad} unreadable), seq continues after {next_floor}")
        log.error("%s", message)
        return good, next_floor, bad, message

    def _check_is_outbox(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [r[1] for r in db.execute("PRAGMA table_info(events)")]
        if tables and (not {"meta", "events"} <= tables or columns != _COLUMNS):
            raise OutboxError(f"{self.path} is an SQLite database but not an edge outbox (tables:"
                              f" {', '.join(sorted(tables))}); point the outbox at another file")

    def _move_aside(self) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            for suffix in ("-wal", "-shm", ""):  # the main file last: it is what marks the outbox as present
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    os.replace(side, f"{aside}{suffix}")
            fsync_dir(self.path.parent)
        except OSError as err:
            raise OutboxCorruptError(f"outbox {self.path} is corrupt and cannot be moved aside: {err}") from None
        return aside

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # subject ids are personal data
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise OutboxError(f"outbox {self.path}: SQLite refused WAL mode on this filesystem")
            db.execute("PRAGMA synchronous = FULL")  # every commit is fsync'd: a power cut loses no added event
            db.execute("PRAGMA journal_size_limit = 4194304")
            db.executescript(_SCHEMA)
            return db
        except (OSError, sqlite3.Error) as err:
            raise OutboxError(f"outbox {self.path} cannot be opened: {err}") from None

    def _restore(self, rows: list[tuple], next_floor: int, bad: int, message: str) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO events (seq, added_at, payload, attempts, last_sent) VALUES (?, ?, ?, ?, ?)",
                           rows)
            self._set_meta(db, "last_seq", next_floor)
            self._set_meta(db, "dropped_corrupt", int(self._meta("dropped_corrupt", 0)) + bad)
            self._set_meta(db, "corruption", message)

    # ---------------------------------------------------------------------------------------------- plumbing

    def _transaction(self) -> "_Txn":
        return _Txn(self)

    def _meta(self, key: str, default: Any) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @staticmethod
    def _set_meta(db: "_Txn", key: str, value: Any) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   (key, value))

    def _bump(self, db: "_Txn", key: str, n: int) -> None:
        if n:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (key, n))

    def _prune(self, db: "_Txn", now: float) -> int:
        dropped = db.execute("DELETE FROM events WHERE added_at < ?", (now - self.max_age_s,)).rowcount
        self._bump(db, "dropped_age", dropped)
        return dropped

    # -------------------------------------------------------------------------------------------------- the API

    def add(self, event: MatchEvent | dict, hold: bool = False) -> int:
        """Store `event` (a `MatchEvent`, or an edge-event/1 dict whose `seq` is ignored) under the next seq, commit,
        return the seq. The event is validated here, once (`encode_event`), before a seq is consumed. hold: keep it
        from the sender until `release(seq)` (the event writer holds an event until its audit record is written;
        holds live in memory: after a restart `edge.device.event_writer.reconcile` audits what was held).

        Raises PayloadError if the event is invalid (no seq is consumed) and OutboxError if the disk refuses.
        """
        body = event.to_json() if isinstance(event, MatchEvent) else dict(event)
        # Validated once, at the widest seq (so the size check holds for any); the real seq is spliced in below.
        before, after = encode_event(body, seq=MAX_SEQ).split(b'"seq":%d' % MAX_SEQ, 1)
        with self._lock, self._transaction() as db:
            now = self._clock()
            depth = self._depth - self._prune(db, now)
            seq = self._last_seq + 1
            payload = before + b'"seq":%d' % seq + after
            overflow = depth + 1 - self.max_events
            if overflow > 0:  # full: the oldest evidence goes, the newest stays
                db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                           (overflow,))
                self._bump(db, "dropped_full", overflow)
                depth -= overflow
            db.execute("INSERT INTO events (seq, added_at, payload) VALUES (?, ?, ?)", (seq, now, payload))
            self._set_meta(db, "last_seq", seq)
            db.commit_hook = lambda: self._settle(seq, depth + 1, hold)
        return seq

    def release(self, seq: int) -> None:
        """Let the sender publish the held event `seq` (its audit record is written)."""
        with self._lock:
            self._held.discard(int(seq))

    def _settle(self, seq: int, depth: int, hold: bool = False) -> None:
        """Mirror a committed change in the in-memory counters (one process owns the file, so they stay exact)."""
        self._last_seq, self._depth = seq, depth
        if hold:
            self._held.add(seq)

    def entries(self, limit: int = 100) -> list[OutboxEntry]:
        """Up to `limit` stored events, oldest first, with their send bookkeeping."""
        with self._lock:
            rows = self._db.execute("SELECT seq, payload, added_at, attempts, last_sent FROM events ORDER BY seq"
                                    " LIMIT ?", (limit,))
            return [OutboxEntry(*row) for row in rows]

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Up to `limit` unacknowledged events as (seq, payload), oldest first, sent or not."""
        return [(e.seq, e.payload) for e in self.entries(limit)]

    def due(self, now: float, resend_after_s: float, limit: int = 100) -> list[tuple[int, bytes]]:
        """Events to publish now, oldest first: never sent, or last sent at least `resend_after_s` seconds ago;
        never a held one."""
        with self._lock:
            rows = self._db.execute("SELECT seq, payload FROM events WHERE last_sent IS NULL OR last_sent <= ?"
                                    " ORDER BY seq LIMIT ?", (now - resend_after_s, limit + len(self._held)))
            return [(seq, payload) for seq, payload in rows if seq not in self._held][:limit]

    def mark_sent(self, seqs: Iterable[int], now: float | None = None) -> int:
        """Record a publish attempt of `seqs` at `now` (Unix s, default the clock); returns the rows updated."""
        when = self._clock() if now is None else now
        with self._lock, self._transaction() as db:
            cur = db.executemany("UPDATE events SET attempts = attempts + 1, last_sent = ? WHERE seq = ?",
                                 [(when, int(s)) for s in seqs])
            return max(cur.rowcount, 0)

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete the acknowledged events; unknown or repeated seqs are ignored. Returns the rows deleted."""
        with self._lock, self._transaction() as db:
            cur = db.executemany("DELETE FROM events WHERE seq = ?", [(int(s),) for s in set(seqs)])
            deleted = max(cur.rowcount, 0)
            db.commit_hook = lambda: self._settle(self._last_seq, self._depth - deleted)
        return deleted

    def prune(self, now: float | None = None) -> int:
        """Drop events older than max_age_s (counted as "age"); returns how many."""
        with self._lock, self._transaction() as db:
            dropped = self._prune(db, self._clock() if now is None else now)
            db.commit_hook = lambda: self._settle(self._last_seq, self._depth - dropped)
        return dropped

    def depth(self) -> int:
        """Events stored and not yet acknowledged."""
        with self._lock:
            return self._depth

    def stats(self) -> dict[str, Any]:
        """depth, oldest_age_s (None when empty), last_seq, limits, dropped {full, age, corrupt}, corruption."""
        with self._lock:
            oldest = self._db.execute("SELECT MIN(added_at) FROM events").fetchone()[0]
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            return {"depth": self._depth, "oldest_age_s": None if oldest is None else self._clock() - oldest,
                    "last_seq": self._last_seq, "max_events": self.max_events, "max_age_s": self.max_age_s,
                    "dropped": {k: int(meta.get(f"dropped_{k}", 0)) for k in ("full", "age", "corrupt")},
                    "corruption": meta.get("corruption")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Txn:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; `commit_hook` runs only once the commit is durable."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.db = outbox._db
        self.commit_hook: Callable[[], None] | None = None

    def __enter__(self) -> "_Txn":
        self._call("BEGIN IMMEDIATE")
        return self

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self._call(sql, params)

    def executemany(self, sql: str, rows: list) -> sqlite3.Cursor:
        try:
            return self.db.executemany(sql, rows)
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.outbox.path}: {err}") from None

    def _call(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.outbox.path}: {err}") from None

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return
        self._call("COMMIT")
        if self.commit_hook is not None:
            self.commit_hook()


def _salvage(db: sqlite3.Connection) -> tuple[list[tuple], int | None]:
    """Whatever rows and last seq a damaged database still yields: a forward scan and a backward scan, each until
    the first unreadable page."""
    rows: dict[int, tuple] = {}
    for order in ("ASC", "DESC"):
        try:
            for row in db.execute(f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY seq {order}"):
                rows[row[0]] = row
        except sqlite3.DatabaseError:
            pass
    try:
        found = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        last_seq = int(found[0]) if found is not None else None
    except (sqlite3.DatabaseError, TypeError, ValueError):
        last_seq = None
    return [rows[k] for k in sorted(rows)], last_seq


