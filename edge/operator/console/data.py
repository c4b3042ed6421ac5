"""What the console reads and writes, in one place: `ConsoleData` wraps the event store, the accounts and the audit
log behind the calls the routes make, and turns what they refuse into `Refused` (an HTTP status and a line). No web
framework here: the routes own the requests, this owns the data."""

from __future__ import annotations

import logging
import time
from typing import Literal

from edge.audit import AuditLog, tail, verify
from edge.errors import DataError
from edge.operator.accounts import Accounts, Session
from edge.operator.event_store import DECISIONS, EventStore
from edge.operator.evidence import Evidence, Unavailable
from edge.operator.request_checks import Refused
from edge.operator.views import alert_budget, device_view, event_view, utc, watchlist_view, with_demographics

log = logging.getLogger(__package__)  # the console's one logger: edge.operator.console

#: Longest note a decision may carry, characters.
MAX_NOTE = 2000


class ConsoleData:
    """The console's data over `store`, `accounts` and `audit`. labels: subject id → name; required: confirmations
    that confirm an event; retention_days: what a purge deletes (None: no purge); faces: the evidence opener;
    demographics / demographic_bound: the model's demographic summaries and the ratio past which they warn."""

    def __init__(self, store: EventStore, accounts: Accounts, audit: AuditLog, labels: dict[str, str], required: int,
                 retention_days: float | None, faces: Evidence, demographics: dict[str, dict],
                 demographic_bound: float) -> None:
        self.store, self.accounts, self.audit = store, accounts, audit
        self.labels, self.required, self.retention_days = labels, required, retention_days
        self.faces, self.demographics, self.demographic_bound = faces, demographics, demographic_bound

    def transient(self, err: BaseException) -> bool:
        """Whether `err` is the database being away (down, restarting): a 503 to retry, not a bug."""
        return self.store.db.transient(err)

    # ------------------------------------------------------------------------------------------ accounts

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, or None."""
        return self.accounts.session(token)

    def csrf_ok(self, me: Session, submitted: str | None) -> bool:
        """Whether `submitted` is the session's CSRF token."""
        return self.accounts.csrf_ok(me, submitted)

    def login(self, username: str, password: str, address: str) -> tuple[str, Session]:
        """(cookie token, Session); the accounts' typed refusals (WrongCredentials, TooManyAttempts) pass through."""
        return self.accounts.login(username, password, address)

    def logout(self, token: str | None) -> None:
        """End the session of a cookie token."""
        self.accounts.logout(token)

    def users(self) -> list[dict]:
        """Every account as {username, role, disabled}."""
        return self.accounts.users()

    # ------------------------------------------------------------------------------------------ events

    def counts(self) -> dict[str, int]:
        """Events per status (the store's maintained counters)."""
        return self.store.counts()

    def queue(self, status: str, limit: int, before: float | None, after: float | None) -> list[dict]:
        """Up to `limit` events of `status` received before `before` and after `after`, as the console shows them
        (their decisions read in one query, not one per event)."""
        rows = [r for r in self.store.queue(limit, before, status) if after is None or r["received_at"] > after]
        decided = self.store.decisions_for([r["event_id"] for r in rows])
        return [event_view(r, decided[r["event_id"]], self.labels, self.required) for r in rows]

    def event(self, event_id: str) -> tuple[dict, dict]:
        """(the stored row, its view with decisions); Refused 404 when the store has no such event."""
        row = self.store.event(event_id)
        if row is None:
            raise Refused(404, f"event {event_id[:64]} is not in the store (never received, or purged)")
        return row, event_view(row, row["decisions"], self.labels, self.required)

    def decide(self, me: Session, event_id: str, decision: object, note: object) -> dict:
        """Record `me`'s decision on an event with its audit record (one transaction: no decision without it).
        Refused 404 (no event), 400 (not a decision, or a note that is not text of at most MAX_NOTE characters),
        409 (the store refuses it: decided already, or the event is closed)."""
        self.event(event_id)
        if not isinstance(decision, str) or decision not in DECISIONS:
            raise Refused(400, f"decision must be one of {', '.join(DECISIONS)}, got {str(decision)[:40]!r}")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise Refused(400, f"a note is text of at most {MAX_NOTE} characters")
        text = note.strip()

        def record(result: dict) -> None:  # inside the decision's transaction
            self.audit.append("review_decision", {"event_id": event_id, "reviewer": me.username,
                                                  "decision": decision, "note": text,
                                                  "status_after": result["status"]})

        try:
            result = self.store.decide(event_id, me.username, decision, text, before_commit=record)
        except DataError as err:
            raise Refused(409, str(err)) from None
        log.info("review: %s %s %s -> %s", me.username, decision, event_id, result["status"])
        return result

    def face(self, kind: Literal["evidence", "reference"], event_id: str, n: int) -> bytes:
        """A face of the event: "evidence" n (the captured chip in slot n) or "reference" n (the n-th enrolled);
        Refused with the evidence's status (404, 422) and reason when it cannot be shown."""
        opener = self.faces.captured if kind == "evidence" else self.faces.reference
        try:
            return opener(self.event(event_id)[0], n)
        except Unavailable as err:
            raise Refused(err.status, str(err)) from None

    def case(self, me: Session, event_id: str) -> dict:
        """The case file of one event: the event as stored, its decisions, its audit records and the chain's check,
        and the seal that now covers them (a sealed log is sealed first: the export carries a head to keep)."""
        row, _ = self.event(event_id)
        seal = getattr(self.audit, "seal", None)  # edge.audit_seal.SealedAuditLog
        sealed = seal() if seal is not None else None
        records = [{"line": no, **rec} for no, rec, _ in tail(self.audit.path)
                   if rec is not None and rec["kind"] == "review_decision" and rec["data"].get("event_id") == event_id]
        check = verify(self.audit.path)
        return {"exported_at": utc(time.time()), "exported_by": me.username,
                "event": {k: v for k, v in row.items() if k != "decisions"}, "decisions": row["decisions"],
                "required": self.required, "audit": records, "audit_head": self.audit.head(), "audit_seal": sealed,
                "audit_chain": {"ok": check.ok, "records": check.records, "problems": check.problems[:20]},
                "evidence": self.faces.case(row)}

    # ------------------------------------------------------------------------------------------ fleet, admin

    def devices(self) -> list[dict]:
        """Every device's last reports, as the fleet page shows them."""
        return [device_view(d) for d in self.store.devices()]

    def watchlists(self) -> list[dict]:
        """The watchlist versions the fleet runs, each with its demographic rates and alert budget."""
        devices = self.store.devices()
        versions = with_demographics(watchlist_view(devices), self.store.version_thresholds(), self.demographics,
                                     self.demographic_bound)
        reviews = self.store.version_reviews()
        for v in versions:
            v["budget"] = None if v["version"] is None else alert_budget(v["version"], devices,
                                                                         reviews.get(v["version"]))
        return versions

    def purge(self, me: Session) -> dict:
        """Delete what is older than the retention period and audit it; Refused 409 when no period is set."""
        if self.retention_days is None:
            raise Refused(409, "no retention period is set: start the console with --retention-days D")
        result = self.store.purge(self.retention_days * 86400.0)
        self.audit.append("retention_purge", {"by": me.username, "retention_days": self.retention_days, **result})
        return result
