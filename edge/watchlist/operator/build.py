"""Enrollment (operator side): gallery photos → quality-checked templates → Annoy index + metadata.

Gallery CSV: `path,identity` plus optional `label`, `category`, `expires` (ISO date) columns; paths relative to
`--root`. Several photos per identity give several templates. Every rejected photo is reported with its reason.
The build directory holds plaintext (index.ann, meta.json, and references/: the enrolled face chips the review
console shows beside captured ones): it stays on the operator's machine; devices only ever receive the index,
templates and metadata, sealed (`edge watchlist seal`) — never a reference chip.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edge.durable import atomic_write, private_dir
from edge.errors import DataError, EdgeError
from edge.tables import read_csv
from edge.imageio import read_image
from edge.vision.quality import (DEFAULT_SUBJECT_RULE, ENROLLMENT_LIMITS, QualityThresholds, SubjectRule, assess,
                                 subject_face)
from edge.watchlist.index import index_for
from edge.canonical import canonical_json
from edge.watchlist.operator.references import ReferenceSpool
from edge.watchlist.payload import Payload, quantize_templates, subject_columns

#: Annoy trees: chosen from `edge watchlist bench` at 300,000 fused templates (8 trees: recall@1 vs exact 99.97 %, query
#: p99 1.16 ms, device RSS 293 MiB; 16 trees: 99.96 %, 1.20 ms, 300 MiB — README).
DEFAULT_TREES = 8
#: The shortlist stage searches a PCA projection of the templates to this many dimensions, once there are enough
#: templates to fit the projection on (`PCA_MIN_ITEMS`); smaller lists index the full templates. Measured at
#: 300,000 templates, 16 trees (`edge watchlist bench`): the 128-D index is 214 MB; a fresh process's RSS grew by
#: 139 MB (64-D) and 97 MB (32-D) over 10,000 queries, recall@1 vs exact 99.96–99.98 % for both (shortlist 128).
STAGE1_DIM = 32
PCA_MIN_ITEMS = 2000


@dataclass(frozen=True)
class GalleryEntry:
    """One gallery photo and the subject it enrolls."""

    path: Path
    identity: str
    label: str
    category: str
    expires: str | None


#: A subject id: what an event names a person by on the wire (no control characters, bounded).
SUBJECT_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,128}\Z")


def _parse_expiry(text: str) -> datetime | None:
    """A gallery `expires` (YYYY-MM-DD, or ISO 8601 with a time; naive means UTC) as an aware datetime, or None."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read_gallery(csv_path: str | Path, root: str | Path) -> list[GalleryEntry]:
    """Read a gallery CSV; missing files are reported by enrollment, not here."""
    csv_path, root = Path(csv_path), Path(root)
    entries = []
    now = datetime.now(timezone.utc)
    for line, row in enumerate(read_csv(csv_path, ("path", "identity")), start=2):
        if not (row["path"] or "").strip() or not (row["identity"] or "").strip():
            raise DataError(f"{csv_path}, line {line}: empty path or identity")
        identity = row["identity"].strip()
        if not SUBJECT_ID.match(identity):
            raise DataError(f"{csv_path}, line {line}: identity {identity[:40]!r} must be 1-128 characters without"
                            " control characters")
        expires = (row.get("expires") or "").strip() or None
        if expires is not None:
            when = _parse_expiry(expires)
            if when is None:
                raise DataError(f"{csv_path}, line {line}: expires {expires[:40]!r} is not a date (use YYYY-MM-DD or"
                                " an ISO 8601 UTC time)")
            if when <= now:
                raise DataError(f"{csv_path}, line {line}: expires {expires} is in the past")
        entries.append(GalleryEntry(root / row["path"], identity, (row.get("label") or identity).strip(),
                                    (row.get("category") or "").strip(), expires))
    if not entries:
        raise DataError(f"{csv_path} has no rows")
    return entries


@dataclass
class Enrollment:
    """Templates (unit vectors) and their subjects, plus the photos that were rejected and why."""

    vectors: list[np.ndarray]
    item_subject: list[int]
    subjects: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    qualities: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    vectors2: list[np.ndarray]


