"""Fuse two `tools/devset.py` caches (dlib + a second embedder, same photos) into one whose dot products are the
fused score, so `tools/devset_eval.py` measures fusion with its usual commands (nothing here ships).

fused(p, g) = w·s1 + (1 − w)·(μ1 + σ1 (s2 − μ2)/σ2), s1, s2 the two cosines and μ, σ their impostor mean and std on
the *fit* half: a z-score fusion expressed on dlib's cosine scale. It equals [√a e1, √b e2, √c]·[√a g1, √b g2, √c]
with a = w, b = (1 − w) σ1/σ2, c = (1 − w)(μ1 − σ1 μ2/σ2). The second embedding is first projected to `--pca` dims
(fitted on the fit half) — the compact template a watchlist would carry.

    python tools/fuse_cache.py --primary /work/cache/dlib5_flip.npz --secondary /work/cache/faceres_dlib5.npz \\
        --pca 128 --weight 0.85 --out /work/cache/fused.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devset_eval as de  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--primary", type=Path, required=True)
    ap.add_argument("--secondary", type=Path, required=True)
    ap.add_argument("--pca", type=int, default=128)
    ap.add_argument("--weight", type=float, default=0.85)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--projection-out", type=Path, help="also write the PCA (mean, components) as .npz")
    args = ap.parse_args(argv)
    c1, c2 = dict(np.load(args.primary)), dict(np.load(args.secondary))
    assert (c1["path"] == c2["path"]).all()
    fit = np.array([de.half_of(str(i) or str(p)) == "fit"
                    for i, p in zip(c2["identity"], c2["path"], strict=True)]) & (c2["chosen"] >= 0)
    x = c2["emb"][fit].astype(np.float64)
    mean = x.mean(axis=0)
    w, u = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    comp = u[:, np.argsort(w)[::-1][:args.pca]].T
    p2 = (c2["emb"] - mean) @ comp.T
    p2 /= np.maximum(np.linalg.norm(p2, axis=1, keepdims=True), 1e-12)
    c2p = dict(c2, emb=p2.astype(np.float32))
    i1 = np.concatenate(de.impostors_by_probe(c1, "fit", 3000))
    i2 = np.concatenate(de.impostors_by_probe(c2p, "fit", 3000))
    mu1, sd1, mu2, sd2 = float(i1.mean()), float(i1.std()), float(i2.mean()), float(i2.std())
    a, b = args.weight, (1 - args.weight) * sd1 / sd2
    const = (1 - args.weight) * (mu1 - sd1 * mu2 / sd2)
    if const < 0:
        raise SystemExit(f"offset {const} < 0: this trick needs a non-negative offset")
    n = len(c1["emb"])
    fused = np.concatenate([np.sqrt(a) * c1["emb"], np.sqrt(b) * p2, np.full((n, 1), np.sqrt(const))], axis=1)
    np.savez(args.out, **dict(c1, emb=fused.astype(np.float32)))
    info = {"weight": args.weight, "pca": args.pca, "norm": [mu1, sd1, mu2, sd2], "scale1": a, "scale2": b,
            "offset": const, "pca_variance_kept": float(w[np.argsort(w)[::-1][:args.pca]].sum() / w.sum())}
    if args.projection_out:
        np.savez(args.projection_out, mean=mean.astype(np.float32), components=comp.astype(np.float32))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
