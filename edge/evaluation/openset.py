"""Open-set (1:N) identification: FNIR at a target FPIR, rank-1, DET curve, and thresholds for a watchlist size.

NIST FRTE identification terms: a *mated* search has its subject in the gallery; a *non-mated* one has not.
FPIR(T) = share of non-mated searches whose top candidate scores ≥ T. FNIR(T) = share of mated searches whose
mate is not the top candidate with a score ≥ T. Because a non-mated search is compared with every one of the N
gallery templates, FPIR ≈ 1 − (1 − FMR)^N: the threshold must rise with the watchlist size
(`edge.evaluation.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edge.errors import DataError, EdgeError
from edge.tables import read_csv


@dataclass(frozen=True)
class Probe:
    """A probe photo, its identity and whether that identity is enrolled."""

    path: Path
    identity: str
    in_watchlist: bool


def read_probes(csv_path: str | Path, root: str | Path) -> list[Probe]:
    """Read `path,identity,in_watchlist` (in_watchlist ∈ {0, 1}; paths relative to `root`)."""
    csv_path, root = Path(csv_path), Path(root)
    probes = []
    for line, row in enumerate(read_csv(csv_path, ("path", "identity", "in_watchlist")), start=2):
        flag = (row["in_watchlist"] or "").strip()
        if flag not in ("0", "1"):
            raise DataError(f"{csv_path}, line {line}: 'in_watchlist' must be 0 or 1, got {row['in_watchlist']!r}")
        probes.append(Probe(root / row["path"], row["identity"].strip(), flag == "1"))
    if not probes:
        raise DataError(f"{csv_path} has no probes")
    return probes


def threshold_at_fpir(nonmated_top: np.ndarray, fpir: float) -> float:
    """Smallest threshold T (accept ≥ T) with at most ⌊fpir · n⌋ non-mated top scores ≥ T."""
    desc = np.sort(np.asarray(nonmated_top, np.float64))[::-1]
    k = int(math.floor(fpir * len(desc)))
    if k >= len(desc):
        return float(desc[-1])
    return float(np.nextafter(desc[k], np.inf))


def openset_report(mated_top: np.ndarray, mated_correct: np.ndarray, nonmated_top: np.ndarray, fpir: float) -> dict:
    """FNIR, achieved FPIR and rank-1 at the threshold that meets the target FPIR on these searches.

    mated_top: top similarity of each mated search; mated_correct: whether that top candidate is the mate
    (a search with no candidate has top −inf and correct False). nonmated_top: top similarity of each non-mated search.
    """
    mated_top, mated_correct = np.asarray(mated_top, np.float64), np.asarray(mated_correct, bool)
    nonmated_top = np.asarray(nonmated_top, np.float64)
    if not len(nonmated_top) or not len(mated_top):
        raise DataError("open-set evaluation needs both mated and non-mated probes")
    t = threshold_at_fpir(nonmated_top, fpir)
    return {
        "threshold": round(t, 5),
        "fpir_target": fpir,
        "fpir": round(float((nonmated_top >= t).mean()), 5),
        "fnir": round(float(1 - (mated_correct & (mated_top >= t)).mean()), 5),
        "rank1": round(float(mated_correct.mean()), 5),
        "fpir_resolution": round(1 / len(nonmated_top), 5),
    }


def det_points(mated_top: np.ndarray, mated_correct: np.ndarray,
               nonmated_top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) over all thresholds, for the DET plot."""
    ts = np.unique(np.concatenate([mated_top[np.isfinite(mated_top)], nonmated_top]))
    fpir = np.array([(nonmated_top >= t).mean() for t in ts])
    fnir = np.array([1 - (mated_correct & (mated_top >= t)).mean() for t in ts])
    return fpir, fnir


@dataclass
class Searches:
    """What `search_probes` measured. mated_top / nonmated_top: each search's top similarity (cosine, fused when
    the analyzer fuses; -inf without a face); mated_ok: the mate was the top candidate; impostors: each non-mated
    probe's scores against every template (the comparisons a threshold's tail is fitted to)."""

    mated_top: np.ndarray
    mated_ok: np.ndarray
    nonmated_top: np.ndarray
    impostors: list[np.ndarray]
    failed_detect: int