def enroll(entries: list[GalleryEntry], analyzer: Any, limits: QualityThresholds | None = ENROLLMENT_LIMITS,
           progress: Callable[[Iterable[GalleryEntry]], Iterable[GalleryEntry]] = lambda it: it,
           subject: SubjectRule = DEFAULT_SUBJECT_RULE,
           on_template: Callable[[int, np.ndarray | None], None] | None = None) -> Enrollment:
    """Detect, check, align and embed each gallery photo: its subject face (`subject_face`: the only face, or the
    clearly dominant one, with a warning) must pass `limits` (None = no quality gate, for measuring its effect).
    on_template: called with (template index, aligned chip) for each accepted photo (`ReferenceSpool.add`)."""
    subject_index: dict[str, int] = {}
    out = Enrollment([], [], [], [], [], [], [])
    for entry in progress(entries):
        try:
            rgb = read_image(entry.path)
        except EdgeError as err:
            out.rejected.append({"path": str(entry.path), "reason": "unreadable file", "detail": str(err)})
            continue
        dets = analyzer.detect(rgb)
        pick = subject_face(dets, (rgb.shape[1], rgb.shape[0]), subject)
        if pick.index is None:
            out.rejected.append({"path": str(entry.path), "reason": pick.reason,
                                 **({"detail": pick.detail} if pick.detail else {})})
            continue
        if pick.warning:
            out.warnings.append({"path": str(entry.path), "warning": pick.warning})
        face = analyzer.embed(rgb, dets[pick.index])
        quality = assess(face.detection, face.chip, limits or QualityThresholds(0, 0, 1e9, 1e9, 0))
        if not quality.ok:
            out.rejected.append({"path": str(entry.path), "reason": quality.reason, "quality": quality.to_json()})
            continue
        if entry.identity not in subject_index:
            subject_index[entry.identity] = len(out.subjects)
            out.subjects.append({"id": entry.identity, "label": entry.label, "category": entry.category,
                                 "expires": entry.expires})
        out.vectors.append(face.embedding)
        if face.embedding2 is not None:
            out.vectors2.append(face.embedding2)
        out.item_subject.append(subject_index[entry.identity])
        out.qualities.append({"path": str(entry.path), **quality.to_json()})
        if on_template is not None:
            on_template(len(out.vectors) - 1, face.chip)
    return out


def fit_pca(vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (dim, D)) of (N, D) vectors: the top principal axes, sign-fixed for determinism."""
    v = np.asarray(vectors, np.float64)
    mean = v.mean(axis=0)
    cov = np.cov(v - mean, rowvar=False)
    w, u = np.linalg.eigh(cov)
    comp = u[:, np.argsort(w)[::-1][:dim]].T
    comp *= np.where(comp[np.arange(dim), np.abs(comp).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return mean.astype(np.float32), comp.astype(np.float32)


def make_payload(vectors: np.ndarray, item_subject: list[int], subjects: list[dict[str, Any]],
                 n_trees: int = DEFAULT_TREES, thresholds: dict[str, Any] | None = None, stage1_dim: int = STAGE1_DIM,
                 vectors2: np.ndarray | None = None, fusion: dict[str, Any] | None = None) -> Payload:
    """Index + templates + metadata for a set of unit-vector templates: the Annoy shortlist index is built on a
    PCA projection (`stage1_dim`) when the list is large enough, the int8 templates re-score its candidates.
    vectors2 / fusion: the fused second embedder's templates and `Fusion.meta()` (both or neither)."""
    vectors = np.asarray(vectors, np.float32)
    if (vectors2 is None) != (fusion is None):
        raise DataError("fused templates need both the second embeddings and the fusion settings")
    meta = {"dim": int(vectors.shape[1]), "metric": "angular", "n_trees": n_trees,
            "items": list(map(int, item_subject)), "subjects": subject_columns(subjects),
            "thresholds": thresholds or {}}
    if len(vectors) >= PCA_MIN_ITEMS and vectors.shape[1] > stage1_dim:
        mean, comp = fit_pca(vectors, stage1_dim)
        meta["stage1"] = {"kind": "pca", "dim": stage1_dim, "mean": [float(f"{x:.7g}") for x in mean],
                          "components": [[float(f"{x:.7g}") for x in row] for row in comp]}
    rows = vectors
    if fusion is not None:
        meta["fusion"] = dict(fusion)
        rows = np.concatenate([vectors, np.asarray(vectors2, np.float32)], axis=1)
    templates = quantize_templates(rows)
    return Payload(index_for(meta, templates), meta, templates)


