"""Verification measurements: `edge eval pairs`.

Pure metric functions on similarity arrays (testable without models), a CSV reader with errors that name the
row, and the driver that embeds each photo once and scores every pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edge.errors import DataError, EdgeError
from edge.tables import read_csv


@dataclass(frozen=True)
class Pair:
    """Two photos and whether they show the same person; `fold` is the CSV's fold column if it has one."""

    a: Path
    b: Path
    same: bool
    fold: int | None = None


def read_pairs(csv_path: str | Path, root: str | Path) -> list[Pair]:
    """Read `path_a,path_b,same[,fold]` (paths relative to `root`, same ∈ {0, 1}); every file must exist."""
    csv_path, root = Path(csv_path), Path(root)
    pairs, missing = [], []
    for line, row in enumerate(read_csv(csv_path, ("path_a", "path_b", "same")), start=2):
        same = (row["same"] or "").strip()
        if same not in ("0", "1"):
            raise DataError(f"{csv_path}, line {line}: 'same' must be 0 or 1, got {row['same']!r}")
        fold = row.get("fold")
        try:
            fold_n = int(fold) if fold not in (None, "") else None
        except ValueError:
            raise DataError(f"{csv_path}, line {line}: 'fold' must be an integer, got {fold!r}") from None
        a, b = root / row["path_a"], root / row["path_b"]
        missing += [str(p) for p in (a, b) if not p.is_file()]
        pairs.append(Pair(a, b, same == "1", fold_n))
    if missing:
        shown = ", ".join(sorted(set(missing))[:3])
        raise DataError(f"{csv_path}: {len(set(missing))} image(s) not found under {root}, e.g. {shown}")
    if not pairs:
        raise DataError(f"{csv_path} has no pairs")
    return pairs


