"""Thresholds from real impostor tails: an empirical survival curve plus a generalised Pareto (GPD) fit of the top.

One impostor comparison scores a cosine similarity X. Its false match rate at a threshold T is FMR(T) = P(X ≥ T).
Where real data has enough comparisons above T, FMR comes from them (the empirical curve); above the tail
threshold u (chosen so that at least `min_exceedances` comparisons lie above it) the excess X − u is modelled by a
GPD, fitted by probability-weighted moments (Hosking & Wallis 1987), whose shape ξ < 0 gives the bounded tail a
cosine has. A search against N templates is non-mated-positive when any comparison reaches T, so
FPIR ≈ 1 − (1 − FMR)^N. The confidence bound comes from a bootstrap over *probes* (a probe's comparisons are not
independent: some faces resemble many), and `threshold_for` returns the threshold whose bootstrap upper quantile of
FMR meets the target — the threshold is refused only when that bound needs a cosine above 1.

Pure numpy: the fit runs on the operator's machine (tools, `edge eval openset`); seal and the device only read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import DataError

if TYPE_CHECKING:
    from edge.vision.fusion import Fusion

#: Points kept of the empirical survival curve (log-spaced in FMR between 1 and the tail threshold's rate).
CURVE_POINTS = 64


def gpd_pwm(excess: np.ndarray) -> tuple[float, float]:
    """(sigma, xi) of a generalised Pareto fit to excesses ≥ 0 by probability-weighted moments."""
    y = np.sort(np.asarray(excess, np.float64))
    n = len(y)
    if n < 10:
        raise DataError(f"{n} tail comparisons are too few for an extreme-value fit (need ≥ 10)")
    p = (np.arange(1, n + 1) - 0.35) / n
    a0, a1 = float(y.mean()), float(((1 - p) * y).mean())
    denom = a0 - 2 * a1
    if denom <= 0:
        raise DataError("the impostor tail is too heavy for a probability-weighted-moment fit")
    k = a0 / denom - 2.0
    sigma = 2.0 * a0 * a1 / denom
    return sigma, -k


def gpd_survival(excess: np.ndarray | float, sigma: float, xi: float) -> np.ndarray:
    """P(excess > y) of a GPD; 0 beyond the endpoint of a bounded (ξ < 0) tail."""
    y = np.maximum(np.asarray(excess, np.float64), 0.0)
    if abs(xi) < 1e-9:
        return np.exp(-y / sigma)
    base = 1.0 + xi * y / sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, np.power(np.maximum(base, 1e-300), -1.0 / xi), 0.0)


def gpd_quantile(survival: float, sigma: float, xi: float) -> float:
    """The excess y with P(excess > y) = survival (inf when a ξ ≥ 0 tail never reaches it: impossible here)."""
    if abs(xi) < 1e-9:
        return -sigma * math.log(survival)
    return float(sigma / xi * (survival ** -xi - 1.0))


@dataclass(frozen=True)
class TailModel:
    """A fitted impostor tail. u: tail threshold (cosine); zeta: FMR at u; sigma, xi: GPD of X − u;
    curve: (cosine, FMR) points of the empirical survival below u; n: comparisons; n_probes: probes (bootstrap
    units); replicates: (B, 3) bootstrap (zeta, sigma, xi); confidence: the bound's quantile; source: provenance;
    max_score: the largest score there is (1 for a cosine; a fused score's maximum, `edge.vision.fusion`)."""

    u: float
    zeta: float
    sigma: float
    xi: float
    curve: tuple[tuple[float, float], ...]
    n: int
    n_probes: int
    replicates: tuple[tuple[float, float, float], ...]
    confidence: float = 0.95
    source: str = ""
    max_score: float = 1.0

    def fmr(self, t: float) -> float:
        """Modelled FMR of one comparison at cosine threshold t (point estimate)."""
        if t <= self.u:
            xs, ys = zip(*self.curve, strict=True)
            return float(np.exp(np.interp(t, xs, np.log(ys))))
        return float(self.zeta * gpd_survival(t - self.u, self.sigma, self.xi))

    def fmr_upper(self, t: float) -> float:
        """The `confidence` bootstrap quantile of FMR(t) (equals `fmr` below the tail threshold)."""
        if t <= self.u or not self.replicates:
            return self.fmr(t)
        reps = [z * float(gpd_survival(t - self.u, s, x)) for z, s, x in self.replicates]
        return float(np.quantile(reps, self.confidence))

    def fpir(self, t: float, n_templates: int, upper: bool = False) -> float:
        """Predicted FPIR of a search against `n_templates` templates at threshold t."""
        f = self.fmr_upper(t) if upper else self.fmr(t)
        return float(-math.expm1(n_templates * math.log1p(-min(f, 1 - 1e-16))))

    def _threshold(self, fmr: float, zeta: float, sigma: float, xi: float) -> float:
        if fmr >= zeta:
            xs, ys = zip(*self.curve, strict=True)
            return float(np.interp(math.log(fmr), np.log(ys)[::-1], np.array(xs)[::-1]))
        return self.u + gpd_quantile(fmr / zeta, sigma, xi)

    def thresholds(self, n_templates: int, fpir: float) -> tuple[float, float, float]:
        """(point threshold, its `confidence` bound, per-comparison FMR) for `n_templates` at `fpir`, whether or not
        the bound is reachable (it may exceed `max_score`: then nothing can match)."""
        if not 0 < fpir < 1 or n_templates < 1:
            raise DataError(f"need 0 < fpir < 1 and a positive watchlist size (got fpir={fpir}, n={n_templates})")
        fmr = -math.expm1(math.log1p(-fpir) / n_templates)
        point = self._threshold(fmr, self.zeta, self.sigma, self.xi)
        reps = [self._threshold(fmr, z, s, x) for z, s, x in self.replicates] or [point]
        return point, max(point, float(np.quantile(reps, self.confidence))), fmr

    def threshold_for(self, n_templates: int, fpir: float) -> dict[str, Any]:
        """The threshold at which `n_templates` templates give FPIR ≤ `fpir` with the bound's confidence.

        Raises DataError when even the bound needs a score above `max_score` (the target is out of reach)."""
        point, bound, fmr = self.thresholds(n_templates, fpir)
        if not bound <= self.max_score:
            endpoint = f"ends at {self.u - self.sigma / self.xi:.4f}" if self.xi < 0 else "is unbounded"
            raise DataError(
                f"this embedder cannot reach FPIR {fpir} with {n_templates} templates: its impostor tail "
                f"({self.n:,} real comparisons) needs a threshold of {bound:.4f} > {self.max_score:g} "
                f"at {self.confidence:.0%} confidence (per-comparison FMR {fmr:.2e}; the modelled tail {endpoint}). "
                "Shrink the watchlist, accept a higher --fpir, or set --threshold and report the FPIR it implies")
        return {"match": round(bound, 5), "point": round(point, 5), "fpir_target": fpir,
                "calibrated_for_n": n_templates, "fmr_per_comparison": float(f"{fmr:.3e}"),
                "predicted_fpir": round(self.fpir(bound, n_templates), 6)}

    def to_json(self) -> dict[str, Any]:
        return {"model": "empirical + generalised Pareto (PWM) above u, probe bootstrap", "u": round(self.u, 6),
                "zeta": float(f"{self.zeta:.6e}"), "sigma": round(self.sigma, 7), "xi": round(self.xi, 5),
                "n": self.n, "n_probes": self.n_probes, "confidence": self.confidence,
                "curve": [[round(x, 6), float(f"{y:.6e}")] for x, y in self.curve],
                "replicates": [[float(f"{z:.6e}"), round(s, 7), round(x, 5)] for z, s, x in self.replicates],
                "source": self.source, "max_score": self.max_score}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TailModel":
        """Read a model written by `to_json` (e.g. a manifest entry's "impostor_tail")."""
        try:
            return cls(float(d["u"]), float(d["zeta"]), float(d["sigma"]), float(d["xi"]),
                       tuple((float(x), float(y)) for x, y in d["curve"]), int(d["n"]), int(d["n_probes"]),
                       tuple((float(z), float(s), float(x)) for z, s, x in d.get("replicates", ())),
                       float(d.get("confidence", 0.95)), str(d.get("source", "")), float(d.get("max_score", 1.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"impostor tail model is malformed ({err!r})") from None


def fit_tail(sims_per_probe: list[np.ndarray], min_exceedances: int = 2000, tail_rate: float | None = None,
             n_boot: int = 200, confidence: float = 0.95, seed: int = 0, source: str = "") -> TailModel:
    """Fit a `TailModel` from real impostor cosines grouped by probe (one array of comparisons per probe).

    The tail threshold u is the cosine exceeded by `min_exceedances` comparisons (or a fraction `tail_rate`)."""
    groups = [np.asarray(g, np.float64).ravel() for g in sims_per_probe if len(g)]
    allv = np.concatenate(groups) if groups else np.empty(0)
    n = len(allv)
    if n < 10 * min_exceedances:
        raise DataError(f"{n:,} impostor comparisons are too few for a tail fit with {min_exceedances} exceedances")
    k = int(tail_rate * n) if tail_rate else min_exceedances
    desc = np.sort(allv)[::-1]
    u = float(desc[k])
    zeta = float((allv > u).mean())
    sigma, xi = gpd_pwm(desc[:k] - u)
    # Empirical survival below u on a log grid in FMR.
    asc = desc[::-1]
    fmrs = np.geomspace(0.5, zeta, CURVE_POINTS)
    xs = [float(np.quantile(asc, 1 - f)) for f in fmrs]
    curve = tuple((x, float(f)) for x, f in zip(xs, fmrs, strict=True))
    rng = np.random.default_rng(seed)
    exc = [g[g > u] - u for g in groups]
    sizes = np.array([len(g) for g in groups])
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        e = np.concatenate([exc[i] for i in pick])
        if len(e) < 10:
            continue
        try:
            s, x = gpd_pwm(e)
        except DataError:
            continue
        reps.append((len(e) / float(sizes[pick].sum()), s, x))
    return TailModel(u, zeta, sigma, xi, curve, n, len(groups), tuple(reps), confidence, source)


def embedder_tail(info: dict[str, Any]) -> TailModel:
    """The impostor tail stored in an embedder's manifest entry ("impostor_tail"), or a DataError saying what to do."""
    stats = info.get("impostor_tail")
    if not stats:
        raise DataError(f"no impostor tail for embedder {info.get('family', '?')} in the model manifest: "
                        "pass --impostors FILE or --threshold")
    return TailModel.from_json(stats)


def scoring_tail(embedder_info: dict[str, Any], fusion: "Fusion | None" = None) -> TailModel:
    """The tail of the scores a device actually compares with its threshold: the fused score's (from the manifest's
    fusion section, bounded by the fused maximum) when `fusion` (an `edge.vision.fusion.Fusion`) is given, else the
    embedder's cosine tail."""
    if fusion is None:
        return embedder_tail(embedder_info)
    if not fusion.tail:
        raise DataError("the model manifest's fusion section has no impostor tail: "
                        "pass --impostors FILE or --threshold")
    return TailModel.from_json(dict(fusion.tail, max_score=fusion.max_score))
