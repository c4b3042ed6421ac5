"""The plaintext inside a sealed watchlist: Annoy index bytes + item→subject map + subject metadata.

Layout: b"EWLPAY1\\n" | u64 BE index length | index bytes | u64 BE metadata length | canonical JSON metadata.
It exists only in memory on the device (decrypted into a memfd); the operator keeps it in the build directory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError

MAGIC = b"EWLPAY1\n"


class PayloadError(EdgeError):
    """A decrypted payload is not a well-formed watchlist (a sealing bug or a foreign file)."""


@dataclass(frozen=True)
class Payload:
    """index: Annoy index file bytes. meta: {"dim", "metric", "n_trees", "items": [subject index per item],
    "subjects": {"id": [...], "label": [...], "category": [...], "expires": [...]}} — subjects are stored by
    column: 300,000 small dicts would cost the device ~100 MB of RAM, four lists of strings a fraction of it."""

    index: bytes
    meta: dict[str, Any]


SUBJECT_FIELDS = ("id", "label", "category", "expires")


def subject_columns(subjects: list[dict]) -> dict[str, list]:
    """Subject records → the payload's column form."""
    return {f: [s.get(f) for s in subjects] for f in SUBJECT_FIELDS}


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def pack(payload: Payload) -> bytes:
    """Serialise a payload to bytes."""
    meta = canonical_json(payload.meta)
    return b"".join([MAGIC, struct.pack(">Q", len(payload.index)), payload.index, struct.pack(">Q", len(meta)), meta])


def unpack(data: bytes) -> Payload:
    """Parse payload bytes; PayloadError on anything malformed."""
    if data[:8] != MAGIC:
        raise PayloadError("watchlist payload has an unknown format (bad magic)")
    try:
        (n_index,) = struct.unpack_from(">Q", data, 8)
        start = 16
        index = data[start:start + n_index]
        (n_meta,) = struct.unpack_from(">Q", data, start + n_index)
        meta_start = start + n_index + 8
        if len(index) != n_index or meta_start + n_meta != len(data):
            raise PayloadError("watchlist payload is truncated or has trailing bytes")
        meta = json.loads(data[meta_start:])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PayloadError(f"watchlist payload is malformed: {err}") from None
    for key in ("dim", "metric", "items", "subjects"):
        if key not in meta:
            raise PayloadError(f"watchlist payload metadata lacks {key!r}")
    subjects = meta["subjects"]
    if not isinstance(subjects, dict) or set(subjects) != set(SUBJECT_FIELDS) or len({len(v) for v in subjects.values()}) != 1:
        raise PayloadError("watchlist payload subjects must be equal-length columns " + ", ".join(SUBJECT_FIELDS))
    return Payload(bytes(index), meta)
