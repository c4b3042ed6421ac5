"""The Annoy shortlist index as bytes, both ways — the only annoy importer.

Built (`index_for`) deterministically from a payload's content: the operator's build (`edge.watchlist.operator
.build`) and a device applying a delta (`edge.watchlist.delta.apply`) get the same bytes from the same templates;
Annoy saves it into an anonymous memory file, so a device's rebuilt index never rests on disk. Loaded
(`load_annoy_from_memory`, `load_annoy_fd`) without plaintext touching disk either: the index is written into an
anonymous memory file (`os.memfd_create`) and Annoy mmaps it through `/proc/self/fd/N`; the mapping outlives the
descriptor. Searching it is `edge.watchlist.device.matcher`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError
from edge.watchlist.payload import split_templates, template_dim


class IndexLoadError(EdgeError):
    """The index bytes could not be loaded (corrupt payload, or no memfd support)."""


def load_annoy_fd(fd: int, dim: int) -> Any:
    """An `annoy.AnnoyIndex` (angular) mapping the index in memory file `fd` (the caller closes `fd`)."""
    from annoy import AnnoyIndex

    ann = AnnoyIndex(dim, "angular")
    try:
        ann.load(f"/proc/self/fd/{fd}", prefault=False)
    except OSError as err:
        raise IndexLoadError(f"watchlist index cannot be loaded: {err}") from None
    return ann


def load_annoy_from_memory(index: bytes, dim: int) -> Any:
    """Load Annoy index bytes through an anonymous memory file; returns an `annoy.AnnoyIndex` (angular)."""
    if not hasattr(os, "memfd_create"):
        raise IndexLoadError("this platform has no memfd_create: the watchlist cannot be loaded without writing "
                             "plaintext to disk (Linux ≥ 3.17 is required)")
    fd = os.memfd_create("edge-watchlist", os.MFD_CLOEXEC)
    try:
        view = memoryview(index)
        while view:
            view = view[os.write(fd, view):]
        return load_annoy_fd(fd, dim)
    finally:
        os.close(fd)


def build_index(vectors: np.ndarray, n_trees: int = 8, seed: int = 1) -> bytes:
    """Annoy (angular) index bytes for (N, D) vectors, item i = row i; one build thread, so the bytes depend only on
    the vectors, `n_trees` and `seed` (Annoy's parallel build is not deterministic)."""
    from annoy import AnnoyIndex

    vectors = np.asarray(vectors, np.float32)
    ann = AnnoyIndex(vectors.shape[1], "angular")
    ann.set_seed(seed)
    for i, v in enumerate(vectors):
        ann.add_item(i, v)
    ann.build(n_trees, n_jobs=1)
    # Annoy saves only to a path. A device applying a delta comes here, so the path is an anonymous memory file
    # (`/proc/self/fd/N` of a memfd): the rebuilt index never rests on disk. Without memfd (not Linux: the operator's
    # tools only, never a device) a temporary file.
    if not hasattr(os, "memfd_create"):
        with tempfile.NamedTemporaryFile(suffix=".ann") as tmp:
            ann.save(tmp.name)
            ann.unload()
            return Path(tmp.name).read_bytes()
    fd = os.memfd_create("edge-watchlist-build", os.MFD_CLOEXEC)
    try:
        path = Path(f"/proc/self/fd/{fd}")
        ann.save(str(path))
        ann.unload()
        return path.read_bytes()
    finally:
        os.close(fd)


def project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """PCA projection of (N, D) or (D,) vectors, rows re-normalised to unit length (Annoy's angular metric)."""
    p = (np.asarray(vectors, np.float32) - mean) @ components.T
    unit: np.ndarray = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
    return unit


def index_for(meta: dict[str, Any], templates: bytes) -> bytes:
    """The Annoy shortlist index of a payload's content, built from its int8 templates (the primary embedding's
    columns, projected by `meta["stage1"]` when present) with one thread and a fixed seed, so that the operator's
    full build and a device applying a delta build the same index from the same content."""
    n, dim = len(meta["items"]), int(meta["dim"])
    q, scale = split_templates(templates, n, template_dim(meta))
    vectors = q[:, :dim].astype(np.float32) * scale[:, None]
    stage1 = meta.get("stage1")
    if stage1:
        vectors = project(vectors, np.array(stage1["mean"], np.float32), np.array(stage1["components"], np.float32))
    return build_index(vectors, int(meta["n_trees"]))
