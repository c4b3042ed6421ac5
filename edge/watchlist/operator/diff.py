"""Making a delta (operator side): the difference between two payloads of the same embedding layout. Its format and
application are shared: `edge.watchlist.delta`."""

from __future__ import annotations

import numpy as np

from edge.watchlist.delta import FIXED_META, Delta, DeltaError, template_bytes, template_rows
from edge.watchlist.payload import SUBJECT_FIELDS, Payload, content_sha256, pack


def _by_subject(p: Payload) -> dict[str, list[int]]:
    """subject id → its item (row) numbers, in order."""
    ids = p.meta["subjects"]["id"]
    out: dict[str, list[int]] = {s: [] for s in ids}
    for row, subject in enumerate(p.meta["items"]):
        out[ids[subject]].append(row)
    return out


def diff(base: Payload, new: Payload) -> Delta:
    """The delta turning `base` into (the content of) `new`; DeltaError if the embedding layouts differ."""
    for key in FIXED_META:
        if base.meta.get(key) != new.meta.get(key):
            raise DeltaError(f"the watchlists differ in {key!r} ({base.meta.get(key)!r} → {new.meta.get(key)!r}):"
                             " a delta cannot change the embedding layout; seal a full version")
    b_rows, n_rows = _by_subject(base), _by_subject(new)
    bq, bs = template_rows(base)
    nq, ns = template_rows(new)
    b_col, n_col = base.meta["subjects"], new.meta["subjects"]
    b_at = {s: i for i, s in enumerate(b_col["id"])}
    removed, updated, added_idx = [], {}, []
    for i, sid in enumerate(n_col["id"]):
        if sid not in b_at:
            added_idx.append(i)
            continue
        j, br, nr = b_at[sid], b_rows[sid], n_rows[sid]
        same_templates = len(br) == len(nr) and np.array_equal(bq[br], nq[nr]) and np.array_equal(bs[br], ns[nr])
        if not same_templates:
            removed.append(sid)
            added_idx.append(i)
            continue
        change = {f: n_col[f][i] for f in SUBJECT_FIELDS if f != "id" and n_col[f][i] != b_col[f][j]}
        if change:
            updated[sid] = change
    new_ids = set(n_col["id"])
    removed = [s for s in b_col["id"] if s not in new_ids] + removed
    added = {f: [n_col[f][i] for i in added_idx] for f in SUBJECT_FIELDS}
    rows, items = [], []
    for k, i in enumerate(added_idx):
        for r in n_rows[n_col["id"][i]]:
            rows.append(r)
            items.append(k)
    return Delta(content_sha256(pack(base)), removed, updated, added, items, template_bytes(nq[rows], ns[rows]),
                 dict(new.meta.get("thresholds") or {}))
