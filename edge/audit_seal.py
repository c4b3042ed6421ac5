"""Forward-secure sealing of the audit log: a hash chain nobody can rewrite, only extend (the idea of journald's
Forward Secure Sealing).

The device holds a *sealing key* for the current epoch (`audit.seal`, 0600). A seal is a `seal` record appended to
the log whose data is {epoch, head_seq, head_hash, mac}: HMAC-SHA256 under epoch e's key of the (seq, hash) of the
last record before it. Right after sealing, the key evolves — K(e+1) = SHA-256("edge-audit-seal-evolve/1" || K(e))
— and the file is overwritten, so the key that sealed epoch e is gone from the device. The operator keeps the
*verification key* K(0) from provisioning (`audit-verify.key`); from it any K(e) follows, never the reverse.

What it protects: whoever later gains write access to the log (or root on the device) holds only the current key,
so records covered by an earlier seal cannot be edited, deleted, reordered or re-chained without a MAC failing — and
the seals' heads also travel in the status heartbeat, where the operator keeps them (`edge events tail --heads`),
so truncating the log or replacing it whole is caught too (`edge audit verify --verify-key K --heads FILE`).
What it does not: records after the last seal (the current epoch) are not yet protected, and an attacker on a live
device can append lies from now on; nor can erasing a key from flash be guaranteed (wear levelling may keep old
blocks). Seals are written at every status heartbeat and at stop.

The console's own log (review decisions, user adds, purges) is sealed by the same code (`SealedAuditLog`): its key
pair beside the log (console-audit.seal, console-audit-verify.key; `key_paths`), made at the first open, and the
heads appended to a heads file and printed, for the operator to keep off the console host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.audit import AuditLog, last_of
from edge.canonical import canonical_json
from edge.durable import atomic_write
from edge.errors import EdgeError
from edge.files import read_file

SEAL_KIND = "seal"
KEY_FORMAT = "edge-audit-seal-key/1"
VERIFY_FORMAT = "edge-audit-verify-key/1"
_EVOLVE = b"edge-audit-seal-evolve/1"
#: Largest key or heads file read, bytes.
MAX_KEY_BYTES = 4096
MAX_HEADS_BYTES = 64 * 2**20


class SealError(EdgeError):
    """A sealing or verification key file is missing, malformed or not for this log."""


def evolve(key: bytes) -> bytes:
    """The next epoch's key (one-way: the previous one does not follow from it)."""
    return hashlib.sha256(_EVOLVE + key).digest()


def key_at(initial: bytes, epoch: int) -> bytes:
    """Epoch `epoch`'s key from the verification key K(0)."""
    key = initial
    for _ in range(epoch):
        key = evolve(key)
    return key


def seal_mac(key: bytes, epoch: int, head_seq: int, head_hash: str) -> str:
    """HMAC-SHA256 (hex) of a seal's canonical body."""
    body = canonical_json({"epoch": epoch, "head_seq": head_seq, "head_hash": head_hash})
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def key_paths(log: Path) -> tuple[Path, Path]:
    """The sealing key and the verification key of the log at `log`: beside it, named after it (audit.log →
    audit.seal, audit-verify.key; console-audit.log → console-audit.seal, console-audit-verify.key)."""
    log = Path(log)
    return log.with_name(f"{log.stem}.seal"), log.with_name(f"{log.stem}-verify.key")


def new_keys(directory: Path, device_id: str, stem: str = "audit") -> tuple[Path, Path]:
    """Make K(0): `<stem>.seal` for the log's host (the device's state directory) and `<stem>-verify.key` for the
    operator (both 0600); returns their paths. The log's copy evolves away from K(0) at its first seal."""
    initial = os.urandom(32)
    seal_path, verify_path = key_paths(Path(directory) / f"{stem}.log")
    atomic_write(seal_path, canonical_json({"format": KEY_FORMAT, "device_id": device_id, "epoch": 0,
                                            "key": initial.hex()}), 0o600)
    atomic_write(verify_path, canonical_json({"format": VERIFY_FORMAT, "device_id": device_id,
                                              "key": initial.hex()}), 0o600)
    return seal_path, verify_path


