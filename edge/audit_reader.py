"""Reading an audit log: `verify` (the whole chain, every finding naming its line), `tail` (the last lines) and
`last_of` (the last record of a kind, read backwards). The format is `edge.audit`'s; the writer is
`edge.audit.AuditLog`."""

from __future__ import annotations

import bisect
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.audit_record import (RECOVERED, ZERO_HASH, AuditError, digest, line_bytes, lines_backward, parse_record,
                               record_hash)


@dataclass
class _Line:
    no: int
    offset: int
    raw: bytes
    has_nl: bool
    rec: dict[str, Any] | None
    digest: str
    edited: bool = False
    inserted: bool = False

    @property
    def record(self) -> dict[str, Any]:
        """The parsed record of a line known to hold one."""
        if self.rec is None:
            raise ValueError(f"line {self.no} holds no audit record")
        return self.rec


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
            lines.append(_Line(no, offset, raw, has_nl, parse_record(raw), digest(raw)))
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


Findings = list[tuple[int, str]]  # (line number, message)


def verify(path: str | os.PathLike, expected_head: tuple[int, str | None] | None = None) -> VerifyResult:
    """Check the whole chain of the log at `path`; every finding names its line.

    expected_head: (seq, hash prefix or None) recorded elsewhere earlier (from `AuditLog.head()`, either its
    `line_sha256` or the record's `hash`); a log that ends before that seq, or whose record there differs, was cut.
    The passes, in order: edited records, inserted duplicates of a seq, records out of place, deletions, broken
    links, cut-off writes and their recoveries, and the head seen elsewhere.
    """
    lines = _read_lines(Path(path))
    problems: Findings = []
    notices: Findings = []
    recs = [ln for ln in lines if ln.rec is not None]
    _find_edits(recs, problems)
    chain = _drop_duplicate_seqs(recs, problems)
    present = {ln.record["seq"]: ln for ln in chain}
    in_order = _find_reorders(chain, present, problems)
    _find_deletions(chain, in_order, present, problems)
    _check_links(chain, present, problems)
    _check_cut_offs(lines, chain, problems, notices)
    top = max(present.values(), key=lambda ln: ln.record["seq"], default=None)
    head = {"seq": top.record["seq"], "line_sha256": top.digest, "hash": top.record["hash"]} if top else None
    if expected_head is not None:
        _check_expected_head(lines, present, head, expected_head, problems)
    problems.sort(key=lambda p: p[0])
    notices.sort(key=lambda p: p[0])
    return VerifyResult(ok=not problems, records=len(recs),
                        problems=[{"line": n, "problem": f"line {n}: {m}"} for n, m in problems],
                        notices=[{"line": n, "notice": f"line {n}: {m}"} for n, m in notices], head=head)


def _find_edits(recs: list[_Line], problems: Findings) -> None:
    for ln in recs:
        rec = ln.record
        if record_hash(rec) != rec["hash"]:
            ln.edited = True
            problems.append((ln.no, f"record seq {rec['seq']} was edited (hash mismatch)"))
        elif line_bytes(rec) != ln.raw:
            ln.edited = True
            problems.append((ln.no, f"record seq {rec['seq']} was edited (its line is not as the log wrote it)"))


def _drop_duplicate_seqs(recs: list[_Line], problems: Findings) -> list[_Line]:
    """Insertions that reuse a seq: the genuine one is what seq+1 links to; the others are marked and dropped."""
    by_seq: dict[int, list[_Line]] = {}
    for ln in recs:
        by_seq.setdefault(ln.record["seq"], []).append(ln)
    for seq, same in by_seq.items():
        if len(same) == 1:
            continue
        links = {ln.record["prev"] for ln in by_seq.get(seq + 1, [])}
        genuine = next((ln for ln in same if ln.digest in links), same[0])
        for ln in same:
            if ln is not genuine:
                ln.inserted = True
                problems.append((ln.no, f"record seq {seq} was inserted (seq {seq} is already at line {genuine.no})"))
    return [ln for ln in recs if not ln.inserted]


def _find_reorders(chain: list[_Line], present: dict[int, _Line], problems: Findings) -> set[int]:
    """Records out of place: moved (reordered) or inserted with a seq of their own. Returns the indexes in order."""
    in_order = _lis([ln.record["seq"] for ln in chain])
    for i, ln in enumerate(chain):
        if i in in_order:
            continue
        seq, prev = ln.record["seq"], ln.record["prev"]
        before = present.get(seq - 1)
        moved = (before.digest == prev) if before else (seq == 1 and prev == ZERO_HASH)
        where = f"after seq {chain[i - 1].record['seq']}" if i else "at the start"
        if moved:
            problems.append((ln.no, f"record seq {seq} is out of order ({where}; records were reordered)"))
        else:
            ln.inserted = True
            problems.append((ln.no, f"record seq {seq} was inserted ({where}; it links to no record before it)"))
    return in_order


