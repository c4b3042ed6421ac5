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

Lines: the record format, the locked appender and the verifier share one encoding; split, the chain's rules would live in two places.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.canonical import canonical_json
from edge.durable import fsync_dir
from edge.errors import EdgeError

log = logging.getLogger(__name__)

#: Record kinds callers may append.
KINDS = ("match", "events_dropped", "watchlist_install", "watchlist_reject", "watchlist_wipe", "review_decision", "retention_purge", "user_add", "config", "start", "stop", "seal")  # seal: edge.audit_seal
#: Written by the log itself after a cut-off write; never by callers.
RECOVERED = "recovered"
ZERO_HASH = "0" * 64
_FIELDS = ("seq", "at", "kind", "data", "prev", "hash")


class AuditError(EdgeError):
    """The audit log cannot be opened, read or written, or a record cannot be encoded."""


# --------------------------------------------------------------------------------------------- record encoding

def _canonical(obj: Any) -> bytes:
    return canonical_json(obj, ascii=False)  # the log's format: UTF-8 kept as is


def record_hash(record: dict) -> str:
    """Hex SHA-256 of the canonical JSON of `record` without its `hash` field."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def line_bytes(record: dict) -> bytes:
    """The exact line (without newline) the log writes for `record`: fixed field order, `data` with sorted keys."""
    body = ",".join(f'"{k}":' + _canonical(record[k]).decode() for k in _FIELDS)
    return ("{" + body + "}").encode()


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_record(raw: bytes) -> dict | None:
    """The record on one line, or None if the line is not a well-formed record (whatever its hash says)."""
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or set(rec) != set(_FIELDS):
        return None
    seq = rec["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not (isinstance(rec["at"], str) and isinstance(rec["kind"], str) and isinstance(rec["data"], dict)):
        return None
    return rec if _is_hex64(rec["prev"]) and _is_hex64(rec["hash"]) else None


def _make(seq: int, kind: str, data: dict, prev: str, at: str) -> tuple[dict, bytes]:
    record = {"seq": seq, "at": at, "kind": kind, "data": data, "prev": prev}
    try:
        record["hash"] = record_hash(record)
        raw = line_bytes(record)
        # A value JSON turns into something else (int keys, tuples) would make verify re-encode different bytes.
        if line_bytes(json.loads(raw)) != raw:
            raise ValueError("it does not survive a JSON round trip unchanged")
    except (TypeError, ValueError) as err:
        raise AuditError(f"audit record of kind {kind!r} cannot be encoded as JSON: {err}") from None
    return json.loads(raw), raw


def _lines_backward(fd: int, size: int, chunk: int = 1 << 16) -> Iterator[tuple[int, bytes, bool]]:
    """(byte offset, line without newline, ended by a newline) from the end of the file towards its start."""
    pos, tail, has_nl, first = size, b"", False, True
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        tail = os.pread(fd, n, pos) + tail
        if first:
            first = False
            if tail.endswith(b"\n"):
                has_nl, tail = True, tail[:-1]
        while (i := tail.rfind(b"\n")) >= 0:
            yield pos + i + 1, tail[i + 1:], has_nl
            has_nl, tail = True, tail[:i]
    if size > 0:
        yield 0, tail, has_nl


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
        for offset, raw, has_nl in _lines_backward(self._fd, size):
            rec = parse_record(raw)
            if not has_nl:
                self._needs_newline = True
                if rec is None:
                    self._fragment = {"offset": offset, "bytes": len(raw), "sha256": _digest(raw)}
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
            self._seq, self._prev, self._hash = rec["seq"], _digest(raw), rec["hash"]
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
            at = _utc(self._clock())
            seq, prev, last = self._seq, self._prev, self._hash
            out = bytearray(b"\n" if self._needs_newline else b"")
            if self._fragment is not None:
                fixed, raw = _make(seq + 1, RECOVERED, {"reason": "truncated final line", **self._fragment}, prev, at)
                out += raw + b"\n"
                seq, prev, last = seq + 1, _digest(raw), fixed["hash"]
            data = make({"seq": seq, "hash": last})
            if not isinstance(data, dict):
                raise AuditError(f"audit record data must be a dict, got {type(data).__name__}")
            record, raw = _make(seq + 1, kind, data, prev, at)
            out += raw + b"\n"
            try:
                _write_all(self._fd, bytes(out))
                os.fsync(self._fd)
            except OSError as err:
                self._dirty, self._write_error = True, err.strerror or str(err)
                raise AuditError(f"audit log {self.path} cannot be written: {err.strerror}") from None
            self._seq, self._prev, self._hash = seq + 1, _digest(raw), record["hash"]
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




# ------------------------------------------------------------------------------------------------------ reader

@dataclass
class _Line:
    no: int
    offset: int
    raw: bytes
    has_nl: bool
    rec: dict | None
    digest: str
    edited: bool = False
    inserted: bool = False


@dataclass
class VerifyResult:
    """ok: no problems. records: well-formed record lines. problems / notices: [{line, problem|notice}], each
    message starting with "line N: ". head: {"seq", "hash", "line_sha256"} of the highest record (None when empty)."""

    ok: bool
    records: int
    problems: list[dict] = field(default_factory=list)
    notices: list[dict] = field(default_factory=list)
    head: dict | None = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "records": self.records, "problems": self.problems, "notices": self.notices,
                "head": self.head}


def _open_log(path: Path):
    """Open an audit log for reading, with the errors a user should see."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise AuditError(f"audit log not found: {path}") from None
    except OSError as err:
        raise AuditError(f"audit log {path} cannot be read: {err.strerror}") from None


