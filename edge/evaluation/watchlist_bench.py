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
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np


def distractor_sampler(real: np.ndarray, impostor_mean: float,
                       rng: np.random.Generator) -> tuple[Callable[[int], np.ndarray], float]:
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


def run_watchlist_bench(analyzer: Any, gallery: Path, root: Path, probes: Path, size: int, n_queries: int,
                        trees: list[int], search_k: list[int], seed: int = 0, stage1_dim: int | None = None,
                        shortlist: int = 128, save_bundle: Path | None = None,
                        progress: Callable[[str], Callable[[Iterable], Iterable]] = lambda what: lambda it: it,
                        log: Callable[[str], None] = lambda line: None) -> dict:
    """The `edge watchlist bench` report: real enrollments of `gallery` padded with synthetic distractors to `size`
    subjects, built with each of `trees` (Annoy trees), sealed, verified, decrypted, loaded (also in a fresh
    process, for its RSS in MiB) and queried at each Annoy `search_k` with `n_queries` probes (the real mated ones
    first), against exact search. stage1_dim: the shortlist index's PCA dimensions (None: the build's default,
    STAGE1_DIM). save_bundle: also keep each sealed bundle and its keys there. log: one line per
    run (the progress of a long job)."""
    from edge import keys
    from edge.errors import DataError
    from edge.evaluation.calibration import scoring_tail
    from edge.evaluation.openset import read_probes
    from edge.imageio import read_image
    from edge.watchlist.operator.build import STAGE1_DIM, enroll, make_payload, read_gallery
    from edge.watchlist.device.unseal import open_bundle
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.device.matcher import Watchlist
    from edge.watchlist.payload import pack

    rng = np.random.default_rng(seed)
    fusion = analyzer.fusion
    enrollment = enroll(read_gallery(gallery, root), analyzer, progress=progress("enrolling"))
    real = np.stack(enrollment.vectors)
    real_subject = np.array(enrollment.item_subject)
    mated, mated_subject, nonmated, mated2, nonmated2 = [], [], [], [], []
    ids = {s["id"]: i for i, s in enumerate(enrollment.subjects)}
    for probe in progress("probes")(read_probes(probes, root)):
        face = analyzer.best_face(read_image(probe.path))
        if face is None:
            continue
        if probe.in_watchlist and probe.identity in ids:
            mated.append(face.embedding)
            mated2.append(face.embedding2)
            mated_subject.append(ids[probe.identity])
        elif not probe.in_watchlist:
            nonmated.append(face.embedding)
            nonmated2.append(face.embedding2)
    mated_a, nonmated_a = np.array(mated), np.array(nonmated)
    measured_imp = (nonmated_a @ real.T).ravel()
    genuine = np.array([float((real[real_subject == s] @ v).max())
                        for v, s in zip(mated_a, mated_subject, strict=True)])
    draw, alpha = distractor_sampler(np.concatenate([real, mated_a, nonmated_a]), float(measured_imp.mean()), rng)
    n_distractors = size - len(enrollment.subjects)
    t0 = time.perf_counter()
    distractors = draw(n_distractors)
    synth_imp = (nonmated_a @ distractors[:20000].T).ravel()
    vectors = np.concatenate([real, distractors]).astype(np.float32)
    item_subject = np.concatenate([real_subject, np.arange(n_distractors) + len(enrollment.subjects)])
    subjects = enrollment.subjects + [{"id": f"synthetic-{i:06d}", "label": "", "category": "distractor",
                                       "expires": None} for i in range(n_distractors)]
    report: dict[str, Any] = {
        "n_subjects": size, "n_real_subjects": len(enrollment.subjects), "n_templates": len(vectors),
        "distractors": {"method": "normalise(m + alpha*L*z), alpha fitted to the measured impostor mean",
                        "alpha": round(alpha, 4), "seconds": round(time.perf_counter() - t0, 2)},
        "impostor_cosine_measured": summarise_similarities(measured_imp),
        "impostor_cosine_synthetic": summarise_similarities(synth_imp),
        "genuine_cosine_measured": summarise_similarities(genuine), "fused": fusion is not None, "runs": [],
    }
    try:
        report["threshold"] = scoring_tail(analyzer.embedder_info.info, fusion).threshold_for(size, 0.003)
    except DataError as err:
        report["threshold"] = {"refused": str(err)}
    # Queries: the real mated probes, then synthetic mated probes of random distractors at the median genuine cosine.
    n_synth = max(0, n_queries - len(mated_a))
    picks = rng.choice(n_distractors, n_synth, replace=False) + len(real)
    queries = np.concatenate([mated_a, mated_probes(vectors[picks], float(np.median(genuine)), rng)])
    expected = np.concatenate([np.array(mated_subject), item_subject[picks]])
    vectors2 = queries2 = None
    exact_rows, exact_queries = vectors, queries
    if fusion is not None:  # the second embedding's distractors and probes, drawn the same way from its own data
        real2, m2, n2 = np.stack(enrollment.vectors2), np.array(mated2), np.array(nonmated2)
        imp2 = (n2 @ real2.T).ravel()
        gen2 = np.array([float((real2[real_subject == s] @ v).max()) for v, s in zip(m2, mated_subject, strict=True)])
        draw2, _ = distractor_sampler(np.concatenate([real2, m2, n2]), float(imp2.mean()), rng)
        vectors2 = np.concatenate([real2, draw2(n_distractors)]).astype(np.float32)
        queries2 = np.concatenate([m2, mated_probes(vectors2[picks], float(np.median(gen2)), rng)])
        exact_rows = np.concatenate([vectors, vectors2], axis=1)
        exact_queries = np.concatenate([fusion.scale1 * queries, fusion.scale2 * queries2], axis=1)
    exact = exact_top1(exact_rows, item_subject, exact_queries)
    operator, device = keys.generate_operator_key(), keys.generate_device_key()
    for n_trees in trees:
        t0 = time.perf_counter()
        payload = make_payload(vectors, item_subject.tolist(), subjects, n_trees,
                               stage1_dim=STAGE1_DIM if stage1_dim is None else stage1_dim,
                               vectors2=vectors2, fusion=analyzer.fusion_meta)
        build_s = time.perf_counter() - t0
        index_bytes = len(payload.index) + len(payload.templates)
        plaintext = pack(payload)
        del payload
        t0 = time.perf_counter()
        data = seal(plaintext, watchlist_id="bench", version=1, device_id="bench-device",
                    device_public=device.public_key(), signing_key=operator, embedder_id="bench",
                    embedder_sha256="0" * 64, dim=int(vectors.shape[1]), n_items=len(vectors), n_subjects=size,
                    thresholds={"match": 0.95},
                    expires=datetime.now(timezone.utc) + timedelta(days=1))
        seal_s = time.perf_counter() - t0
        del plaintext
        if save_bundle:
            save_bundle.mkdir(parents=True, exist_ok=True)
            (save_bundle / f"bench-{n_trees}.bundle").write_bytes(data)
            keys.save_private_key(save_bundle / "device.key", device, force=True)
            keys.save_public_key(save_bundle / "operator.pub", operator.public_key())
        t0 = time.perf_counter()
        opened = open_bundle(data, device, {keys.key_id(operator.public_key()): operator.public_key()})
        verify_s = time.perf_counter() - t0
        watchlist = Watchlist.from_payload(opened.payload, manifest=opened.manifest)
        load_s = time.perf_counter() - t0
        del opened
        rss, rss_q = fresh_process_rss(data, device, operator, queries, shortlist,
                                       search_k[-1] if search_k[-1] > 0 else -1, queries2)
        watchlist.shortlist = shortlist
        for effort in search_k:
            watchlist.search_k = effort if effort > 0 else -1
            times, tops = time_queries(watchlist, queries, queries2=queries2)
            top_index = np.array([int(t.split("-")[1]) + len(enrollment.subjects) if t.startswith("synthetic-")
                                  else ids[t] for t in tops])
            run: dict[str, Any] = {
                   "n_trees": n_trees, "search_k": watchlist.search_k, "build_seconds": round(build_s, 2),
                   "seal_seconds": round(seal_s, 2), "bundle_bytes": len(data), "index_bytes_in_memfd": index_bytes,
                   "verify_decrypt_seconds": round(verify_s, 2), "verify_decrypt_load_seconds": round(load_s, 2),
                   "rss_mb_fresh_process_after_load": rss, "rss_mb_after_queries": rss_q,
                   "query_ms": percentile_ms(times),
                   "n_queries": len(queries), "recall_at_1_vs_exact": round(float((top_index == exact).mean()), 5),
                   "rank1_vs_truth": round(float((top_index == expected).mean()), 5)}
            report["runs"].append(run)
            log(f"trees {n_trees} search_k {watchlist.search_k}: build {run['build_seconds']} s, bundle "
                  f"{len(data) / 2**20:.1f} MiB, verify+decrypt+load {run['verify_decrypt_load_seconds']} s, "
                  f"RSS {rss} MiB ({rss_q} after the queries),"
                  f" query p50 {run['query_ms']['p50']} ms p99 {run['query_ms']['p99']} ms, recall@1 vs exact "
                  f"{run['recall_at_1_vs_exact']}")
        del watchlist, data
    return report


