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
import os
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


def subject_columns(subjects: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Subject records → the payload's column form."""
    return {f: [s.get(f) for s in subjects] for f in SUBJECT_FIELDS}


def pack(payload: Payload) -> bytes:
    """Serialise a payload to bytes."""
    meta = canonical_json(payload.meta)
    return b"".join([MAGIC, struct.pack(">Q", len(payload.index)), payload.index,
                     struct.pack(">Q", len(payload.templates)), payload.templates, struct.pack(">Q", len(meta)), meta])


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
    _check_meta(meta, len(templates))
    return Payload(bytes(index), meta, bytes(templates))


def template_dim(meta: dict[str, Any]) -> int:
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
    return bytes(q.tobytes() + scale.astype("<f4").tobytes())


def split_templates(templates: Any, n: int, dim: int, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The templates section → ((N, D) int8, (N,) float32 scales): copies independent of `templates`, or with
    `copy=False` read-only views into it (a mapped payload)."""
    q = np.frombuffer(templates, np.int8, n * dim).reshape(n, dim)
    scale = np.frombuffer(templates, "<f4", n, offset=n * dim)
    if copy:
        return q.copy(), scale.astype(np.float32)
    return q, scale


_CONTENT_DOMAIN = b"edge-wl-content/1\x00"
#: Domain of the content hash of a plaintext that is not a watchlist payload (`edge.watchlist.frame.content_of`).
OPAQUE_DOMAIN = b"edge-wl-opaque/1\x00"


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


# ------------------------------------------------------------------------------------------------ streamed payloads


@dataclass
class MappedPayload:
    """A payload decrypted straight into anonymous memory files (never a Python bytes copy of the whole): the
    Annoy index in its own memfd (`index_fd`, for Annoy to map), the templates in a read-only map of another
    (`templates`, a memoryview), and the parsed metadata."""

    index_fd: int
    index_bytes: int
    templates: Any
    meta: dict[str, Any]

    def close(self) -> None:
        if self.index_fd >= 0:
            os.close(self.index_fd)
            self.index_fd = -1


class PayloadSink:
    """Receives a v2 payload's plaintext in chunks (`write`) and routes it: the index section into one memfd, the
    templates into another, the metadata into a buffer, hashing the content (`content_sha256`) on the way. Only
    the section lengths are read before the ciphertext is authenticated; `result()` (called after authentication)
    parses the metadata. `total`: the plaintext length, which the sections must add up to exactly."""

    def __init__(self, total: int) -> None:
        if not hasattr(os, "memfd_create"):
            raise PayloadError("this platform has no memfd_create: Linux ≥ 3.17 is required")
        self.total, self.seen = total, 0
        self._fds = [os.memfd_create("edge-wl-index", os.MFD_CLOEXEC), os.memfd_create("edge-wl-templates",
                                                                                        os.MFD_CLOEXEC)]
        self._meta = bytearray()
        self._hash = hashlib.sha256(_CONTENT_DOMAIN)
        self._pending = bytearray()  # the bytes of a length field split across chunks
        self._plan: list[tuple[str, int]] = [("head", 16)]
        self.lengths: dict[str, int] = {}
        self._undecided: bytearray | None = bytearray()
        self._opaque: bytearray | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        self.seen += len(view)
        if self.seen > self.total:
            raise PayloadError("watchlist payload is longer than declared")
        if self._opaque is not None:
            self._opaque += view
            return
        if self._undecided is not None:  # the first 8 bytes say whether this is a watchlist payload at all
            self._undecided += view
            if len(self._undecided) < len(MAGIC) and self.seen < self.total:
                return
            view, self._undecided = memoryview(bytes(self._undecided)), None
            if bytes(view[:len(MAGIC)]) != MAGIC:  # not ours: kept whole, judged by its loader (as `content_of`)
                self._opaque = bytearray(view)
                return
        while view:
            if not self._plan:
                raise PayloadError("watchlist payload has trailing bytes")
            what, need = self._plan[0]
            take = view[:need]
            view = view[need:]
            self._plan[0] = (what, need - len(take))
            self._consume(what, take)
            if self._plan[0][1] == 0:
                self._plan.pop(0)
                self._next(what)

    def _consume(self, what: str, data: memoryview) -> None:
        if what in ("head", "tlen", "mlen"):
            self._pending += data
        elif what == "index":
            _write_all(self._fds[0], data)
        elif what == "templates":
            _write_all(self._fds[1], data)
            self._hash.update(data)
        else:
            self._meta += data
            self._hash.update(data)

    def _next(self, what: str) -> None:
        if what == "head":
            if bytes(self._pending[:8]) != MAGIC:
                raise PayloadError("watchlist payload has an unknown format (bad magic; format 2 expected)")
            (n,) = struct.unpack(">Q", bytes(self._pending[8:16]))
            self._section("index", n, 16)
        elif what == "index":
            self._plan.insert(0, ("tlen", 8))
        elif what == "tlen":
            (n,) = struct.unpack(">Q", bytes(self._pending))
            self._hash.update(struct.pack(">Q", n))
            self._section("templates", n, 8)
        elif what == "templates":
            self._plan.insert(0, ("mlen", 8))
        elif what == "mlen":
            (n,) = struct.unpack(">Q", bytes(self._pending))
            self._section("meta", n, 8)
        self._pending = bytearray()

    def _section(self, what: str, n: int, header: int) -> None:
        used = sum(self.lengths.values()) + 16 + 8 * (len(self.lengths))
        if n > self.total - used:
            raise PayloadError(f"watchlist payload's {what} section ({n} bytes) exceeds the payload")
        self.lengths[what] = n
        self._plan.insert(0, (what, n))
        if n == 0:
            self._plan.pop(0)
            self._next(what)

    def content_sha256(self) -> str:
        if self.seen != self.total:
            raise PayloadError("watchlist payload is truncated")
        if self._undecided is not None:  # shorter than a magic: opaque
            self._opaque, self._undecided = self._undecided, None
        if self._opaque is not None:
            return hashlib.sha256(OPAQUE_DOMAIN + bytes(self._opaque)).hexdigest()
        if self._plan:
            raise PayloadError("watchlist payload is truncated")
        return self._hash.hexdigest()

    def result(self) -> "MappedPayload | bytes":
        """The authenticated payload: metadata parsed and checked, the templates mapped read-only (bytes, when the
        plaintext is not a watchlist payload: its loader refuses it)."""
        import mmap

        if self._opaque is not None:
            self.close()
            return bytes(self._opaque)

        try:
            meta = json.loads(bytes(self._meta))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise PayloadError(f"watchlist payload is malformed: {err}") from None
        self._meta = bytearray()
        _check_meta(meta, self.lengths.get("templates", 0))
        n_t = self.lengths.get("templates", 0)
        templates: Any = memoryview(mmap.mmap(self._fds[1], n_t, prot=mmap.PROT_READ)) if n_t else b""
        os.close(self._fds[1])
        self._fds[1] = -1
        mapped = MappedPayload(self._fds[0], self.lengths.get("index", 0), templates, meta)
        self._fds[0] = -1
        return mapped

    def close(self) -> None:
        """Release the memory files (after a failure; `result()` hands the index one over)."""
        for i, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[i] = -1


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _check_meta(meta: Any, n_templates: int) -> None:
    """The checks `unpack` makes of the metadata and the templates section's size."""
    if not isinstance(meta, dict):
        raise PayloadError("watchlist payload metadata is not an object")
    for key in ("dim", "metric", "items", "subjects"):
        if key not in meta:
            raise PayloadError(f"watchlist payload metadata lacks {key!r}")
    subjects = meta["subjects"]
    if (not isinstance(subjects, dict) or set(subjects) != set(SUBJECT_FIELDS)
            or len({len(v) for v in subjects.values()}) != 1):
        raise PayloadError("watchlist payload subjects must be equal-length columns " + ", ".join(SUBJECT_FIELDS))
    if n_templates:
        n, dim = len(meta["items"]) if isinstance(meta["items"], list) else -1, template_dim(meta)
        if dim < 1 or n_templates != n * (dim + 4):
            raise PayloadError(f"watchlist payload templates hold {n_templates} bytes, not {n} × ({dim} + 4)")