def payload_of(enrollment: "Enrollment", fusion: dict[str, Any] | None, n_trees: int = DEFAULT_TREES) -> Payload:
    """The payload of an enrollment (fused when `fusion`, i.e. the analyzer's `fusion_meta`, is given)."""
    vectors2 = np.stack(enrollment.vectors2) if fusion is not None else None
    return make_payload(np.stack(enrollment.vectors), enrollment.item_subject, enrollment.subjects, n_trees,
                        vectors2=vectors2, fusion=fusion)


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """DataError if `out_dir` already holds a build and not `force` (checked before a long enrollment too)."""
    if (out_dir / "meta.json").exists() and not force:
        raise DataError(f"{out_dir} already holds a watchlist build; pass --force to replace it")


def write_build(out_dir: Path, payload: Payload, enrollment: Enrollment, embedder: dict[str, Any], seconds: float,
                force: bool = False, references: ReferenceSpool | None = None) -> dict[str, Any]:
    """Write index.ann, templates.bin, meta.json and report.json into `out_dir` (mode 0700: it holds names and
    templates in clear), and move the spooled reference chips in as references/ (operator side only: never in a
    bundle); refuses to overwrite an existing build unless `force`. Returns the report."""
    check_out_dir(out_dir, force)
    private_dir(out_dir)
    atomic_write(out_dir / "index.ann", payload.index)  # every file 0600: names and templates in clear
    atomic_write(out_dir / "templates.bin", payload.templates)
    files = {"index.ann": hashlib.sha256(payload.index).hexdigest(),
             "templates.bin": hashlib.sha256(payload.templates).hexdigest()}
    meta = dict(payload.meta, embedder=embedder, files=files)  # both popped again by load_build
    atomic_write(out_dir / "meta.json", canonical_json(meta))
    if references is not None:
        references.commit(out_dir)
    report = {"n_subjects": len(enrollment.subjects), "n_templates": len(enrollment.vectors),
              "n_references": references.count if references is not None else 0,
              "rejected": enrollment.rejected, "warnings": enrollment.warnings, "n_trees": payload.meta["n_trees"],
              "embedder": embedder, "seconds": round(seconds, 2)}
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2).encode())
    return report


def load_build(build_dir: Path) -> tuple[Payload, dict[str, Any]]:
    """Read a build directory back: (payload, embedder info)."""
    try:
        index = (build_dir / "index.ann").read_bytes()
        templates = (build_dir / "templates.bin").read_bytes()
        meta = json.loads((build_dir / "meta.json").read_text())
    except FileNotFoundError as err:
        raise DataError(f"{build_dir} is not a watchlist build directory ({Path(err.filename).name} is missing); "
                        "make one with `edge watchlist build`") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{build_dir}/meta.json is not valid JSON ({type(err).__name__}); rebuild with"
                        " `edge watchlist build`") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("items"), list)
            or not isinstance(meta.get("subjects"), dict)):
        raise DataError(f"{build_dir}/meta.json is not a watchlist build's metadata; rebuild with"
                        " `edge watchlist build`")
    embedder = meta.pop("embedder", {})
    for name, data in (("index.ann", index), ("templates.bin", templates)):
        want = (meta.get("files") or {}).get(name)
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise DataError(f"{build_dir}/{name} does not match the checksum the build recorded (corrupt or"
                            " edited); rebuild with `edge watchlist build`")
    meta.pop("files", None)
    return Payload(index, meta, templates), embedder

