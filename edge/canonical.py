"""The one canonical JSON encoding: what is signed, hashed or chained (bundle manifests, key rotations, watchlist
payload metadata, audit records) — sorted keys, no spaces, no NaN or infinities."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any, ascii: bool = True) -> bytes:
    """Deterministic JSON bytes of `obj`: sorted keys, `,`/`:` separators, NaN refused (ValueError).
    ascii: escape non-ASCII characters (signed formats); False keeps them as UTF-8 (the audit log's records)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii, allow_nan=False).encode()