def _read_json(path: Path, what: str, follow_symlinks: bool = True) -> dict:
    data = read_file(path, what, MAX_KEY_BYTES, SealError, follow_symlinks=follow_symlinks)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise SealError(f"{path} is not an {what} (not JSON)") from None
    if not isinstance(doc, dict):
        raise SealError(f"{path} is not an {what}")
    return doc


def _key_field(doc: dict, path: Path, what: str) -> bytes:
    try:
        key = bytes.fromhex(doc["key"])
    except (KeyError, TypeError, ValueError):
        key = b""
    if len(key) != 32:
        raise SealError(f"{path} is not an {what} (no 32-byte key)")
    return key


def load_verify_key(path: Path) -> bytes:
    """K(0) from an `audit-verify.key` file."""
    doc = _read_json(Path(path), "audit verification key")
    if doc.get("format") != VERIFY_FORMAT:
        raise SealError(f"{path} is not an audit verification key (format {doc.get('format')!r})")
    return _key_field(doc, Path(path), "audit verification key")


class Sealer:
    """The device's side: the current epoch's key, in `path` (0600). `seal(audit)` appends a seal, then evolves."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # the device's own key, beside its log: a symbolic link there is refused, as the log refuses one
        doc = _read_json(self.path, "audit sealing key", follow_symlinks=False)
        if doc.get("format") != KEY_FORMAT or type(doc.get("epoch")) is not int or doc["epoch"] < 0:
            raise SealError(f"{self.path} is not an audit sealing key")
        self.device_id = str(doc.get("device_id", ""))
        self.epoch, self._key = doc["epoch"], _key_field(doc, self.path, "audit sealing key")
        self.last: dict | None = None  # the latest seal, for the status heartbeat
        self._lock = threading.Lock()  # one seal at a time (a periodic thread, an export, the shutdown)

    def seal(self, audit: Any) -> dict:
        """Append a seal of the log's current head, evolve the key and erase the old one; returns the head to
        publish: {seq, hash} of the seal record, its epoch and mac, and the (seq, hash) it seals. Nothing new since
        the last seal: that seal is returned again (an idle device does not grow its log every heartbeat). `audit`
        is an `edge.audit.AuditLog`: the seal is made under its lock, so a record another thread appends cannot slip
        between the head and its seal."""
        with self._lock:
            if self.last is not None and audit.head()["seq"] == self.last["seq"]:
                return self.last
            epoch, key = self.epoch, self._key

            def body(head: dict) -> dict:
                return {"epoch": epoch, "head_seq": head["seq"], "head_hash": head["hash"],
                        "mac": seal_mac(key, epoch, head["seq"], head["hash"])}

            record = audit.append_with(SEAL_KIND, body)
            self.last = published(record)
            self._evolve()
            return self.last

    def _evolve(self) -> None:
        self.epoch, self._key = self.epoch + 1, evolve(self._key)
        atomic_write(self.path, canonical_json({"format": KEY_FORMAT, "device_id": self.device_id,
                                                "epoch": self.epoch, "key": self._key.hex()}), 0o600)

    def lags(self, last: dict | None) -> bool:
        """Does the key line up with the log's last seal record `last` (None: the log has none)? It must be at the
        epoch after it: False. True: `last` was made with the key still here — a crash right after sealing kept it
        from evolving. Any other mismatch is a SealError (the key or the log was replaced, e.g. restored from a
        backup): seals made with this key would not verify. Reads only."""
        if last is None:
            if self.epoch:
                raise SealError(f"{self.path} is at epoch {self.epoch} but the log has no seal: the log was replaced"
                                " or emptied (to start a new log, move the log and its key aside together)")
            return False
        d = last.get("data") or {}
        epoch = d.get("epoch")
        if epoch == self.epoch and type(d.get("head_seq")) is int and hmac.compare_digest(
                str(d.get("mac", "")), seal_mac(self._key, self.epoch, d["head_seq"], str(d.get("head_hash")))):
            return True
        if epoch != self.epoch - 1:
            raise SealError(f"{self.path} is at epoch {self.epoch} but the log's last seal (seq {last['seq']}) is of"
                            f" epoch {epoch!r}: the key or the log was replaced (restored from a backup?); seals made"
                            " now would not verify")
        return False

    def resume(self, last: dict | None) -> None:
        """At open: line the key up with the log's last seal record (`lags`); a key a crash kept from evolving
        evolves now."""
        with self._lock:
            if self.lags(last):
                self._evolve()  # sealed, then stopped before the key evolved
            self.last = published(last) if last is not None else None


def published(record: dict) -> dict:
    """The head to publish for a seal record: its (seq, hash), epoch and mac, and the (seq, hash) it seals."""
    d = record.get("data") or {}
    return {"seq": record["seq"], "hash": record["hash"], "epoch": d.get("epoch"), "mac": d.get("mac"),
            "sealed_seq": d.get("head_seq"), "sealed_hash": d.get("head_hash")}


@dataclass
class SealReport:
    """What `check_seals` found: seals verified, the records after the last seal, and every problem (one line
    each, naming the seq)."""

    seals: int = 0
    unsealed_tail: int = 0
    heads_checked: int = 0
    problems: list[str] = field(default_factory=list)


def _known(key: bytes | None) -> bytes:
    """K(epoch), called only where K(0) was given (the checks that need keys are skipped without it)."""
    if key is None:
        raise ValueError("a seal key was evolved without K(0)")
    return key


def check_seals(records: list[dict], initial: bytes | None, heads: list[dict] | None = None) -> SealReport:
    """Verify every seal record of a chain-verified log against K(0), and the log against heads seen by the
    operator. `records`: the log's records in order (dicts with seq, kind, data, hash). Without K(0) (None: on the
    device, which never holds it) only the seals' structure is checked: epochs in order, each covering the record
    before it."""
    report = SealReport()
    by_seq = {r["seq"]: r for r in records}
    expected_epoch = 0
    last_sealed = 0
    cached: tuple[int, bytes | None] = (0, initial)  # epochs come in order: evolve forward from the last one

    def key_for(epoch: int) -> bytes:
        nonlocal cached
        if epoch < cached[0]:
            cached = (0, initial)
        while cached[0] < epoch:
            cached = (cached[0] + 1, evolve(_known(cached[1])))
        return _known(cached[1])

    for r in records:
        if r.get("kind") != SEAL_KIND:
            continue
        d = r.get("data") or {}
        epoch, seq, head = d.get("epoch"), d.get("head_seq"), d.get("head_hash")
        if epoch != expected_epoch:
            report.problems.append(f"seq {r['seq']}: seal of epoch {epoch!r}, expected epoch {expected_epoch}"
                                   " (seals removed or replayed)")
        if type(epoch) is not int or type(seq) is not int or not isinstance(head, str) or not 0 <= epoch < 10**7:
            report.problems.append(f"seq {r['seq']}: malformed seal")
            continue
        if initial is not None and not hmac.compare_digest(str(d.get("mac", "")),
                                                           seal_mac(key_for(epoch), epoch, seq, head)):
            report.problems.append(f"seq {r['seq']}: seal of epoch {epoch} does not verify (forged, or the log was"
                                   " rewritten after the key that sealed it was erased)")
        elif seq != r["seq"] - 1 or (seq and by_seq.get(seq, {}).get("hash") != head):
            report.problems.append(f"seq {r['seq']}: seal covers seq {seq} with a hash the log no longer has")
        else:
            report.seals += 1
            last_sealed = r["seq"]
        expected_epoch = epoch + 1
    report.unsealed_tail = sum(1 for r in records if r["seq"] > last_sealed)
    last_seq = records[-1]["seq"] if records else 0
    for h in heads or []:
        report.heads_checked += 1
        seq, want = h.get("seq"), h.get("hash")
        if type(seq) is not int:
            report.problems.append(f"heads file: a head without a seq: {str(h)[:80]}")
        elif seq > last_seq:
            report.problems.append(f"the log ends at seq {last_seq}, but the operator saw head seq {seq}: records"
                                   " were cut off")
        elif by_seq.get(seq, {}).get("hash") != want:
            report.problems.append(f"seq {seq}: the log's record differs from the head the operator saw"
                                   " (rewritten or replaced)")
    return report


def load_heads(path: Path) -> list[dict]:
    """Heads the operator kept: JSON lines of {seq, hash, …} (`edge events tail --heads FILE`, the console's heads
    file), or a console case export (its `audit_seal` and `audit_head`)."""
    path = Path(path)
    try:
        text = read_file(path, "heads file", MAX_HEADS_BYTES, SealError).decode("utf-8")
    except UnicodeDecodeError as err:
        raise SealError(f"cannot read heads file {path}: {err}") from None
    try:
        whole = json.loads(text)  # one JSON document: a case export (or a single head)
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict):
        return _heads_in(whole)
    heads = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            head = json.loads(line)
        except (ValueError, RecursionError):
            raise SealError(f"{path}, line {n}: not JSON") from None
        if isinstance(head, dict):
            heads += _heads_in(head)
    return heads


def _heads_in(doc: dict) -> list[dict]:
    """A head, or the heads a case export carries."""
    if "audit_seal" in doc or "audit_head" in doc:
        return [h for h in (doc.get("audit_seal"), doc.get("audit_head")) if isinstance(h, dict)]
    return [doc]


class SealedAuditLog(AuditLog):
    """An audit log that seals itself with its own key, beside it (`key_paths`): the console's log. Opening it
    makes the keys when there are none yet (`created` is then True: the verification key must leave this host), or
    lines the key up with the log's last seal (`Sealer.resume`). `seal()` seals the head and publishes it: a line
    appended to `heads` (JSON lines, the format `edge audit verify --heads` reads) and `on_seal(head)`."""

    def __init__(self, path: str | os.PathLike, owner: str, heads: Path | None = None,
                 on_seal: Callable[[dict], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, clock)
        try:
            self.seal_path, self.verify_path = key_paths(self.path)
            self.heads, self.on_seal, self.created = heads, on_seal, False
            self._publishing = threading.Lock()
            last = last_of(self.path, SEAL_KIND)
            if not os.path.lexists(self.seal_path):
                if last is not None:
                    raise SealError(f"{self.seal_path} is missing but {self.path} is sealed (last seal: seq"
                                    f" {last['seq']}): restore the key; or, to start a new log, move the log aside")
                new_keys(self.path.parent, owner, self.path.stem)
                self.created = True
            self.sealer = Sealer(self.seal_path)
            self.sealer.resume(last)
        except BaseException:
            self.close()
            raise

    def latest_seal(self) -> dict | None:
        """The head of the latest seal (None before the first)."""
        return self.sealer.last

    def seal(self) -> dict | None:
        """Seal the head if anything was appended since the last seal, publish the new head; returns the latest."""
        with self._publishing:  # a periodic seal and an export's: each new head published once
            return self._seal_and_publish()

    def _seal_and_publish(self) -> dict | None:
        before = self.sealer.last
        if self.head()["seq"] == 0:
            return None  # nothing to seal yet (a seal of an empty log has no head hash to cover)
        head = self.sealer.seal(self)
        if head is not before:
            line = canonical_json({**head, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            if self.heads is not None:
                try:
                    fd = os.open(self.heads, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o600)
                    try:
                        os.write(fd, line + b"\n")
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as err:
                    raise SealError(f"sealed seq {head['seq']}, but the heads file {self.heads} cannot be written:"
                                    f" {err.strerror or err}") from None
            if self.on_seal is not None:
                self.on_seal(head)
        return head