def _read_lines(path: Path) -> list[_Line]:
    fh = _open_log(path)
    lines, offset = [], 0
    with fh:
        for no, chunk in enumerate(fh, start=1):
            has_nl = chunk.endswith(b"\n")
            raw = chunk[:-1] if has_nl else chunk
            lines.append(_Line(no, offset, raw, has_nl, parse_record(raw), _digest(raw)))
            offset += len(chunk)
    return lines


def _lis(seqs: list[int]) -> set[int]:
    """Indexes of one longest strictly increasing subsequence of `seqs` (patience sorting)."""
    tails: list[int] = []  # tails[k]: index of the smallest last element of an increasing run of length k+1
    tail_vals: list[int] = []
    back = [-1] * len(seqs)
    for i, s in enumerate(seqs):
        k = bisect.bisect_left(tail_vals, s)
        back[i] = tails[k - 1] if k else -1
        if k == len(tails):
            tails.append(i)
            tail_vals.append(s)
        else:
            tails[k], tail_vals[k] = i, s
    keep, i = set(), tails[-1] if tails else -1
    while i >= 0:
        keep.add(i)
        i = back[i]
    return keep


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else f"{n} {many}"


def verify(path: str | os.PathLike, expected_head: tuple[int, str | None] | None = None) -> VerifyResult:
    """Check the whole chain of the log at `path`; every finding names its line.

    expected_head: (seq, hash prefix or None) recorded elsewhere earlier (from `AuditLog.head()`, either its
    `line_sha256` or the record's `hash`); a log that ends before that seq, or whose record there differs, was cut.
    """
    path = Path(path)
    lines = _read_lines(path)
    problems: list[tuple[int, str]] = []
    notices: list[tuple[int, str]] = []
    recs = [ln for ln in lines if ln.rec is not None]

    for ln in recs:  # edits
        seq = ln.rec["seq"]
        if record_hash(ln.rec) != ln.rec["hash"]:
            ln.edited = True
            problems.append((ln.no, f"record seq {seq} was edited (hash mismatch)"))
        elif line_bytes(ln.rec) != ln.raw:
            ln.edited = True
            problems.append((ln.no, f"record seq {seq} was edited (its line is not as the log wrote it)"))

    by_seq: dict[int, list[_Line]] = {}
    for ln in recs:
        by_seq.setdefault(ln.rec["seq"], []).append(ln)
    for seq, same in by_seq.items():  # insertions that reuse a seq: the genuine one is what seq+1 links to
        if len(same) == 1:
            continue
        links = {ln.rec["prev"] for ln in by_seq.get(seq + 1, [])}
        genuine = next((ln for ln in same if ln.digest in links), same[0])
        for ln in same:
            if ln is not genuine:
                ln.inserted = True
                problems.append((ln.no, f"record seq {seq} was inserted (seq {seq} is already at line {genuine.no})"))
        by_seq[seq] = [genuine]
    chain = [ln for ln in recs if not ln.inserted]
    present = {ln.rec["seq"]: ln for ln in chain}

    in_order = _lis([ln.rec["seq"] for ln in chain])
    for i, ln in enumerate(chain):  # records out of place: moved (reordered) or inserted with a seq of their own
        if i in in_order:
            continue
        seq = ln.rec["seq"]
        before = present.get(seq - 1)
        moved = (before.digest == ln.rec["prev"]) if before else (seq == 1 and ln.rec["prev"] == ZERO_HASH)
        where = f"after seq {chain[i - 1].rec['seq']}" if i else "at the start"
        if moved:
            problems.append((ln.no, f"record seq {seq} is out of order ({where}; records were reordered)"))
        else:
            ln.inserted = True
            problems.append((ln.no, f"record seq {seq} was inserted ({where}; it links to no record before it)"))

    last = 0
    for i in sorted(in_order):  # gaps between the records that are in order: deletions
        ln = chain[i]
        seq = ln.rec["seq"]
        gone = [s for s in range(last + 1, seq) if s not in present]
        if gone and len(gone) == seq - last - 1:
            if last == 0:
                problems.append((ln.no, f"the log starts at seq {seq} "
                                        f"({_plural(len(gone), 'a record was', 'records were')} deleted from the start)"))
            else:
                problems.append((ln.no, f"seq jumps from {last} to {seq} "
                                        f"({_plural(len(gone), 'a record was', 'records were')} deleted)"))
        elif gone:
            problems.append((ln.no, f"seq {', '.join(map(str, gone))} missing before seq {seq} (deleted)"))
        last = seq

    for ln in chain:  # links: each record's prev is the line of seq-1 (wherever that line now is)
        if ln.inserted:
            continue
        seq, prev = ln.rec["seq"], ln.rec["prev"]
        if seq == 1:
            if prev != ZERO_HASH:
                problems.append((ln.no, "record seq 1 does not start a chain (prev is not zero)"))
            continue
        before = present.get(seq - 1)
        if before is not None and not before.edited and not before.inserted and before.digest != prev:
            problems.append((ln.no, f"record seq {seq} does not link to seq {seq - 1} at line {before.no} (prev hash"
                                    f" mismatch): seq {seq - 1} was altered and its hash recomputed, or replaced"))

    recovered = {}
    for ln in chain:
        if ln.rec["kind"] == RECOVERED:
            recovered[ln.rec["data"].get("offset")] = ln
    for ln in lines:  # unreadable lines: cut-off writes (recovered or pending) or garbage
        if ln.rec is not None:
            continue
        fixer = recovered.pop(ln.offset, None)
        data = fixer.rec["data"] if fixer else {}
        if fixer and data.get("bytes") == len(ln.raw) and data.get("sha256") == ln.digest:
            notices.append((ln.no, f"{len(ln.raw)} bytes of a write cut off by a crash or power cut (after seq"
                                   f" {data.get('after_seq')}); recovered by seq {fixer.rec['seq']} at line {fixer.no}"))
        elif fixer:
            problems.append((ln.no, f"the cut-off write recorded by seq {fixer.rec['seq']} at line {fixer.no} was"
                                    " changed afterwards"))
        elif not ln.has_nl:
            notices.append((ln.no, f"the last write was cut off ({len(ln.raw)} bytes, no newline), e.g. by a power"
                                   " cut; the next append will record its recovery"))
        else:
            what = "not an audit record" if _is_json(ln.raw) else "not a valid audit record (garbled text)"
            problems.append((ln.no, f"{what}; a line inserted or damaged after it was written"))
    for offset, ln in recovered.items():
        problems.append((ln.no, f"recovery record seq {ln.rec['seq']} refers to a cut-off write at byte {offset}"
                                " that is not in the file"))
    if lines and lines[-1].rec is not None and not lines[-1].has_nl:
        notices.append((lines[-1].no, "the last record has no newline (cut off just before it); the next append"
                                      " completes it"))

    top = max(present.values(), key=lambda ln: ln.rec["seq"], default=None)
    head = {"seq": top.rec["seq"], "line_sha256": top.digest, "hash": top.rec["hash"]} if top else None
    if expected_head is not None:
        want_seq, want_hash = expected_head
        have = present.get(want_seq)
        if have is None and want_seq > (head["seq"] if head else 0):
            end = head["seq"] if head else 0
            problems.append((lines[-1].no if lines else 0,
                             f"the log ends at seq {end} but seq {want_seq} was written (records were cut off the end)"))
        elif have is not None and want_hash and not (have.digest.startswith(want_hash.lower())
                                                     or have.rec["hash"].startswith(want_hash.lower())):
            problems.append((have.no, f"record seq {want_seq} is not the one recorded earlier (hash differs)"))

    problems.sort(key=lambda p: p[0])
    notices.sort(key=lambda p: p[0])
    return VerifyResult(ok=not problems, records=len(recs),
                        problems=[{"line": n, "problem": f"line {n}: {m}"} for n, m in problems],
                        notices=[{"line": n, "notice": f"line {n}: {m}"} for n, m in notices], head=head)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def last_of(path: str | os.PathLike, kind: str) -> dict | None:
    """The last readable record of `kind` in the log at `path`, read from the end backwards (None when it has none),
    e.g. the latest seal, without parsing a long log from its start."""
    with _open_log(Path(path)) as fh:
        for _, raw, _ in _lines_backward(fh.fileno(), os.fstat(fh.fileno()).st_size):
            rec = parse_record(raw)
            if rec is not None and rec["kind"] == kind:
                return rec
    return None


def tail(path: str | os.PathLike, last: int | None = None) -> list[tuple[int, dict | None, bytes]]:
    """The last `last` lines (all when None) as (line number, record or None if unreadable, raw bytes)."""
    path = Path(path)
    fh = _open_log(path)
    keep: deque = deque(maxlen=last if last is not None and last >= 0 else None)
    with fh:
        for no, chunk in enumerate(fh, start=1):
            raw = chunk.rstrip(b"\n")
            keep.append((no, parse_record(raw), raw))
    return list(keep)
