"""Delta watchlist versions: the format and its application (pure: bytes and numpy), shared — a device applies a
delta to the version it holds, the operator applies it to seal the full version beside it. Making one (`diff`) is
the operator's: `edge.watchlist.operator.diff`.

A delta from base content B to new content N lists the subject ids removed, the subjects added (with their
templates), the subjects whose metadata changed (label, category, expiry), and the new payload thresholds. Applying
it to B gives, deterministically: B's subjects minus the removed ones, in B's order, with the updates applied, then
the added ones in N's order; the items (templates) follow their subjects in the same order; B's stage-1 projection
and Annoy settings are kept and the index is rebuilt from the templates (`edge.watchlist.index.index_for`). A
subject whose templates changed is removed and added again. The operator seals the result's content hash in the signed
manifest, so a device proves it rebuilt exactly the content a full bundle of that version carries.

Layout: b"EWLDLT1\\n" | u64 BE header length | canonical JSON header | u64 BE added-templates length | templates
(int8 rows then float32 scales, as in the payload).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.canonical import canonical_json
from edge.watchlist.index import index_for
from edge.watchlist.payload import (SUBJECT_FIELDS, Payload, PayloadError, content_sha256, pack, split_templates,
                                    template_dim, unpack)

MAGIC = b"EWLDLT1\n"
#: Payload metadata a delta cannot change (a different embedding layout needs a full version).
FIXED_META = ("dim", "metric", "fusion")
_HEADER_FIELDS = {"base_content_sha256", "removed", "updated", "added", "added_items", "thresholds"}


class DeltaError(PayloadError):
    """A delta cannot be made (the layouts differ) or does not apply (wrong base, malformed)."""


class WrongBase(DeltaError):
    """The delta was made from other content than the one it is applied to."""


@dataclass(frozen=True)
class Delta:
    """base_content_sha256: the content the delta applies to. removed: subject ids. updated: id → {field: value}.
    added: subject columns (as in the payload). added_items: for each added template row, its index into added.
    templates: the added rows (payload template layout). thresholds: the payload's thresholds after the change."""

    base_content_sha256: str
    removed: list[str]
    updated: dict[str, dict[str, Any]]
    added: dict[str, list[Any]]
    added_items: list[int]
    templates: bytes
    thresholds: dict[str, Any]

    @property
    def n_added(self) -> int:
        return len(self.added["id"])


def template_rows(p: Payload) -> tuple[np.ndarray, np.ndarray]:
    """A payload's templates as ((N, D) int8 rows, (N,) float32 scales)."""
    return split_templates(p.templates, len(p.meta["items"]), template_dim(p.meta))


def template_bytes(q: np.ndarray, scale: np.ndarray) -> bytes:
    """int8 rows and their scales → the payload's templates section."""
    return np.ascontiguousarray(q, np.int8).tobytes() + scale.astype("<f4").tobytes()


def apply(base: Payload, delta: Delta) -> Payload:
    """The full payload `delta` makes of `base` (index rebuilt); DeltaError if `base` is not its base."""
    if content_sha256(pack(base)) != delta.base_content_sha256:
        raise WrongBase("the delta does not apply: the installed watchlist is not the version it was made from")
    col = base.meta["subjects"]
    gone = set(delta.removed)
    unknown = (gone | set(delta.updated)) - set(col["id"])
    if unknown:
        raise DeltaError(f"the delta names {len(unknown)} subject(s) the base does not hold")
    keep = [j for j, sid in enumerate(col["id"]) if sid not in gone]
    remap = {j: k for k, j in enumerate(keep)}
    subjects = {f: [col[f][j] for j in keep] + list(delta.added[f]) for f in SUBJECT_FIELDS}
    position = {sid: k for k, sid in enumerate(subjects["id"][:len(keep)])}
    for sid, change in delta.updated.items():
        if sid in gone:
            raise DeltaError(f"the delta both removes and updates subject {sid!r}")
        for f, value in change.items():
            subjects[f][position[sid]] = value
    if len(set(subjects["id"])) != len(subjects["id"]):
        raise DeltaError("the delta adds a subject id the base already holds")
    bq, bs = template_rows(base)
    kept_rows = [r for r, s in enumerate(base.meta["items"]) if s in remap]
    items = [remap[base.meta["items"][r]] for r in kept_rows] + [len(keep) + k for k in delta.added_items]
    aq, as_ = split_templates(delta.templates, len(delta.added_items), template_dim(base.meta))
    templates = template_bytes(np.concatenate([bq[kept_rows], aq]), np.concatenate([bs[kept_rows], as_]))
    meta = dict(base.meta, items=items, subjects=subjects, thresholds=dict(delta.thresholds))
    if not items:  # nobody left: no shortlist projection to re-score with (an empty list loads without one)
        meta.pop("stage1", None)
    return Payload(index_for(meta, templates), meta, templates)


def pack_delta(delta: Delta) -> bytes:
    """Serialise a delta to bytes."""
    header = canonical_json({"base_content_sha256": delta.base_content_sha256, "removed": delta.removed,
                             "updated": delta.updated, "added": delta.added, "added_items": delta.added_items,
                             "thresholds": delta.thresholds})
    return b"".join([MAGIC, struct.pack(">Q", len(header)), header, struct.pack(">Q", len(delta.templates)),
                     delta.templates])


def unpack_delta(data: bytes) -> Delta:
    """Parse delta bytes; DeltaError on anything malformed."""
    if bytes(data[:8]) != MAGIC:
        raise DeltaError("watchlist delta has an unknown format (bad magic)")
    try:
        (n_header,) = struct.unpack_from(">Q", data, 8)
        header = json.loads(bytes(data[16:16 + n_header]))
        (n_templates,) = struct.unpack_from(">Q", data, 16 + n_header)
        templates = bytes(data[24 + n_header:])
    except (struct.error, ValueError, RecursionError) as err:
        raise DeltaError(f"watchlist delta is malformed: {err}") from None
    if len(templates) != n_templates:
        raise DeltaError("watchlist delta is truncated or has trailing bytes")
    if not isinstance(header, dict) or set(header) != _HEADER_FIELDS:
        raise DeltaError("watchlist delta header has the wrong fields")
    added, items = header["added"], header["added_items"]
    ok = (isinstance(header["removed"], list) and all(isinstance(s, str) for s in header["removed"])
          and isinstance(header["updated"], dict)
          and all(isinstance(c, dict) and set(c) <= set(SUBJECT_FIELDS) - {"id"} for c in header["updated"].values())
          and isinstance(added, dict) and set(added) == set(SUBJECT_FIELDS)
          and all(isinstance(v, list) for v in added.values()) and len({len(v) for v in added.values()}) == 1
          and all(isinstance(x, str) for x in added["id"])
          and isinstance(items, list) and all(type(i) is int and 0 <= i < len(added["id"]) for i in items)
          and isinstance(header["thresholds"], dict) and isinstance(header["base_content_sha256"], str))
    if not ok:
        raise DeltaError("watchlist delta header is malformed")
    return Delta(header["base_content_sha256"], header["removed"], header["updated"], added, items, templates,
                 header["thresholds"])


def apply_bytes(base_packed: bytes, delta_packed: bytes) -> bytes:
    """`pack(apply(unpack(base), unpack_delta(delta)))`: the device's one call."""
    delta = unpack_delta(delta_packed)
    base = unpack(base_packed)
    n_rows = len(delta.added_items) * (template_dim(base.meta) + 4)
    if len(delta.templates) != n_rows:
        raise DeltaError(f"watchlist delta templates hold {len(delta.templates)} bytes, not {n_rows}")
    return pack(apply(base, delta))