def best_threshold(sims: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising accuracy of the rule "same ⇔ similarity ≥ t"; returns (t, accuracy)."""
    order = np.argsort(sims)
    s, y = sims[order], same[order].astype(np.int64)
    n = len(s)
    # With t just above s[i-1] (i.e. at index i): negatives below = zeros in y[:i], positives at/above = ones in y[i:].
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = neg_below + pos_above
    # Only cut between distinct values.
    valid = np.ones(n + 1, bool)
    valid[1:n] = s[1:] != s[:-1]
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        t = float(s[0]) - 1e-6
    elif i == n:
        t = float(s[-1]) + 1e-6
    else:
        t = float((s[i - 1] + s[i]) / 2)
    return t, float(correct[i] / n)


def tar_at_far(sims: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float, float]:
    """True accept rate at a false accept rate ≤ `far`, accepting similarity > t.

    Returns (tar, t, achieved_far). With fewer than 1/far impostor pairs the only admissible operating point
    is FAR = 0 (t = the highest impostor similarity): the figure is then an upper bound on the threshold.
    """
    imp = np.sort(sims[~same])[::-1]
    gen = sims[same]
    if not len(imp) or not len(gen):
        raise EdgeError("TAR@FAR needs both genuine and impostor pairs")
    k = int(np.floor(far * len(imp)))
    t = float(imp[min(k, len(imp) - 1)])
    return float((gen > t).mean()), t, float((imp > t).mean())


def kfold_accuracy(sims: np.ndarray, same: np.ndarray, folds: np.ndarray) -> float:
    """Mean accuracy over folds, each fold scored at the threshold chosen on the others."""
    accs = []
    for f in np.unique(folds):
        test = folds == f
        if test.all() or not test.any():
            continue
        t, _ = best_threshold(sims[~test], same[~test])
        accs.append(float(((sims[test] >= t) == same[test]).mean()))
    return float(np.mean(accs)) if accs else float("nan")


def default_folds(n: int, k: int = 10, seed: int = 0) -> np.ndarray:
    """Deterministic fold ids 0..k-1 for n pairs (seeded shuffle, balanced sizes)."""
    folds = np.arange(n) % k
    np.random.default_rng(seed).shuffle(folds)
    return folds


def verification_report(sims: np.ndarray, same: np.ndarray, folds: np.ndarray | None = None) -> dict:
    """The metrics of `edge eval pairs` for pairs with a similarity (cosine) each."""
    sims = np.asarray(sims, np.float64)
    same = np.asarray(same, bool)
    t, acc = best_threshold(sims, same)
    tar, t_far, far = tar_at_far(sims, same, 1e-3)
    folds = default_folds(len(sims)) if folds is None else folds
    return {
        "accuracy": round(acc, 4),
        "threshold": round(t, 4),
        "accuracy_10fold_mean": round(kfold_accuracy(sims, same, folds), 4),
        "tar_at_far_1e-3": round(tar, 4),
        "threshold_at_far_1e-3": round(t_far, 4),
        "far_achieved": round(far, 5),
        "n_genuine": int(same.sum()),
        "n_impostor": int((~same).sum()),
    }


def eval_pairs(
    pairs: list[Pair],
    embed: Callable[[Path], np.ndarray | None],
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Embed every distinct photo once (None = no face found) and score all pairs.

    Returns (report, similarities, same) — the arrays cover the pairs where both faces were found.
    """
    start = time.perf_counter()
    paths = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    cache = {p: embed(p) for p in progress(paths)}
    sims, same, folds, failed = [], [], [], 0
    for pair in pairs:
        ea, eb = cache[pair.a], cache[pair.b]
        if ea is None or eb is None:
            failed += 1
            continue
        sims.append(float(ea @ eb))
        same.append(pair.same)
        folds.append(pair.fold)
    sims_a, same_a = np.array(sims), np.array(same, bool)
    if not len(sims_a) or same_a.all() or not same_a.any():
        raise EdgeError(f"too few scorable pairs ({len(sims_a)} of {len(pairs)}; {failed} without a face) to evaluate")
    fold_arr = None if any(f is None for f in folds) else np.array(folds)
    report: dict[str, Any] = {"n_pairs": len(pairs), "n_failed_detect": failed, "n_images": len(paths),
              "n_images_no_face": sum(v is None for v in cache.values())}
    report.update(verification_report(sims_a, same_a, fold_arr))
    # Failed detections count as "different" decisions here: the figure a user of the whole pipeline sees.
    fail_same = sum(p.same for p in pairs if cache[p.a] is None or cache[p.b] is None)
    correct = ((sims_a >= report["threshold"]) == same_a).sum() + (failed - fail_same)
    report["accuracy_with_failures"] = round(float(correct / len(pairs)), 4)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report, sims_a, same_a


def plot_pairs(path: str | Path, sims: np.ndarray, same: np.ndarray, report: dict, title: str = "") -> None:
    """PNG with the genuine/impostor similarity histograms (threshold marked) and the ROC curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeError("--plot needs matplotlib: pip install 'edge-watchlist[eval]'") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(min(sims.min(), 0), 1, 60)
    ax1.hist(sims[~same], bins=bins, alpha=0.6, label=f"different ({(~same).sum()})", color="tab:red")
    ax1.hist(sims[same], bins=bins, alpha=0.6, label=f"same ({same.sum()})", color="tab:green")
    ax1.axvline(report["threshold"], color="k", ls="--", label=f"threshold {report['threshold']:.3f}")
    ax1.set_xlabel("cosine similarity")
    ax1.set_ylabel("pairs")
    ax1.legend()
    ax1.set_title(title or "similarity distributions")
    thr = np.unique(sims)[::-1]
    far = [(sims[~same] >= t).mean() for t in thr]
    tar = [(sims[same] >= t).mean() for t in thr]
    ax2.plot(far, tar, color="tab:blue")
    ax2.set_xscale("symlog", linthresh=1e-3)
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1.01)
    ax2.set_xlabel("false accept rate")
    ax2.set_ylabel("true accept rate")
    ax2.set_title(f"ROC — accuracy {report['accuracy']:.3f}, TAR@FAR=1e-3 {report['tar_at_far_1e-3']:.3f}")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