def search_probes(analyzer: Any, enrollment: Any, probes: list[Probe], trees: int = 8,
                  progress: Callable[[str], Callable[[Iterable], Iterable]] = lambda what: lambda it: it) -> Searches:
    """Search every probe photo in a watchlist built from `enrollment` with the device's two-stage search."""
    from edge.imageio import read_image
    from edge.watchlist.operator.build import payload_of
    from edge.watchlist.device.matcher import Watchlist

    gallery = np.stack(enrollment.vectors)
    fusion = analyzer.fusion
    gallery2 = np.stack(enrollment.vectors2) if fusion is not None else None
    watchlist = Watchlist.from_payload(payload_of(enrollment, analyzer.fusion_meta, trees))
    mated_top, mated_ok, nonmated_top, impostors, failed = [], [], [], [], 0
    for probe in progress("searching")(probes):
        face = analyzer.best_face(read_image(probe.path))
        if face is None:
            failed += 1
            if probe.in_watchlist:
                mated_top.append(-np.inf)
                mated_ok.append(False)
            continue
        top = watchlist.search(face.embedding, k=1, embedding2=face.embedding2)
        sim = top[0].similarity if top else -np.inf
        if probe.in_watchlist:
            mated_top.append(sim)
            mated_ok.append(bool(top) and top[0].subject_id == probe.identity)
        else:
            nonmated_top.append(sim)
            sims = gallery @ face.embedding
            if fusion is not None:  # the fused score the threshold applies to
                sims = fusion.scale1 * sims + fusion.scale2 * (gallery2 @ face.embedding2) + fusion.offset
            impostors.append(sims.astype(np.float32))
    return Searches(np.array(mated_top), np.array(mated_ok), np.array(nonmated_top), impostors, failed)


def calibration_check(analyzer: Any, n_templates: int, fpir: float, nonmated_top: np.ndarray) -> dict:
    """The shipped impostor tail's threshold for this gallery's size, and the FPIR measured at it here."""
    from edge.evaluation.calibration import scoring_tail

    try:
        th = scoring_tail(analyzer.embedder_info.info, analyzer.fusion).threshold_for(n_templates, fpir)
    except DataError as err:  # no tail shipped for this embedder
        return {"error": str(err)}
    return {"predicted_threshold": th["match"], "predicted_fpir": th["predicted_fpir"],
            "measured_fpir_at_predicted": round(float((nonmated_top >= th["match"]).mean()), 5)
            if len(nonmated_top) else None, "n_nonmated": int(len(nonmated_top))}


def projection(analyzer: Any, size: int, fpir: float, mated_top: np.ndarray, mated_ok: np.ndarray) -> dict:
    """What this run's mated searches would give against a watchlist of `size` templates: the shipped tail's
    threshold for that size at `fpir` (point estimate, and the confidence bound `edge watchlist seal` applies) and
    the FNIR of these searches at each. A search only counts as found when its mate is the top candidate, as on a
    device (a larger list can only add candidates, so this is a lower bound on the FNIR at that size). A bound
    above the largest score there is is reported as it is, with FNIR 1 at it (`seal` refuses such a list)."""
    from edge.evaluation.calibration import scoring_tail

    try:
        tail = scoring_tail(analyzer.embedder_info.info, analyzer.fusion)
        point, bound, fmr = tail.thresholds(size, fpir)
    except DataError as err:  # no tail shipped
        return {"size": size, "error": str(err)}
    mated_top, mated_ok = np.asarray(mated_top, np.float64), np.asarray(mated_ok, bool)

    def fnir(t: float) -> float | None:
        return round(float(1 - (mated_ok & (mated_top >= t)).mean()), 5) if len(mated_top) else None

    return {"size": size, "fpir_target": fpir, "threshold": round(point, 5), "threshold_bound": round(bound, 5),
            "fnir": fnir(bound), "fnir_at_point": fnir(point), "reachable": bool(bound <= tail.max_score),
            "fmr_per_comparison": float(f"{fmr:.3e}"), "n_mated": int(len(mated_top))}


def plot_det(path: Path, fpir: np.ndarray, fnir: np.ndarray, report: dict) -> None:
    """The DET curve (FNIR against FPIR, log x) with the operating point, as a PNG at `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeError("--plot needs matplotlib: pip install 'edge-watchlist[eval]'") from None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step(np.maximum(fpir, 1e-4), fnir, where="post")
    ax.set_xscale("log")
    ax.set_xlabel("FPIR (non-mated searches alarming)")
    ax.set_ylabel("FNIR (mated searches missed)")
    ax.axvline(max(report["fpir_target"], 1e-4), color="k", ls="--", lw=0.8)
    ax.set_title(f"DET — FNIR {report['fnir']} at FPIR {report['fpir']} (T={report['threshold']:.3f})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
