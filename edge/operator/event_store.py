"""The operator's event store: every match event received, once (the database's primary key on `event_id` dedups,
whichever consumer process stored it first), durable before the device is told it may forget it; the reviewers'
decisions; the devices' last status and watchlist state. SQLite or PostgreSQL (`edge.operator.db`).

Review rule: an event is `confirmed` once `required` different reviewers confirmed it (default 2), `rejected` as
soon as one reviewer rejects it, and stays `pending` (in the queue) otherwise — `unsure` adds a note and keeps it
there. A reviewer decides an event once.

Counts: the events per status are kept in `event_counts` (migration 003), changed in the same transaction as the
rows they count, so the queue's three counts on every poll are three-row reads instead of scans. Counter rows are
updated last in each transaction and in a fixed order (statuses sorted), so transactions that also lock event rows
(decide: its event; purge: the old ones) never wait on each other in a cycle.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import DataError
from edge.operator.db import Database

DECISIONS = ("confirm", "reject", "unsure")
STATUSES = ("pending", "confirmed", "rejected")
_EVENT_COLUMNS = ("event_id", "device_id", "seq", "captured_at", "received_at", "subject_id", "watchlist_id",
                  "watchlist_version", "similarity", "threshold", "status", "body")


def _row(row: tuple) -> dict[str, Any]:
    out = dict(zip(_EVENT_COLUMNS, row, strict=True))
    out["event"] = json.loads(out.pop("body"))
    return out


class EventStore:
    """Events, decisions and device reports in one database. `url`: see `edge.operator.db.parse_url`."""

    def __init__(self, url: str | Path, required_confirmations: int = 2) -> None:
        if not 1 <= required_confirmations <= 10:
            raise DataError(f"required confirmations must be in [1, 10], got {required_confirmations}")
        self.db = Database(url)
        self.required = required_confirmations

    # ------------------------------------------------------------ events

    def add(self, events: list[dict]) -> list[dict]:
        """Store a batch in one transaction; returns the ones that were new (the others were stored before, maybe
        by another consumer), in the batch's order. Rows are inserted in event_id order, so two consumers storing
        overlapping batches wait for each other instead of deadlocking on each other's uncommitted rows."""
        new, now = set(), time.time()
        with self.db.transaction() as cur:
            for i in sorted(range(len(events)), key=lambda k: str(events[k]["event_id"])):
                ev = events[i]
                cur.execute("INSERT INTO events (event_id, device_id, seq, captured_at, received_at, subject_id,"
                            " watchlist_id, watchlist_version, similarity, threshold, body)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                            (ev["event_id"], ev["device_id"], ev["seq"], float(ev["captured_at"]), now,
                             ev["subject_id"], ev["watchlist_id"], ev["watchlist_version"], float(ev["similarity"]),
                             float(ev["threshold"]), json.dumps(ev)))
                if cur.rowcount:
                    new.add(i)
            _bump(cur, {"pending": len(new)})
        return [events[i] for i in sorted(new)]

    def seqs(self, device_id: str) -> list[int]:
        """All stored seqs of a device, ascending."""
        return [r[0] for r in self.db.query("SELECT seq FROM events WHERE device_id = ? ORDER BY seq", (device_id,))]

    def count(self, status: str | None = None) -> int:
        """Events stored (with `status`, only those), from the maintained counters."""
        if status is None:
            return int(self.db.query("SELECT COALESCE(SUM(n), 0) FROM event_counts")[0][0])
        rows = self.db.query("SELECT n FROM event_counts WHERE status = ?", (status,))
        return int(rows[0][0]) if rows else 0

    def counts(self) -> dict[str, int]:
        """{status: events} for every status, in one read."""
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: int(n) for s, n in self.db.query("SELECT status, n FROM event_counts")})
        return out

    def queue(self, limit: int = 50, before: float | None = None, status: str = "pending") -> list[dict]:
        """Events with `status`, newest first (received before `before`, for paging)."""
        limit = max(1, min(int(limit), 500))
        cols = ", ".join(_EVENT_COLUMNS)
        if before is None:
            rows = self.db.query(f"SELECT {cols} FROM events WHERE status = ? ORDER BY received_at DESC, event_id DESC"
                                 " LIMIT ?", (status, limit))
        else:
            rows = self.db.query(f"SELECT {cols} FROM events WHERE status = ? AND received_at < ? ORDER BY"
                                 " received_at DESC, event_id DESC LIMIT ?", (status, float(before), limit))
        return [_row(r) for r in rows]

    def event(self, event_id: str) -> dict | None:
        """One event with its decisions (oldest first), or None."""
        rows = self.db.query(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE event_id = ?", (event_id,))
        if not rows:
            return None
        out = _row(rows[0])
        out["decisions"] = self.decisions(event_id)
        return out

    # ------------------------------------------------------------ decisions

    def decisions(self, event_id: str) -> list[dict]:
        """An event's decisions, oldest first."""
        return self.decisions_for([event_id])[event_id]

    def decisions_for(self, event_ids: list[str]) -> dict[str, list[dict]]:
        """{event id: its decisions, oldest first} for every id asked (an empty list for none): one read per 500
        ids, where a page of events asked `decisions` once per event."""
        out: dict[str, list[dict]] = {eid: [] for eid in event_ids}
        ids = list(out)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.db.query("SELECT event_id, reviewer, decision, note, decided_at FROM decisions WHERE event_id"
                                 f" IN ({', '.join('?' * len(chunk))}) ORDER BY decided_at, id", chunk)
            for r in rows:
                out[r[0]].append({"reviewer": r[1], "decision": r[2], "note": r[3], "decided_at": r[4]})
        return out

    def decide(self, event_id: str, reviewer: str, decision: str, note: str = "",
               before_commit: Callable[[dict], None] | None = None) -> dict:
        """Record `reviewer`'s decision and return {"status", "confirmations", "required"}; DataError if the event
        is unknown, already decided (confirmed or rejected), or this reviewer already decided it. before_commit:
        called with the result inside the transaction (the audit record); if it raises, nothing is stored."""
        if decision not in DECISIONS:
            raise DataError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if len(note) > 2000:
            raise DataError("a note is at most 2000 characters")
        # FOR UPDATE (PostgreSQL): decisions on one event are serialized across console processes, so "one reject
        # rejects; two different reviewers confirm" holds under races. SQLite serializes writers itself.
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        with self.db.transaction() as cur:
            rows = cur.execute("SELECT status FROM events WHERE event_id = ?" + lock, (event_id,)).fetchall()
            if not rows:
                raise DataError(f"event {event_id} does not exist")
            if rows[0][0] != "pending":
                raise DataError(f"event {event_id} is already {rows[0][0]}")
            done = cur.execute("SELECT decision FROM decisions WHERE event_id = ? AND reviewer = ?",
                               (event_id, reviewer)).fetchall()
            if done:
                raise DataError(f"{reviewer} already decided this event ({done[0][0]}); a second reviewer must")
            cur.execute("INSERT INTO decisions (event_id, reviewer, decision, note, decided_at) VALUES (?, ?, ?, ?, ?)",
                        (event_id, reviewer, decision, note, time.time()))
            confirmations = cur.execute("SELECT COUNT(DISTINCT reviewer) FROM decisions WHERE event_id = ? AND"
                                        " decision = 'confirm'", (event_id,)).fetchall()[0][0]
            status = ("rejected" if decision == "reject" else
                      "confirmed" if confirmations >= self.required else "pending")
            if status != "pending":
                cur.execute("UPDATE events SET status = ? WHERE event_id = ?", (status, event_id))
            result = {"status": status, "confirmations": confirmations, "required": self.required}
            if before_commit is not None:
                before_commit(result)
            if status != "pending":
                _bump(cur, {"pending": -1, status: 1})
        return result

    # ------------------------------------------------------------ devices (from the retained topics)

    def device_status(self, device_id: str, online: bool, health: dict) -> None:
        """Upsert a device's last status heartbeat (online/offline, health figures)."""
        seen = health.get("reported_at") if isinstance(health.get("reported_at"), str) else None
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO devices (device_id, online, last_seen, health, updated_at) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (device_id) DO UPDATE SET online = excluded.online, last_seen ="
                        " COALESCE(excluded.last_seen, devices.last_seen), health = CASE WHEN excluded.online = 1"
                        " THEN excluded.health ELSE devices.health END, updated_at = excluded.updated_at",
                        (device_id, int(online), seen, json.dumps(health), time.time()))

    def device_watchlist(self, device_id: str, version: int | None, state: str, reason: str | None) -> None:
        """Upsert what a device reports of its watchlist."""
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO devices (device_id, watchlist_version, watchlist_state, watchlist_reason,"
                        " updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET watchlist_version ="
                        " excluded.watchlist_version, watchlist_state = excluded.watchlist_state, watchlist_reason ="
                        " excluded.watchlist_reason, updated_at = excluded.updated_at",
                        (device_id, version, state, reason, time.time()))

    def version_thresholds(self) -> dict[int, dict]:
        """{watchlist version: {threshold, embedder_id}} for every version that sent events (the threshold and the
        embedding space it was sealed with travel in each event)."""
        out = {}
        for version, threshold, newest in self.db.query(
                "SELECT watchlist_version, MAX(threshold), MAX(event_id) FROM events GROUP BY watchlist_version"):
            body = self.db.query("SELECT body FROM events WHERE event_id = ?", (newest,))
            try:
                embedder = str(json.loads(body[0][0]).get("embedder_id", "")) if body else ""
            except (ValueError, AttributeError):
                embedder = ""
            out[int(version)] = {"threshold": float(threshold), "embedder_id": embedder}
        return out

    def version_reviews(self) -> dict[int, dict]:
        """{watchlist version: {"pending", "confirmed", "rejected": event counts, "first", "last": received_at
        (Unix seconds)}} — what the reviewers made of each version's events (one grouped query)."""
        out: dict[int, dict] = {}
        for version, status, n, first, last in self.db.query(
                "SELECT watchlist_version, status, COUNT(*), MIN(received_at), MAX(received_at) FROM events"
                " GROUP BY watchlist_version, status"):
            entry = out.setdefault(int(version), {**{s: 0 for s in STATUSES}, "first": first, "last": last})
            entry[str(status)] = int(n)
            entry["first"], entry["last"] = min(entry["first"], first), max(entry["last"], last)
        return out

    def devices(self) -> list[dict]:
        rows = self.db.query("SELECT device_id, online, last_seen, health, watchlist_version, watchlist_state,"
                             " watchlist_reason FROM devices ORDER BY device_id")
        return [{"device_id": r[0], "online": None if r[1] is None else bool(r[1]), "last_seen": r[2],
                 "health": json.loads(r[3]) if r[3] else {}, "watchlist_version": r[4], "watchlist_state": r[5],
                 "watchlist_reason": r[6]} for r in rows]

    # ------------------------------------------------------------ retention

    def purge(self, older_than_s: float) -> dict:
        """Delete events (and their decisions) received more than `older_than_s` seconds ago."""
        cutoff = time.time() - older_than_s
        with self.db.transaction() as cur:
            n_dec = cur.execute("DELETE FROM decisions WHERE event_id IN (SELECT event_id FROM events WHERE"
                                " received_at < ?)", (cutoff,)).rowcount
            if self.db.dialect == "postgresql":  # the status of each row as deleted (a decision may commit meanwhile)
                gone = Counter(r[0] for r in cur.execute("DELETE FROM events WHERE received_at < ? RETURNING status",
                                                         (cutoff,)).fetchall())
            else:  # SQLite: this transaction holds the write lock, nothing changes between the count and the delete
                gone = Counter(dict(cur.execute("SELECT status, COUNT(*) FROM events WHERE received_at < ?"
                                                " GROUP BY status", (cutoff,)).fetchall()))
                cur.execute("DELETE FROM events WHERE received_at < ?", (cutoff,))
            _bump(cur, {s: -n for s, n in gone.items()})
        return {"events": sum(gone.values()), "decisions": n_dec, "cutoff": cutoff}

    def reconnect(self) -> None:
        """A new database connection after an outage (StoreError while it is still down)."""
        self.db.reconnect()

    def close(self) -> None:
        self.db.close()


def _bump(cur: Any, deltas: dict[str, int]) -> None:
    """Add `deltas` ({status: change}) to the counters inside the caller's transaction, statuses in sorted order."""
    for status in sorted(deltas):
        if deltas[status]:
            cur.execute("UPDATE event_counts SET n = n + ? WHERE status = ?", (deltas[status], status))
