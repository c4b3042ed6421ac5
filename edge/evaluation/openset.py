"""Open-set (1:N) identification: FNIR at a target FPIR, rank-1, DET curve, and thresholds for a watchlist size.

NIST FRTE identification terms: a *mated* search has its subject in the gallery; a *non-mated* one has not.
FPIR(T) = share of non-mated searches whose top candidate scores ≥ T. FNIR(T) = share of mated searches whose
mate is not the top candidate with a score ≥ T. Because a non-mated search is compared with every one of the N
gallery templates, FPIR ≈ 1 − (1 − FMR)^N: the threshold must rise with the watchlist size (`edge.evaluation.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError
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


def det_points(mated_top: np.ndarray, mated_correct: np.ndarray, nonmated_top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) over all thresholds, for the DET plot."""
    ts = np.unique(np.concatenate([mated_top[np.isfinite(mated_top)], nonmated_top]))
    fpir = np.array([(nonmated_top >= t).mean() for t in ts])
    fnir = np.array([1 - (mated_correct & (mated_top >= t)).mean() for t in ts])
    return fpir, fnir
