"""Error rates by demographic group, as a model's shipped summary holds them: a rate with its 95 % interval, the
per-group rates at any threshold from the summary's counts, and the warning when groups differ too much. Pure
functions shared by `edge watchlist seal`, the review console and `edge eval demographics`
(`edge.evaluation.demographics` counts the pairs)."""

from __future__ import annotations

import math
from typing import Any

#: Two-sided 95 % normal quantile.
Z95 = 1.959964


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval (low, high) of a rate of k successes in n trials (n > 0)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    """{rate, low, high, count, pairs, estimable[, note]}: a rate with its 95 % interval; k = 0 is not an estimate."""
    if n <= 0:
        return {"rate": None, "low": None, "high": None, "count": 0, "pairs": 0, "estimable": False,
                "note": "no pairs in this group"}
    low, high = wilson(k, n)
    out: dict[str, Any] = {"rate": float(f"{k / n:.4g}") if k else None, "low": float(f"{low:.4g}"),
                           "high": float(f"{high:.4g}"), "count": k, "pairs": n, "estimable": k > 0}
    if not k:
        out["note"] = f"no false match in {n:,} pairs: too few to estimate at this threshold (95 % bound {high:.2g})"
    return out


def fmr_at(summary: dict, threshold: float) -> dict[str, dict]:
    """Per group {fmr, low, high, pairs, estimable} at `threshold` from a stored summary (`summarise`): the counts
    of the grid threshold at or just below it (conservative: a lower threshold has at least as many false matches;
    the summary's grid is fine enough, 0.005, for this to matter little)."""
    grid = summary["thresholds"]
    below = [k for k, t in enumerate(grid) if t <= threshold + 1e-9]
    i = below[-1] if below else 0  # the grid point at or just below the threshold: never fewer false matches
    out = {}
    for name, g in summary["groups"].items():
        out[name] = rate(int(g["false"][i]), int(g["pairs"])) | {"grid_threshold": grid[i]}
    return out


def ratio_warning(rates: dict[str, dict], bound: float) -> str | None:
    """A one-line warning when the highest estimable group FMR exceeds the lowest by more than `bound` times."""
    est = {k: v["rate"] for k, v in rates.items() if v.get("estimable")}
    if len(est) < 2:
        return None
    hi, lo = max(est, key=est.get), min(est, key=est.get)  # type: ignore[arg-type]
    r = est[hi] / est[lo]
    if r <= bound:
        return None
    return (f"false-match rates differ {r:.1f}× between groups at this threshold (highest {hi} {est[hi]:.2g}, lowest "
            f"{lo} {est[lo]:.2g}; bound {bound:g}×): consider a higher threshold or a smaller list before deploying")
