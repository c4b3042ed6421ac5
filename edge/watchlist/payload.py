"""The plaintext inside a sealed watchlist: Annoy index bytes + exact templates + item→subject map + metadata.

Layout v2: b"EWLPAY2\\n" | u64 BE index length | index bytes | u64 BE templates length | templates | u64 BE
metadata length | canonical JSON metadata. v1 (b"EWLPAY1\\n", no templates section) still loads.
index: Annoy over the templates projected to `meta["stage1"]` (PCA: mean, components) — the shortlist stage;
templates: the full embeddings, int8 per row (N × dim bytes) then one float32 scale per row (N × 4 bytes) — the
exact re-score stage. With `meta["fusion"]` (`edge.vision.fusion`) each row holds [e1, e2] (dim + dim2 bytes).
It exists only in memory on the device; the operator keeps it in the build directory.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.canonical import canonical_json
from edge.errors import EdgeError

MAGIC = b"EWLPAY2\n"
MAGIC_V1 = b"EWLPAY1\n"


class PayloadError(EdgeError):
    """A decrypted payload is not a well-formed watchlist (a sealing bug or a foreign file)."""


@dataclass(frozen=True)
class Payload:
    """index: Annoy index file bytes. meta: {"dim", "metric", "n_trees", "items": [subject index per item],
    "subjects": {"id": [...], "label": [...], "category": [...], "expires": [...]}} — subjects are stored by
    column: 300,000 small dicts would cost the device ~100 MB of RAM, four lists of strings a fraction of it."""

    index: bytes
    meta: dict[str, Any]
    templates: bytes = b""


SUBJECT_FIELDS = ("id", "label", "category", "expires")


def subject_columns(subjects: list[dict]) -> dict[str, list]:
    """Subject records → the payload's column form."""
    return {f: [s.get(f) for s in subjects] for f in SUBJECT_FIELDS}


def pack(payload: Payload) -> bytes:
    """Serialise a payload to bytes."""
    meta = canonical_json(payload.meta)
    return b"".join([MAGIC, struct.pack(">Q", len(payload.index)), payload.index, struct.pack(">Q", len(payload.templates)),
                     payload.templates, struct.pack(">Q", len(meta)), meta])


def unpack(data: bytes) -> Payload:
    """Parse payload bytes; PayloadError on anything malformed."""
    if data[:8] not in (MAGIC, MAGIC_V1):
        raise PayloadError("watchlist payload has an unknown format (bad magic)")
    try:
        (n_index,) = struct.unpack_from(">Q", data, 8)
        start = 16
        index = data[start:start + n_index]
        pos, templates = start + n_index, b""
        if data[:8] == MAGIC:
            (n_templates,) = struct.unpack_from(">Q", data, pos)
            templates = data[pos + 8:pos + 8 + n_templates]
            if len(templates) != n_templates:
                raise PayloadError("watchlist payload is truncated in its templates")
            pos += 8 + n_templates
        (n_meta,) = struct.unpack_from(">Q", data, pos)
        meta_start = pos + 8
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
    if templates:
        n, dim = len(meta["items"]) if isinstance(meta["items"], list) else -1, template_dim(meta)
        if dim < 1 or len(templates) != n * (dim + 4):
            raise PayloadError(f"watchlist payload templates hold {len(templates)} bytes, not {n} × ({dim} + 4)")
    return Payload(bytes(index), meta, bytes(templates))


def template_dim(meta: dict) -> int:
    """Bytes per template row: the primary dim, plus the fused second embedding's (-1 when malformed)."""
    dim, fusion = meta.get("dim"), meta.get("fusion") or {}
    dim2 = fusion.get("dim2", 0) if isinstance(fusion, dict) else -1
    if not isinstance(dim, int) or not isinstance(dim2, int) or dim < 1 or dim2 < 0:
        return -1
    return dim + dim2


def quantize_templates(vectors: np.ndarray) -> bytes:
    """(N, D) float unit vectors → the templates section: int8 rows (scale = max |v| / 127) then float32 scales."""
    v = np.asarray(vectors, np.float32)
    scale = np.maximum(np.abs(v).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.rint(v / scale[:, None]), -127, 127).astype(np.int8)
    return q.tobytes() + scale.astype("<f4").tobytes()


def split_templates(templates: bytes, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The templates section → ((N, D) int8, (N,) float32 scales), copies independent of `templates`."""
    q = np.frombuffer(templates, np.int8, n * dim).reshape(n, dim).copy()
    scale = np.frombuffer(templates, "<f4", n, offset=n * dim).astype(np.float32)
    return q, scale


_CONTENT_DOMAIN = b"edge-wl-content/1\x00"


def content_sha256(packed: bytes) -> str:
    """Hex sha256 of a packed v2 payload's *content*: its templates section and metadata, not the Annoy index
    (which is derived from them and rebuilt by a device applying a delta). A full bundle and a delta of the same
    version carry the same one in their signed manifests. PayloadError if `packed` is not a v2 payload."""
    view = memoryview(packed)
    if bytes(view[:8]) != MAGIC:
        raise PayloadError("watchlist payload has an unknown format (bad magic; format 2 expected)")
    try:
        (n_index,) = struct.unpack_from(">Q", view, 8)
        pos = 16 + n_index
        (n_templates,) = struct.unpack_from(">Q", view, pos)
        templates = view[pos + 8:pos + 8 + n_templates]
        pos += 8 + n_templates
        (n_meta,) = struct.unpack_from(">Q", view, pos)
    except struct.error:
        raise PayloadError("watchlist payload is truncated") from None
    if len(templates) != n_templates or pos + 8 + n_meta != len(view):
        raise PayloadError("watchlist payload is truncated or has trailing bytes")
    h = hashlib.sha256(_CONTENT_DOMAIN)
    h.update(struct.pack(">Q", n_templates))
    h.update(templates)
    h.update(view[pos + 8:])
    return h.hexdigest()
