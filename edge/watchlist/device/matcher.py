"""The live watchlist (device side): an Annoy index loaded from memory (`edge.watchlist.index`: a memfd, never a
file) and a matcher with exact re-ranking.

Matching in two stages: Annoy shortlists `SHORTLIST` templates (on the payload's PCA projection when it has one),
the int8 templates re-score them exactly (cosine with the full probe embedding), candidates collapse to one per
subject, and a match needs the top similarity ≥ threshold **and** a margin over the best other subject.
Payloads without templates (format v1) rank by Annoy's own exact distance, as before.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import numpy.typing as npt

from edge.errors import EdgeError
from edge.types import Candidate, MatchResult  # the vocabulary of a search (edge.types)
from edge.vision.fusion import fused_query
from edge.watchlist.index import IndexLoadError, load_annoy_fd, load_annoy_from_memory
from edge.watchlist.payload import MappedPayload, Payload, split_templates, template_dim, unpack


#: Annoy search effort: with 16 trees over the 32-D projection of 300,000 templates and a 128-template shortlist,
#: search_k 3000 gave recall@1 99.97 % vs exact search at p50 1.21 ms / p99 1.53 ms per query (`edge watchlist
#: bench`, README).
DEFAULT_SEARCH_K = 3000
#: Templates the shortlist stage hands to the exact re-score (int8 dot products with the probe).
SHORTLIST = 128


class StringColumn:
    """A read-only column of optional strings kept compactly: few distinct values (categories) as codes into a
    table, many (ids, labels) as one UTF-8 blob with int64 offsets — 300,000 ids cost ~6 MB instead of ~25 MB of
    Python str objects. `column[i]` gives str ("" for None)."""

    def __init__(self, values: list[Any]) -> None:
        self._n = len(values)
        distinct = sorted({v or "" for v in values})
        if len(distinct) <= max(16, self._n // 8):
            lookup = {v: i for i, v in enumerate(distinct)}
            self._table: list[str] | None = distinct
            self._codes = np.fromiter((lookup[v or ""] for v in values), np.int32, self._n)
        else:
            self._table = None
            encoded = [(v or "").encode() for v in values]
            self._offsets = np.zeros(self._n + 1, np.int64)
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
            self._blob = b"".join(encoded)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> str:
        if self._table is not None:
            return self._table[int(self._codes[i])]
        return self._blob[int(self._offsets[i]):int(self._offsets[i + 1])].decode()


class Watchlist:
    """A loaded watchlist. Read-only after construction, so one instance may serve several threads.

    ann: an Annoy index of unit vectors. meta: the payload metadata. thresholds: {"match": cosine, "margin": cosine}.
    search_k: Annoy's search effort in tree nodes (-1 = Annoy's default, n_trees × n).
    """

    def __init__(self, ann: Any, meta: dict[str, Any], thresholds: dict[str, float] | None = None,
                 search_k: int = DEFAULT_SEARCH_K, manifest: dict[str, Any] | None = None,
                 templates: bytes = b"") -> None:
        self.ann = ann
        # The per-subject and per-item lists become compact columns; `meta` keeps only the small scalars.
        self.meta = {k: v for k, v in meta.items() if k not in ("subjects", "items", "stage1")}
        self.manifest = manifest or {}
        self.dim = int(meta["dim"])
        columns = meta["subjects"]
        self._ids = StringColumn(columns["id"])
        self._labels = StringColumn(columns["label"])
        self._categories = StringColumn(columns["category"])
        self.item_subject = np.asarray(meta["items"], dtype=np.int32)
        if ann.get_n_items() != len(self.item_subject):
            raise IndexLoadError(f"watchlist index has {ann.get_n_items()} items but its map has"
                                 f" {len(self.item_subject)}")
        self.thresholds = dict(thresholds or meta.get("thresholds") or {})
        self.search_k = search_k
        self.shortlist = SHORTLIST
        self._tq = self._ts = self._mean = self._comp = None
        self.fusion: dict[str, Any] | None = meta.get("fusion") or None
        if len(templates):
            # views into a mapped payload's templates (no copy), or copies out of bytes
            self._tq, self._ts = split_templates(templates, len(self.item_subject), template_dim(meta),
                                                 copy=not isinstance(templates, memoryview))
        elif self.fusion:
            raise IndexLoadError("watchlist payload names a fused second embedder but has no templates")
        stage1 = meta.get("stage1")
        if stage1:
            try:
                self._mean = np.asarray(stage1["mean"], np.float32).reshape(self.dim)
                self._comp = np.asarray(stage1["components"], np.float32).reshape(int(stage1["dim"]), self.dim)
            except (KeyError, TypeError, ValueError) as err:
                raise IndexLoadError(f"watchlist shortlist projection is malformed ({err})") from None
            if self._tq is None:
                raise IndexLoadError("watchlist payload has a shortlist projection but no templates to re-score with")

    @classmethod
    def from_payload(cls, data: bytes | Payload | MappedPayload, thresholds: dict[str, Any] | None = None,
                     manifest: dict[str, Any] | None = None, search_k: int = DEFAULT_SEARCH_K) -> Watchlist:
        """Build from decrypted payload bytes (or a parsed Payload), loading the index through a memfd; or from a
        `MappedPayload` (decrypted straight into memfds): Annoy maps its index memfd, the templates stay mapped."""
        if isinstance(data, MappedPayload):
            stage1 = data.meta.get("stage1") or {}
            try:
                ann = load_annoy_fd(data.index_fd, int(stage1.get("dim", data.meta["dim"])))
            finally:
                data.close()  # Annoy keeps its own mapping
            return cls(ann, data.meta, thresholds, search_k, manifest, data.templates)
        payload = unpack(data) if isinstance(data, (bytes, bytearray)) else data
        stage1 = payload.meta.get("stage1") or {}
        ann = load_annoy_from_memory(payload.index, int(stage1.get("dim", payload.meta["dim"])))
        return cls(ann, payload.meta, thresholds, search_k, manifest, payload.templates)

    def __len__(self) -> int:
        return len(self.item_subject)

    @property
    def n_subjects(self) -> int:
        """Number of distinct subjects (templates may be several per subject)."""
        return len(self._ids)

    def search(self, embedding: np.ndarray, k: int = 5, n_items: int | None = None,
               embedding2: np.ndarray | None = None) -> list[Candidate]:
        """Top-k subjects for a unit vector, best template per subject.

        Annoy gathers `SHORTLIST` candidates from its trees (`search_k` nodes); the int8 templates give their exact
        cosine with `embedding` — or, for a fused watchlist, the fused score with (`embedding`, `embedding2`).
        (v1 payloads: Annoy's own exact distance d of the best `n_items`, cosine = 1 − d²/2.)
        """
        e = np.asarray(embedding, np.float32)
        pairs: Iterable[tuple[int, float]]
        tq, ts = self._tq, self._ts
        if tq is not None and ts is not None:
            q: npt.NDArray[np.floating[Any]] = e
            if self._comp is not None and self._mean is not None:
                q = (e - self._mean) @ self._comp.T
                q = q / max(float(np.linalg.norm(q)), 1e-12)
            ids = self.ann.get_nns_by_vector(q.tolist(), max(n_items or 0, self.shortlist), self.search_k)
            if not ids:
                return []
            items = np.asarray(ids, np.intp)
            if self.fusion:
                if embedding2 is None:
                    raise EdgeError("this watchlist fuses a second embedder's scores; the probe has no second"
                                    " embedding")
                q_full = fused_query(e, embedding2, self.fusion)
                sims = (tq[items].astype(np.float32) @ q_full) * ts[items] + float(self.fusion["offset"])
            else:
                sims = (tq[items].astype(np.float32) @ e) * ts[items]
            sims = np.clip(sims, -1.0, 1.0)  # int8 rounding may overshoot a perfect match; scores stay cosine-like
            order = np.argsort(-sims, kind="stable")
            pairs = zip(items[order].tolist(), sims[order].tolist(), strict=True)
        else:
            n_items = n_items or max(20, 4 * k)
            ids, dists = self.ann.get_nns_by_vector(e.tolist(), n_items, self.search_k, include_distances=True)
            pairs = ((item, 1.0 - d * d / 2.0) for item, d in zip(ids, dists, strict=True))
        best: dict[int, tuple[float, int]] = {}
        for item, sim in pairs:
            subject = int(self.item_subject[item])
            if subject not in best:  # best first
                best[subject] = (float(sim), item)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [Candidate(self._ids[s], self._labels[s], self._categories[s], sim, item)
                for s, (sim, item) in ranked]

    def match(self, embedding: np.ndarray, threshold: float | None = None, margin: float | None = None,
              k: int = 5, embedding2: np.ndarray | None = None) -> MatchResult:
        """Decide for one probe: top similarity ≥ threshold and margin over the next subject ≥ margin."""
        threshold = float(self.thresholds.get("match", 1.0) if threshold is None else threshold)
        margin_required = float(self.thresholds.get("margin", 0.0) if margin is None else margin)
        candidates = self.search(embedding, k, embedding2=embedding2)
        if not candidates:
            return MatchResult([], False, threshold, margin_required, 0.0)
        top = candidates[0]
        gap = top.similarity - candidates[1].similarity if len(candidates) > 1 else 1.0
        matched = top.similarity >= threshold and gap >= margin_required
        return MatchResult(candidates, matched, threshold, margin_required, gap, top)
