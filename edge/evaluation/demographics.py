"""False-match and false-non-match rates by demographic group at a threshold (NIST FRVT Part 3 style) — pure numpy.

An impostor pair is two faces of different people (faces without an identity count as different people: a set
like UTKFace names no one, so a rare same-person pair among them makes its group's rate look worse, never better).
*Within* group g: both faces in g — the comparisons where NISTIR 8280 found the largest differences. *Across*: the
two faces in different groups. A group's FMR at threshold T = false matches / impostor pairs, with a 95 % Wilson
score interval; with no false match at all the rate is not estimable at that threshold and is reported as such
(with its upper bound), never as zero. FNMR per group where the data has genuine pairs (same identity, same group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edge.vision.demographics import rate

@dataclass(frozen=True)
class Counts:
    """Pair counts of one group (or of the across-group pairs) at each threshold: `pairs` impostor pairs, `false`
    of them at or above each threshold; `genuine` same-person pairs, `missed` of them below each threshold."""

    faces: int
    pairs: int
    false: tuple[int, ...]
    genuine: int = 0
    missed: tuple[int, ...] = ()


def group_label(values: Sequence[str]) -> str:
    """One group's name from its attribute values ("Black × female")."""
    return " × ".join(values)


def _at_or_above(values: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """How many of `values` are ≥ each threshold of `ts` (sorting, not a values × thresholds matrix)."""
    v = np.sort(values, kind="stable")
    return len(v) - np.searchsorted(v, ts, side="left")


def pair_counts(emb: np.ndarray, groups: Sequence[str], identities: Sequence[str], thresholds: Sequence[float],
                block: int = 2048, progress: Callable[[Iterable], Iterable] = lambda it: it
                ) -> tuple[dict[str, Counts], Counts]:
    """({group: within-group counts}, across-group counts) for unit embeddings `emb` (N, D), each face's group
    label and identity ('' = unknown, a different person from everyone), at each threshold (cosine)."""
    emb = np.asarray(emb, np.float32)
    n = len(emb)
    grp = np.asarray(groups, dtype=object)
    ident = np.asarray([i if i else f"\0face{k}" for k, i in enumerate(identities)], dtype=object)
    ts = np.asarray(thresholds, np.float64)
    names = sorted(set(grp.tolist()))
    gid = np.array([names.index(g) for g in grp])
    within_pairs = np.zeros(len(names), np.int64)
    within_false = np.zeros((len(names), len(ts)), np.int64)
    gen_pairs = np.zeros(len(names), np.int64)
    gen_missed = np.zeros((len(names), len(ts)), np.int64)
    across_pairs, across_false = 0, np.zeros(len(ts), np.int64)
    for b in progress(range(0, n, block)):
        rows = np.arange(b, min(b + block, n))
        sims = emb[rows] @ emb[b:].T  # only columns j ≥ b: each pair once (j > i below)
        cols = np.arange(b, n)
        upper = cols[None, :] > rows[:, None]
        same_id = ident[rows][:, None] == ident[cols][None, :]
        same_grp = gid[rows][:, None] == gid[cols][None, :]
        imp = upper & ~same_id
        across = imp & ~same_grp
        across_pairs += int(across.sum())
        across_false += _at_or_above(sims[across], ts)
        for g in range(len(names)):
            in_g = (gid[rows] == g)[:, None] & (gid[cols] == g)[None, :]
            w = imp & in_g
            within_pairs[g] += int(w.sum())
            within_false[g] += _at_or_above(sims[w], ts)
            gm = upper & same_id & in_g
            if gm.any():
                gen_pairs[g] += int(gm.sum())
                gen_missed[g] += int(gm.sum()) - _at_or_above(sims[gm], ts)
    faces = np.bincount(gid, minlength=len(names))
    within = {name: Counts(int(faces[g]), int(within_pairs[g]), tuple(int(v) for v in within_false[g]),
                           int(gen_pairs[g]), tuple(int(v) for v in gen_missed[g]) if gen_pairs[g] else ())
              for g, name in enumerate(names)}
    return within, Counts(n, across_pairs, tuple(int(v) for v in across_false))


def report_at(within: dict[str, Counts], across: Counts, index: int, threshold: float) -> dict:
    """The JSON report at thresholds[index]: per group within-group FMR (and FNMR where genuine pairs exist),
    the across-group FMR and the ratio of the highest to the lowest estimable within-group FMR."""
    groups: dict[str, dict[str, Any]] = {}
    for name, c in within.items():
        entry: dict[str, Any] = {"faces": c.faces, "fmr": rate(c.false[index], c.pairs)}
        if c.genuine:
            entry["fnmr"] = {**rate(c.missed[index], c.genuine), "genuine_pairs": c.genuine}
        groups[name] = entry
    est = {k: v["fmr"]["rate"] for k, v in groups.items() if v["fmr"]["estimable"]}
    ratio = None
    if len(est) >= 2:
        hi, lo = max(est, key=est.get), min(est, key=est.get)  # type: ignore[arg-type]
        ratio = {"value": round(est[hi] / est[lo], 3), "highest": hi, "lowest": lo}
    return {"threshold": threshold, "within": groups, "across": rate(across.false[index], across.pairs),
            "max_min_ratio": ratio, "not_estimable": sorted(k for k, v in groups.items() if not v["fmr"]["estimable"])}


def summarise(within: dict[str, Counts], thresholds: Sequence[float], source: str) -> dict:
    """A compact summary for the model manifest: the threshold grid and each group's pair and false-match counts."""
    return {"thresholds": [round(float(t), 4) for t in thresholds], "source": source,
            "groups": {k: {"faces": c.faces, "pairs": c.pairs, "false": list(c.false)} for k, c in within.items()}}


def plot(path, within: dict[str, Counts], thresholds: Sequence[float], marks: Sequence[float]) -> None:
    """FMR against threshold per group (log scale; points without a false match left out) and, for groups with
    genuine pairs, the DET curve (FNMR against FMR); vertical lines at the reported thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_genuine = [k for k, c in within.items() if c.genuine]
    fig, axes = plt.subplots(1, 2 if with_genuine else 1, figsize=(11 if with_genuine else 6.5, 4.8), squeeze=False)
    ax = axes[0][0]
    ts = np.asarray(thresholds)
    drawn = 0
    for name, c in sorted(within.items()):
        f = np.asarray(c.false, np.float64) / max(c.pairs, 1)
        keep = f > 0
        if keep.any():
            ax.plot(ts[keep], f[keep], label=f"{name} ({c.pairs:,} pairs)")
            drawn += 1
    for m in marks:
        ax.axvline(m, color="k", ls="--", lw=0.8)
    if drawn:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no false match at any threshold", transform=ax.transAxes, ha="center")
    ax.set_xlabel("threshold (cosine)")
    ax.set_ylabel("within-group false match rate")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    if with_genuine:
        ax2 = axes[0][1]
        for name in with_genuine:
            c = within[name]
            fmr = np.asarray(c.false, np.float64) / max(c.pairs, 1)
            fnmr = np.asarray(c.missed, np.float64) / c.genuine
            keep = fmr > 0
            ax2.plot(fmr[keep], fnmr[keep], label=name)
        if any((np.asarray(within[n].false) > 0).any() for n in with_genuine):
            ax2.set_xscale("log")
        ax2.set_xlabel("FMR")
        ax2.set_ylabel("FNMR")
        ax2.set_title("DET per group")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