def _find_deletions(chain: list[_Line], in_order: set[int], present: dict[int, _Line], problems: Findings) -> None:
    """Gaps between the records that are in order."""
    last = 0
    for i in sorted(in_order):
        ln = chain[i]
        seq = ln.record["seq"]
        gone = [s for s in range(last + 1, seq) if s not in present]
        deleted = _plural(len(gone), "a record was", "records were")
        if gone and len(gone) == seq - last - 1:
            if last == 0:
                problems.append((ln.no, f"the log starts at seq {seq} ({deleted} deleted from the start)"))
            else:
                problems.append((ln.no, f"seq jumps from {last} to {seq} ({deleted} deleted)"))
        elif gone:
            problems.append((ln.no, f"seq {', '.join(map(str, gone))} missing before seq {seq} (deleted)"))
        last = seq


def _check_links(chain: list[_Line], present: dict[int, _Line], problems: Findings) -> None:
    """Each record's prev is the line of seq-1 (wherever that line now is)."""
    for ln in chain:
        if ln.inserted:
            continue
        seq, prev = ln.record["seq"], ln.record["prev"]
        if seq == 1:
            if prev != ZERO_HASH:
                problems.append((ln.no, "record seq 1 does not start a chain (prev is not zero)"))
            continue
        before = present.get(seq - 1)
        if before is not None and not before.edited and not before.inserted and before.digest != prev:
            problems.append((ln.no, f"record seq {seq} does not link to seq {seq - 1} at line {before.no} (prev hash"
                                    f" mismatch): seq {seq - 1} was altered and its hash recomputed, or replaced"))


def _check_cut_offs(lines: list[_Line], chain: list[_Line], problems: Findings, notices: Findings) -> None:
    """Unreadable lines: cut-off writes (recovered or pending) or garbage; recovery records without their write."""
    recovered = {ln.record["data"].get("offset"): ln for ln in chain if ln.record["kind"] == RECOVERED}
    for ln in lines:
        if ln.rec is not None:
            continue
        fixer = recovered.pop(ln.offset, None)
        data = fixer.record["data"] if fixer else {}
        if fixer and data.get("bytes") == len(ln.raw) and data.get("sha256") == ln.digest:
            notices.append((ln.no, f"{len(ln.raw)} bytes of a write cut off by a crash or power cut (after seq"
                                   f" {data.get('after_seq')}); recovered by seq {fixer.record['seq']} at line"
                                   f" {fixer.no}"))
        elif fixer:
            problems.append((ln.no, f"the cut-off write recorded by seq {fixer.record['seq']} at line {fixer.no} was"
                                    " changed afterwards"))
        elif not ln.has_nl:
            notices.append((ln.no, f"the last write was cut off ({len(ln.raw)} bytes, no newline), e.g. by a power"
                                   " cut; the next append will record its recovery"))
        else:
            what = "not an audit record" if _is_json(ln.raw) else "not a valid audit record (garbled text)"
            problems.append((ln.no, f"{what}; a line inserted or damaged after it was written"))
    for offset, ln in recovered.items():
        problems.append((ln.no, f"recovery record seq {ln.record['seq']} refers to a cut-off write at byte {offset}"
                                " that is not in the file"))
    if lines and lines[-1].rec is not None and not lines[-1].has_nl:
        notices.append((lines[-1].no, "the last record has no newline (cut off just before it); the next append"
                                      " completes it"))


def _check_expected_head(lines: list[_Line], present: dict[int, _Line], head: dict[str, Any] | None,
                         expected_head: tuple[int, str | None], problems: Findings) -> None:
    """The head recorded elsewhere earlier: the log must still reach it, with the same record there."""
    want_seq, want_hash = expected_head
    have = present.get(want_seq)
    end = head["seq"] if head else 0
    if have is None and want_seq > end:
        problems.append((lines[-1].no if lines else 0,
                         f"the log ends at seq {end} but seq {want_seq} was written (records were cut off the end)"))
    elif have is not None and want_hash and not (have.digest.startswith(want_hash.lower())
                                                 or have.record["hash"].startswith(want_hash.lower())):
        problems.append((have.no, f"record seq {want_seq} is not the one recorded earlier (hash differs)"))


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
        for _, raw, _ in lines_backward(fh.fileno(), os.fstat(fh.fileno()).st_size):
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
