"""The audit log's record format, which its writer (`edge.audit.AuditLog`) and its reader (`edge.audit_reader`)
share: one encoding, one hash, one parser, so the chain's rules live in one place. The format itself is described
in `edge.audit`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from edge.canonical import canonical_json
from edge.errors import EdgeError

#: Record kinds callers may append.
KINDS = ("match", "events_dropped", "watchlist_install", "watchlist_reject", "watchlist_wipe", "review_decision",
         "retention_purge", "user_add", "config", "start", "stop", "seal")  # seal: edge.audit_seal
#: Written by the log itself after a cut-off write; never by callers.
RECOVERED = "recovered"
ZERO_HASH = "0" * 64
FIELDS = ("seq", "at", "kind", "data", "prev", "hash")


class AuditError(EdgeError):
    """The audit log cannot be opened, read or written, or a record cannot be encoded."""


def _canonical(obj: Any) -> bytes:
    return canonical_json(obj, ascii=False)  # the log's format: UTF-8 kept as is


def record_hash(record: dict) -> str:
    """Hex SHA-256 of the canonical JSON of `record` without its `hash` field."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def line_bytes(record: dict) -> bytes:
    """The exact line (without newline) the log writes for `record`: fixed field order, `data` with sorted keys."""
    body = ",".join(f'"{k}":' + _canonical(record[k]).decode() for k in FIELDS)
    return ("{" + body + "}").encode()


def digest(raw: bytes) -> str:
    """Hex SHA-256 of a line's bytes (without its newline): what the next record's `prev` holds."""
    return hashlib.sha256(raw).hexdigest()


def utc(ts: float) -> str:
    """A record's `at`: Unix seconds as UTC ISO-8601 with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_record(raw: bytes) -> dict | None:
    """The record on one line, or None if the line is not a well-formed record (whatever its hash says)."""
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or set(rec) != set(FIELDS):
        return None
    seq = rec["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not (isinstance(rec["at"], str) and isinstance(rec["kind"], str) and isinstance(rec["data"], dict)):
        return None
    return rec if _is_hex64(rec["prev"]) and _is_hex64(rec["hash"]) else None


def make_record(seq: int, kind: str, data: dict, prev: str, at: str) -> tuple[dict, bytes]:
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


def lines_backward(fd: int, size: int, chunk: int = 1 << 16) -> Iterator[tuple[int, bytes, bool]]:
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