def fresh_process_rss(data: bytes, device: Any, operator: Any, queries: np.ndarray, shortlist: int, search_k: int,
                      queries2: np.ndarray | None = None) -> tuple[float, float]:
    """RSS (MiB) of a new Python process after it verified, decrypted and loaded the bundle — the device's view —
    and after it then ran the queries (the index pages they touch count too). The child is this module's `main`."""
    from edge import keys

    with tempfile.TemporaryDirectory() as tmp:
        bundle, dkey, okey = Path(tmp) / "b.bundle", Path(tmp) / "device.key", Path(tmp) / "operator.pub"
        bundle.write_bytes(data)
        np.save(Path(tmp) / "q.npy", queries.astype(np.float32))
        np.save(Path(tmp) / "q2.npy", (queries2 if queries2 is not None else queries[:, :0]).astype(np.float32))
        keys.save_private_key(dkey, device)
        keys.save_public_key(okey, operator.public_key())
        out = subprocess.run([sys.executable, "-m", "edge.evaluation.watchlist_bench", str(bundle), str(dkey),
                              str(okey), str(Path(tmp) / "q.npy"), str(Path(tmp) / "q2.npy"), str(shortlist),
                              str(search_k)], capture_output=True, text=True, check=True)
        lines = out.stdout.strip().splitlines()
        return float(lines[-2]), float(lines[-1])


def main(argv: list[str]) -> None:
    """The fresh process of `fresh_process_rss`: BUNDLE DEVICE_KEY OPERATOR_PUB QUERIES.npy QUERIES2.npy SHORTLIST
    SEARCH_K → prints the RSS in MiB after loading, then after querying."""
    import gc

    from edge import keys
    from edge.watchlist.device.unseal import open_bundle
    from edge.watchlist.device.matcher import Watchlist

    bundle, dkey, okey, q, q2, shortlist, search_k = argv
    device, operator = keys.load_private_key(dkey, "device"), keys.load_public_key(okey, "operator")
    opened = open_bundle(Path(bundle).read_bytes(), device, {keys.key_id(operator): operator})
    watchlist = Watchlist.from_payload(opened.payload, manifest=opened.manifest)
    del opened
    gc.collect()
    print(round(rss_mb(), 1), flush=True)
    watchlist.shortlist, watchlist.search_k = int(shortlist), int(search_k)
    second = np.load(q2)
    for i, query in enumerate(np.load(q)):
        watchlist.search(query, embedding2=second[i] if second.shape[1] else None)
    print(round(rss_mb(), 1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
