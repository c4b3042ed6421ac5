"""Append-only, hash-chained audit log of match events, watchlist installs and rejections, and config changes.

File format: JSON lines, UTF-8, one record per line, written in this field order::

    {"seq":1,"at":"2025-01-02T03:04:05.678Z","kind":"start","data":{...},"prev":"000…0","hash":"…"}

- `seq` counts from 1 with no gaps; `at` is the UTC time of the append (ISO-8601, milliseconds);
- `kind` is one of `KINDS` (plus `recovered`, which only the log itself writes, see below);
- `prev` is the hex SHA-256 of the previous record's line (its exact bytes, without the newline); 64 zeros for seq 1;
- `hash` is the hex SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the record without `hash`.

So editing a record breaks its `hash`; deleting, reordering or inserting records breaks the `seq` sequence or the
`prev` links, and `verify` names the line and what happened to it. What a key-less chain cannot show is a tail cut
off at a line boundary, or a whole chain rewritten by someone with write access: `AuditLog.head()` gives the last
(seq, hash) to publish elsewhere (the status heartbeat), and `verify(path, expected_head=…)` checks the log against
it. Records can contain subject ids: the file is created (or tightened to) mode 0600.

Durability: each `append` is one `write` of the whole line followed by `os.fsync`, under a lock (threads) and an
exclusive `flock` (a second writer process is refused, since two writers would fork the chain).

Power cuts: a write that was cut off leaves a final line without a newline (a "fragment"). The log never moves or
rewrites bytes already in the file. On open, a fragment is detected, logged and kept where it is; the next `append`
first writes a newline and a `recovered` record whose data names the fragment (`offset`, `bytes`, `sha256`,
`after_seq`) and which chains to the last complete record. `verify` reports such a fragment as a *notice* (a
recovered truncation: the write was never acknowledged, so no recorded event is lost), not as tampering. A fragment
that is itself a complete record (only its newline was lost) is simply completed. An unreadable line that does end
in a newline is not something a crash produces, and `verify` reports it as a problem.

Modules: this one is the writer; `edge.audit_record` the record format both sides share; `edge.audit_reader` the
verifier and readers (`verify`, `tail`, `last_of` are importable from here too).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.audit_reader import VerifyResult, last_of, tail, verify
from edge.audit_record import (KINDS, RECOVERED, ZERO_HASH, AuditError, digest, line_bytes, lines_backward,
                               make_record, parse_record, record_hash, utc)
from edge.durable import fsync_dir

__all__ = ["KINDS", "RECOVERED", "ZERO_HASH", "AuditError", "AuditLog", "VerifyResult", "last_of", "line_bytes",
           "parse_record", "record_hash", "tail", "verify"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ writer

class AuditLog:
    """The appending side of an audit log: one per file and process; `append` is safe from any thread.

    path: the JSON-lines file (created mode 0600). clock: Unix seconds for `at` (tests inject one).
    After open, `notice` holds what the tail check found (a cut-off write, an altered last record) or None.
    """

    def __init__(self, path: str | os.PathLike, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        created = not self.path.exists()
        try:
            # O_NOFOLLOW: a symbolic link put where the log should be is refused, never followed (its target
            # would be appended to and chmodded).
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            if self.path.is_symlink():
                raise AuditError(f"audit log {self.path} is a symbolic link: refused (remove it; the log must be a "
                                 "regular file)") from None
            raise AuditError(f"audit log {self.path} cannot be opened: {err.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise AuditError(f"audit log {self.path} is already open for writing (by another process or another"
                             " AuditLog); one writer per file keeps the chain linear") from None
        self._write_error: str | None = None  # the last refused write (a full disk is not a power cut)
        try:
            mode = os.fstat(self._fd).st_mode & 0o777
            if mode & 0o077:
                os.fchmod(self._fd, 0o600)  # subject ids are personal data
                log.warning("audit log %s had mode %o; tightened to 0600", self.path, mode)
            if created:
                fsync_dir(self.path.parent)
            self._load_tail()
        except OSError as err:
            os.close(self._fd)
            raise AuditError(f"audit log {self.path} cannot be read: {err.strerror}") from None
        except BaseException:
            os.close(self._fd)
            raise
        self._closed = False

    def _load_tail(self) -> None:
        """Find the last complete record (seq, line digest) and any cut-off fragment after it."""
        self._seq, self._prev, self._hash = 0, ZERO_HASH, None
        self._needs_newline, self._fragment, self.notice = False, None, None
        size, garbled, found = os.fstat(self._fd).st_size, 0, False
        for offset, raw, has_nl in lines_backward(self._fd, size):
            rec = parse_record(raw)
            if not has_nl:
                self._needs_newline = True
                if rec is None:
                    self._fragment = {"offset": offset, "bytes": len(raw), "sha256": digest(raw)}
                    continue
            if rec is None:
                garbled += 1
                log.error("audit log %s: unreadable line at byte %d; appending after the last readable record"
                          " (`edge audit verify` will report it)", self.path, offset)
                continue
            if record_hash(rec) != rec["hash"]:
                self.notice = (f"audit log {self.path}: the last record (seq {rec['seq']}) does not match its hash;"
                               " it was altered after it was written")
                log.error("%s", self.notice)
            self._seq, self._prev, self._hash = rec["seq"], digest(raw), rec["hash"]
            found = True
            break
        if garbled and not found:  # e.g. the audit path points at some other file: do not append to it
            raise AuditError(f"{self.path} is not an audit log (none of its {garbled} lines is an audit record);"
                             " point the audit log at another file")
        if self._fragment is not None:
            self._fragment["after_seq"] = self._seq
            cause = (f"when the disk refused it ({self._write_error})" if self._write_error
                     else "e.g. by a power cut")
            self.notice = (f"audit log {self.path}: the last write was cut off ({self._fragment['bytes']} bytes at"
                           f" byte {self._fragment['offset']}, after seq {self._seq}), {cause}; it stays"
                           " in place and the next append records its recovery")
            log.warning("%s", self.notice)
        self._dirty, self._write_error = False, None

    def append(self, kind: str, data: dict) -> dict:
        """Write one record of `kind` (one of `KINDS`) with JSON-ready `data`, fsync it, and return it.

        Raises AuditError for an unknown kind, data JSON cannot encode, or a write the disk refuses.
        """
        if not isinstance(data, dict):
            raise AuditError(f"audit record data must be a dict, got {type(data).__name__}")
        return self.append_with(kind, lambda head: data)

    def append_with(self, kind: str, make: Callable[[dict], dict]) -> dict:
        """Like `append`, with the data made by `make(head)` under the log's lock, where head = {"seq", "hash"} is
        the record the new one will follow: nothing another thread appends can come between the two (a seal of the
        head must be the record right after it)."""
        if kind not in KINDS:
            raise AuditError(f"unknown audit record kind {kind!r}; expected one of: {', '.join(KINDS)}")
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            if self._dirty:  # a failed write may have left a fragment: look again
                try:
                    self._load_tail()
                except OSError as err:
                    raise AuditError(f"audit log {self.path} cannot be read: {err.strerror}") from None
            at = utc(self._clock())
            seq, prev, last = self._seq, self._prev, self._hash
            out = bytearray(b"\n" if self._needs_newline else b"")
            if self._fragment is not None:
                recovery = {"reason": "truncated final line", **self._fragment}
                fixed, raw = make_record(seq + 1, RECOVERED, recovery, prev, at)
                out += raw + b"\n"
                seq, prev, last = seq + 1, digest(raw), fixed["hash"]
            data = make({"seq": seq, "hash": last})
            if not isinstance(data, dict):
                raise AuditError(f"audit record data must be a dict, got {type(data).__name__}")
            record, raw = make_record(seq + 1, kind, data, prev, at)
            out += raw + b"\n"
            try:
                _write_all(self._fd, bytes(out))
                os.fsync(self._fd)
            except OSError as err:
                self._dirty, self._write_error = True, err.strerror or str(err)
                raise AuditError(f"audit log {self.path} cannot be written: {err.strerror}") from None
            self._seq, self._prev, self._hash = seq + 1, digest(raw), record["hash"]
            self._needs_newline, self._fragment = False, None
            return record

    def head(self) -> dict:
        """{"seq", "hash", "line_sha256"} of the last record (seq 0 and hash None when empty). Publish it elsewhere
        (the status heartbeat) so that `verify(path, expected_head=(seq, hash))` can later tell a log cut short."""
        with self._lock:
            return {"seq": self._seq, "hash": self._hash, "line_sha256": self._prev}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)  # releases the flock

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
