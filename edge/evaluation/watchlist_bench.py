"""Watchlist at scale (`edge watchlist bench`): build, seal, verify+decrypt+load, RSS, query latency and
recall@1 of Annoy + re-rank against exact search, for a watchlist of real enrollments padded with synthetic
distractors to N subjects.

Synthetic distractors: real face embeddings sit in a narrow cone (two strangers score ~0.8 cosine with dlib's
descriptor). Distractors are drawn as normalise(m + α · L · z): m and L the mean and (shrunk) covariance
factor of the real embeddings, z standard normal, α found by bisection so the mean cosine between distractors and
real faces equals the measured impostor mean; the report gives the achieved impostor mean / std / p99 next to the
measured ones. Queries: the real probes plus synthetic mated probes (a distractor template moved to the genuine
cosine typical of real same-person pairs).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import numpy as np


def distractor_sampler(real: np.ndarray, impostor_mean: float, rng: np.random.Generator) -> tuple[Callable[[int], np.ndarray], float]:
    """A function drawing n unit vectors whose cosine to real faces averages `impostor_mean`; returns (fn, α)."""
    m = real.mean(axis=0)
    centred = real - m
    cov = centred.T @ centred / max(len(real) - 1, 1)
    shrink = 0.2
    cov = (1 - shrink) * cov + shrink * np.eye(real.shape[1]) * np.trace(cov) / real.shape[1]
    factor = np.linalg.cholesky(cov + 1e-9 * np.eye(real.shape[1]))

    def draw(n: int, alpha: float, seed_rng: np.random.Generator) -> np.ndarray:
        x = m + alpha * (seed_rng.standard_normal((n, real.shape[1])) @ factor.T)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    lo, hi = 0.05, 20.0
    for _ in range(40):
        alpha = (lo + hi) / 2
        sample = draw(2000, alpha, np.random.default_rng(0))
        if float((sample @ real.T).mean()) > impostor_mean:
            lo = alpha
        else:
            hi = alpha
    alpha = (lo + hi) / 2
    return (lambda n: draw(n, alpha, rng)), alpha


def mated_probes(templates: np.ndarray, genuine_cos: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine `genuine_cos` from each template (a random direction orthogonal to it)."""
    noise = rng.standard_normal(templates.shape).astype(np.float32)
    noise -= (noise * templates).sum(axis=1, keepdims=True) * templates
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    s = np.sqrt(1 - genuine_cos ** 2)
    return (genuine_cos * templates + s * noise).astype(np.float32)


def rss_mb() -> float:
    """Current resident set size of this process in MiB (from /proc/self/status)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile_ms(samples: list[float]) -> dict:
    """p50 and p99 of durations given in seconds, in milliseconds."""
    arr = np.array(samples) * 1000
    return {"p50": round(float(np.percentile(arr, 50)), 4), "p99": round(float(np.percentile(arr, 99)), 4)}


def exact_top1(vectors: np.ndarray, item_subject: np.ndarray, queries: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Subject index of the exact best template for each query (brute force, chunked)."""
    out = np.empty(len(queries), np.int64)
    for i in range(0, len(queries), chunk):
        sims = queries[i:i + chunk] @ vectors.T
        out[i:i + chunk] = item_subject[np.argmax(sims, axis=1)]
    return out


def time_queries(watchlist, queries: np.ndarray, k: int = 5,
                 queries2: np.ndarray | None = None) -> tuple[list[float], list[str]]:
    """Per-query wall times (seconds) and top-1 subject ids (queries2: the fused second embeddings, if any)."""
    times, tops = [], []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        cands = watchlist.search(q, k, embedding2=None if queries2 is None else queries2[i])
        times.append(time.perf_counter() - t0)
        tops.append(cands[0].subject_id if cands else "")
    return times, tops


def summarise_similarities(x: np.ndarray) -> dict:
    """mean / std / p99 / max of a similarity sample."""
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4),
            "p99": round(float(np.percentile(x, 99)), 4), "max": round(float(x.max()), 4)}


def median(xs: list[float]) -> float:
    return statistics.median(xs)
