"""Lever-by-lever open-set measurement on the dev-set caches of `tools/devset.py` (nothing here ships).

The split (the largest the dev set allows): identities with ≥ 2 photos, in sorted order, alternate between
*listed* (first photo enrolled, the rest are mated probes) and *unlisted* (every photo a non-mated probe);
identities with one photo are enrolled as distractors; UTKFace chips (no identities) are non-mated probes only.
`--half fit|check` restricts everything to one half of the identities (split by a hash of the id), so the
impostor tail can be fitted on one half and checked on the other.

    python tools/devset_eval.py openset --cache /work/cache/blaze.npz [--gate] [--fuse /work/cache/faceres.npz]
    python tools/devset_eval.py fit-tail --cache /work/cache/blaze.npz --half fit --out /work/cache/tail.json
    python tools/devset_eval.py check-tail --cache /work/cache/blaze.npz --half check --tail /work/cache/tail.json
    python tools/devset_eval.py gate --cache /work/cache/blaze.npz      # rejection counts per reason
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.evaluation.calibration import TailModel, fit_tail
from edge.evaluation.openset import threshold_at_fpir
from edge.vision.quality import QualityThresholds


def half_of(identity: str) -> str:
    return "fit" if hashlib.sha1(identity.encode()).digest()[0] % 2 == 0 else "check"


def gate_reasons(c, limits: QualityThresholds, old: bool = False) -> np.ndarray:
    """Per photo: '' (passes), or the gate's reason, from the cached figures (same order as `assess`).
    old: the former gate instead (Laplacian variance ≥ 40 of the upscaled chip, eye ≥ 24 px, yaw 0.45, roll 35,
    any second face rejects)."""
    if old:
        limits = QualityThresholds(24.0, 40.0, 0.45, 35.0, 0.5)
        c = dict(c, sharp=c["sharp_old"])
    out = np.full(len(c["path"]), "", dtype=object)
    chosen = c["chosen"]
    out[chosen == -1] = "no face"
    out[chosen <= -2] = "several faces"
    if old:  # the former gate refused every photo with a second face
        out[(c["ndet"] > 1) & (out == "")] = "several faces"
    ok = chosen >= 0
    for mask, why in ((c["eye"] < limits.min_eye_distance, "face too small"),
                      (c["score"] < limits.min_score, "low detection score"),
                      ((np.abs(c["yaw"]) > limits.max_yaw) | (np.abs(c["roll"]) > limits.max_roll), "extreme pose"),
                      (c["sharp"] < limits.min_sharpness, "too blurry")):
        sel = ok & (out == "") & mask
        out[sel] = why
    return out


def split(c, half: str | None = None, sets: set[str] | None = None) -> dict[str, list[int]]:
    """Indices of gallery photos, mated probes and non-mated probes (+ gallery identity per gallery index)."""
    by_id: dict[str, list[int]] = defaultdict(list)
    utk = []
    for i, (ident, s) in enumerate(zip(c["identity"], c["set"], strict=True)):
        if half and half_of(str(ident) or str(c["path"][i])) != half:
            continue
        if sets and s not in sets:
            continue
        if s == "utkface_crop_part1":
            utk.append(i)
        elif ident:
            by_id[str(ident)].append(i)
    gallery, listed, mated, nonmated = [], [], [], list(utk)
    multi = sorted(k for k, v in by_id.items() if len(v) >= 2)
    for n, ident in enumerate(multi):
        idx = sorted(by_id[ident], key=lambda i: str(c["path"][i]))
        if n % 2 == 0:
            gallery.append(idx[0])
            listed.append(ident)
            mated.extend(idx[1:])
        else:
            nonmated.extend(idx)
    gallery.extend(v[0] for k, v in sorted(by_id.items()) if len(v) == 1)
    return {"gallery": gallery, "mated": mated, "nonmated": nonmated, "listed": listed}


def scores(c, fuse, g: np.ndarray, p: np.ndarray, weight: float, shortlist: int) -> np.ndarray:
    """(P, G) similarity: the primary cosine, or on each probe's top-`shortlist` a z-score fusion with `fuse`."""
    s = c["emb"][p] @ c["emb"][g].T
    if fuse is None:
        return s
    mu1, sd1, mu2, sd2 = fuse["norm"]
    top = np.argpartition(-s, min(shortlist, s.shape[1] - 1), axis=1)[:, :shortlist]
    out = np.full_like(s, -np.inf)
    sec = fuse["emb"]
    for r in range(len(p)):
        cols = top[r]
        s2 = sec[g[cols]] @ sec[p[r]]
        out[r, cols] = weight * (s[r, cols] - mu1) / sd1 + (1 - weight) * (s2 - mu2) / sd2
    return out


def openset(c, args, fuse=None) -> dict:
    sp = split(c, args.half, set(args.sets.split(",")) if args.sets else None)
    reasons = gate_reasons(c, limits(args), args.old_gate) if args.gate else None
    gal = [i for i in sp["gallery"] if c["chosen"][i] >= 0 or (not args.gate and c["chosen"][i] <= -2)]
    if args.gate:
        gal = [i for i in gal if reasons[i] == ""]
    g = np.array(gal)
    gid = c["identity"][g]
    enrolled = set(map(str, gid))
    mated = np.array([i for i in sp["mated"] if c["chosen"][i] != -1])
    nonm = np.array([i for i in sp["nonmated"] if c["chosen"][i] != -1])
    out = {"gallery_intended": len(sp["gallery"]), "gallery_enrolled": len(g), "listed": len(sp["listed"]),
           "listed_enrolled": len(enrolled & set(sp["listed"])), "mated": len(sp["mated"]),
           "nonmated": len(nonm)}
    res = {}
    for name, idx in (("m", mated), ("n", nonm)):
        tops, best = [], []
        for b in range(0, len(idx), 2000):
            s = scores(c, fuse, g, idx[b:b + 2000], args.weight, args.shortlist)
            j = s.argmax(axis=1)
            tops.append(s[np.arange(len(j)), j])
            best.append(gid[j])
        res[name] = (np.concatenate(tops), np.concatenate(best))
    mtop, mbest = res["m"]
    correct = mbest == c["identity"][mated]
    n_missing = len(sp["mated"]) - len(mated)  # mated probes without a face count as misses
    for fpir in (0.003, 0.01):
        t = threshold_at_fpir(res["n"][0], fpir)
        hits = int((correct & (mtop >= t)).sum())
        out[f"fnir@{fpir}"] = round(1 - hits / (len(mated) + n_missing), 4)
        out[f"threshold@{fpir}"] = round(t, 4)
    out["rank1"] = round(int(correct.sum()) / (len(mated) + n_missing), 4)
    return out


def impostors_by_probe(c, half: str, max_probes: int | None = None) -> list[np.ndarray]:
    """Real impostor cosines grouped by probe: every face of the half vs one template per CelebA identity of the
    half, different identities only (UTKFace chips only as probes: they may repeat a person among themselves)."""
    sp = split(c, half)
    ids = defaultdict(list)
    for i in sp["gallery"] + sp["mated"] + sp["nonmated"]:
        if c["chosen"][i] >= 0 and c["set"][i] != "utkface_crop_part1":
            ids[str(c["identity"][i])].append(i)
    templates = np.array([v[0] for _, v in sorted(ids.items())])
    tid = c["identity"][templates]
    probes = [i for i in sp["gallery"] + sp["mated"] + sp["nonmated"] if c["chosen"][i] >= 0]
    probes = probes[:max_probes] if max_probes else probes
    out = []
    te = c["emb"][templates]
    for b in range(0, len(probes), 2000):
        pb = np.array(probes[b:b + 2000])
        s = c["emb"][pb] @ te.T
        same = c["identity"][pb][:, None] == tid[None, :]
        for r in range(len(pb)):
            out.append(s[r][~same[r]].astype(np.float32))
    return out


#: Two photos whose subject-face fingerprints (32×32 high-passed grey, `tools/devset.py facehash`) correlate at
#: least this much are the same picture (re-encoded, re-cropped or resized), whatever their labels say: such a pair
#: is no impostor comparison. Set by looking at the labelled pairs of different identities ranked by this
#: correlation, never by their embedding score: the top one (0.766) is one low-res CelebA photo under two ids, the
#: next ones (0.750, 0.737, …) are different people in similar light and pose. (The data's own preparation had
#: already removed exact duplicates and the photos shared by two CelebA folders.)
NEAR_DUPLICATE = 0.76


#: UTKFace chips of people younger than this (years, the set's own label) count as impostors of every labelled face.
CHILD_AGE = 16


def utk_age(path: str) -> int:
    """The age in a UTKFace chip's file name (`age_gender_race_datetime.jpg.chip.jpg`); 999 when there is none."""
    head = Path(path).name.split("_", 1)[0]
    return int(head) if head.isdigit() else 999


def passes(c, limits: QualityThresholds) -> np.ndarray:
    """Per photo: its subject face passes these quality limits (from the cached figures)."""
    return ((c["chosen"] >= 0) & (c["eye"] >= limits.min_eye_distance) & (c["score"] >= limits.min_score)
            & (np.abs(c["yaw"]) <= limits.max_yaw) & (np.abs(c["roll"]) <= limits.max_roll)
            & (c["sharp"] >= limits.min_sharpness))


def clean_impostor_pairs(c, half: str, facehash: np.ndarray | None,
                         gated: bool = False) -> tuple[list[np.ndarray], dict]:
    """Every impostor pair among the half's faces, grouped by the first face of the pair (the bootstrap unit), and
    what the cleaning rules removed. Rules, none of which looks at a score: (1) pairs of one identity are genuine,
    not impostors; (2) only pairs within one identity namespace count — CelebA (in-the-wild and low-res share its
    ids) or one small set: UTKFace has no identities (one person may appear twice) and the sets were all scraped
    from the web, so a celebrity can be in two of them under unrelated labels (looked at: the top UTKFace × CelebA
    pairs of a first fit were Nick Jonas and Jim Parsons under two labels each) — except UTKFace chips of children
    (under `CHILD_AGE` by the set's own age label) against labelled faces: the celebrity sets hold almost no children,
    so such a pair is almost surely two people, and without them the tail misses what a first held-back check found
    (one-year-olds all scoring ~0.7 against one CelebA baby: infants look alike to the embedder); (3) near-duplicate
    photos (`NEAR_DUPLICATE`) are left out; (4) known aliases are merged (`devset.ALIASES`, already applied to the
    cache's identities). `gated`: only the comparisons a deployed list makes — both faces
    pass the enrollment gate (a template) and at least one passes the device's gate (the probe)."""
    from edge.vision.quality import ENROLLMENT_LIMITS

    sp = split(c, half)
    ok = passes(c, ENROLLMENT_LIMITS) if gated else c["chosen"] != -1
    idx = np.array(sorted(i for i in sp["gallery"] + sp["mated"] + sp["nonmated"] if ok[i]))
    probe_ok = passes(c, QualityThresholds())[idx] if gated else np.ones(len(idx), bool)
    ident = np.array([str(c["identity"][i]) or f"utk:{c['path'][i]}" for i in idx])
    space = np.array([("child" if utk_age(str(c["path"][i])) < CHILD_AGE else "") if not str(c["identity"][i])
                      else "celeba" if str(c["identity"][i]).startswith("celeba:") else str(c["set"][i]) for i in idx])
    labelled = (space != "") & (space != "child")
    emb = c["emb"][idx]
    fh = facehash[idx].astype(np.float32) if facehash is not None else None
    groups, removed = [], {"same_identity": 0, "cross_namespace_or_unlabelled": 0, "near_duplicate": 0}
    n_dup_same = 0
    for b in range(0, len(idx), 1000):
        rows = np.arange(b, min(b + 1000, len(idx)))
        sims = emb[rows] @ emb.T
        upper = np.arange(len(idx))[None, :] > rows[:, None]
        same = ident[rows][:, None] == ident[None, :]
        same_space = (space[rows][:, None] == space[None, :]) & labelled[rows][:, None]
        child_pair = ((space[rows][:, None] == "child") & labelled[None, :]) | (labelled[rows][:, None]
                                                                                & (space[None, :] == "child"))
        other_space = ~(same_space | child_pair)
        dup = (fh[rows] @ fh.T >= NEAR_DUPLICATE) if fh is not None else np.zeros_like(same)
        upper &= probe_ok[rows][:, None] | probe_ok[None, :]
        removed["same_identity"] += int((upper & same).sum())
        removed["cross_namespace_or_unlabelled"] += int((upper & ~same & other_space).sum())
        removed["near_duplicate"] += int((upper & ~same & ~other_space & dup).sum())
        n_dup_same += int((upper & same & dup).sum())
        keep = upper & ~same & ~other_space & ~dup
        for r in range(len(rows)):
            if keep[r].any():
                groups.append(sims[r][keep[r]].astype(np.float32))
    removed["kept"] = int(sum(len(g) for g in groups))
    removed["faces"] = int(len(idx))
    removed["near_duplicates_among_genuine_pairs"] = n_dup_same
    return groups, removed


def limits(args) -> QualityThresholds:
    return QualityThresholds(args.min_eye, args.min_sharpness, args.max_yaw, args.max_roll, 0.5)


def cmd_write_split(args: argparse.Namespace, c: dict) -> None:
    """The same split as CSVs for `edge eval openset` (paths relative to the data root)."""
    sp = split(c, args.half, set(args.sets.split(",")) if args.sets else None)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gallery.csv", "w") as g, open(args.out / "probes.csv", "w") as pr:
        g.write("path,identity\n")
        pr.write("path,identity,in_watchlist\n")
        for i in sp["gallery"]:
            g.write(f"{c['path'][i]},{c['identity'][i]}\n")
        for i, flag in [(i, 1) for i in sp["mated"]] + [(i, 0) for i in sp["nonmated"]]:
            pr.write(f"{c['path'][i]},{c['identity'][i] or 'utk:' + str(c['path'][i])},{flag}\n")
    print(f"{args.out}: {len(sp['gallery'])} gallery photos, {len(sp['mated'])} mated, "
          f"{len(sp['nonmated'])} non-mated")


def cmd_gate(args: argparse.Namespace, c: dict) -> None:
    """Per dev set: how many photos the quality gate (the --min-*/--max-* limits) rejects, and why."""
    r = gate_reasons(c, limits(args))
    for s in np.unique(c["set"]):
        m = c["set"] == s
        cnt = Counter(r[m])
        print(f"{s}: {m.sum()} photos, rejected {m.sum() - cnt['']} ({100 * (1 - cnt[''] / m.sum()):.2f} %): "
              + ", ".join(f"{k} {v}" for k, v in cnt.most_common() if k))


def cmd_openset(args: argparse.Namespace, c: dict) -> None:
    """`openset` on the split (with --fuse, fused with a second cache), printed as one JSON line."""
    fuse = None
    if args.fuse:
        f = dict(np.load(args.fuse))
        imp = np.concatenate(impostors_by_probe(c, "fit", 3000))
        imp2 = np.concatenate(impostors_by_probe(f, "fit", 3000))
        f["norm"] = (float(imp.mean()), float(imp.std()), float(imp2.mean()), float(imp2.std()))
        fuse = f
    print(json.dumps(openset(c, args, fuse)))


def cmd_fit_tail(args: argparse.Namespace, c: dict) -> None:
    """Fit the impostor tail on the half's probe × template impostor comparisons (`impostors_by_probe`); with
    --manifest-entry, also store it in models/manifest.json."""
    groups = impostors_by_probe(c, args.half)
    model = fit_tail(groups, source=f"{args.cache.name}, half {args.half}")
    args.out.write_text(json.dumps(model.to_json()))
    if args.manifest_entry:
        mpath = Path(__file__).resolve().parent.parent / "models" / "manifest.json"
        manifest = json.loads(mpath.read_text())
        entry = model.to_json()
        entry["source"] = (f"dev set (../shared/data; tuned on it): {model.n:,} real impostor comparisons, half "
                           f"'{args.half}' of the identities (hash split), {model.n_probes:,} probes (CelebA "
                           "in-the-wild + low-res, UTKFace chips, the small sets) x one template per CelebA "
                           f"identity; pipeline: {args.pipeline}; tools/devset_eval.py fit-tail")
        manifest["models"][args.manifest_entry]["impostor_tail"] = entry
        manifest["models"][args.manifest_entry].pop("impostor_cosine", None)
        mpath.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        print(f"stored as models/manifest.json {args.manifest_entry}.impostor_tail")
    print(f"{model.n:,} comparisons from {model.n_probes} probes: u {model.u:.4f}, zeta {model.zeta:.2e}, "
          f"sigma {model.sigma:.5f}, xi {model.xi:.3f}; max {max(g.max() for g in groups):.4f}")


def cmd_fit_tail_pairs(args: argparse.Namespace, c: dict) -> None:
    """Fit the impostor tail on every clean impostor pair of the half (tens of millions); with --manifest-entry,
    also store it in models/manifest.json."""
    fh = np.load(args.facehash)["hash"] if args.facehash else None
    groups, removed = clean_impostor_pairs(c, args.half, fh, args.gated)
    print(json.dumps({"pairs": removed}))
    model = fit_tail(groups, min_exceedances=args.min_exceedances,
                     source=f"{args.cache.name}, half {args.half}, all clean pairs")
    entry = model.to_json()
    entry["cleaning"] = removed
    args.out.write_text(json.dumps(entry))
    if args.manifest_entry:
        mpath = Path(__file__).resolve().parent.parent / "models" / "manifest.json"
        manifest = json.loads(mpath.read_text())
        entry["source"] = (f"dev set (../shared/data; tuned on it): {model.n:,} real impostor pairs = every pair "
                           f"of different identities within one identity namespace among the "
                           f"{removed['faces']:,} faces of half '{args.half}' of the identities (hash split): "
                           f"CelebA in-the-wild + low-res, the small sets, UTKFace children under {CHILD_AGE}; "
                           f"cleaned without looking at scores: {removed['cross_namespace_or_unlabelled']:,} pairs "
                           "across identity namespaces or with an unlabelled adult UTKFace chip (one celebrity can "
                           f"carry two labels across web-scraped sets; UTKFace children under {CHILD_AGE} are kept "
                           "against every labelled face) and "
                           f"{removed['near_duplicate']:,} near-duplicate photo pairs (face "
                           f"thumbnails correlating >= {NEAR_DUPLICATE}) left out"
                           + ("; only faces passing the enrollment gate, at least one of each pair passing the "
                              "device's gate (the comparisons a deployed list makes)" if args.gated else "")
                           + f"; resolution 1/{model.n:,} = "
                           f"{1 / model.n:.1e} per comparison, GPD above u (exceeded by {args.min_exceedances:,}); "
                           f"pipeline: {args.pipeline}; tools/devset_eval.py fit-tail-pairs")
        manifest["models"][args.manifest_entry]["impostor_tail"] = entry
        mpath.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        print(f"stored as models/manifest.json {args.manifest_entry}.impostor_tail")
    print(f"{model.n:,} comparisons from {model.n_probes} probes: u {model.u:.4f}, zeta {model.zeta:.2e}, "
          f"sigma {model.sigma:.5f}, xi {model.xi:.3f}; max {max(g.max() for g in groups):.4f}")


def cmd_check_fmr(args: argparse.Namespace, c: dict) -> None:
    """Predicted vs measured per-comparison FMR on the other half's clean pairs."""
    model = TailModel.from_json(json.loads(args.tail.read_text()))
    fh = np.load(args.facehash)["hash"] if args.facehash else None
    groups, removed = clean_impostor_pairs(c, args.half, fh, args.gated)
    allv = np.sort(np.concatenate(groups))[::-1]
    rows = []
    for fmr in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 3e-8):
        t = model._threshold(fmr, model.zeta, model.sigma, model.xi)
        measured = float(np.searchsorted(-allv, -t, side="right")) / len(allv)
        rows.append({"predicted_fmr": fmr, "threshold": round(t, 5), "measured_fmr": float(f"{measured:.3e}"),
                     "measured_count": int(round(measured * len(allv))),
                     "ratio": round(measured / fmr, 3)})
    print(json.dumps({"pairs": removed, "check": rows}))


def cmd_check_tail(args: argparse.Namespace, c: dict) -> None:
    """Predicted (--tail) vs measured FPIR at several watchlist sizes and FPIR targets on the half's gallery and
    non-mated probes."""
    model = TailModel.from_json(json.loads(args.tail.read_text()))
    sp = split(c, args.half)
    g = np.array([i for i in sp["gallery"] if c["chosen"][i] >= 0])
    nonm = np.array([i for i in sp["nonmated"] if c["chosen"][i] >= 0])
    rng = np.random.default_rng(0)
    for n in (len(g), 500, 100):
        # Smaller galleries: 20 random draws of n templates (the FPIR of one small gallery depends on which
        # templates it holds), measured FPIR averaged over the draws.
        draws = [g] if n == len(g) else [rng.choice(g, n, replace=False) for _ in range(20)]
        tops = [np.concatenate([(c["emb"][nonm[b:b + 2000]] @ c["emb"][gg].T).max(axis=1)
                                for b in range(0, len(nonm), 2000)]) for gg in draws]
        for fpir in (0.003, 0.01, 0.03):
            th = model.threshold_for(n, fpir)
            measured = [float((t >= th["match"]).mean()) for t in tops]
            print(json.dumps({"n_templates": n, "draws": len(draws), "nonmated": len(nonm), "fpir_target": fpir,
                              "predicted_threshold": th["match"], "point_threshold": th["point"],
                              "predicted_fpir": th["predicted_fpir"],
                              "measured_fpir_at_predicted": round(float(np.mean(measured)), 5),
                              "measured_range": [round(min(measured), 5), round(max(measured), 5)],
                              "measured_fpir_at_point": round(
                                  float(np.mean([(t >= th["point"]).mean() for t in tops])), 5),
                              "empirical_threshold": round(
                                  float(np.mean([threshold_at_fpir(t, fpir) for t in tops])), 4)}))


#: devset_eval.py <command> → what runs it (with the parsed arguments and the loaded cache)
COMMANDS: dict[str, Callable[[argparse.Namespace, dict], None]] = {
    "openset": cmd_openset,
    "fit-tail": cmd_fit_tail,
    "check-tail": cmd_check_tail,
    "gate": cmd_gate,
    "write-split": cmd_write_split,
    "fit-tail-pairs": cmd_fit_tail_pairs,
    "check-fmr": cmd_check_fmr,
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name)
        p.add_argument("--cache", type=Path, required=True)
        p.add_argument("--half", choices=("fit", "check"))
        p.add_argument("--gate", action="store_true")
        p.add_argument("--min-sharpness", type=float, default=QualityThresholds().min_sharpness)
        p.add_argument("--min-eye", type=float, default=QualityThresholds().min_eye_distance)
        p.add_argument("--max-yaw", type=float, default=QualityThresholds().max_yaw)
        p.add_argument("--max-roll", type=float, default=QualityThresholds().max_roll)
        p.add_argument("--sets", help="comma-separated dev sets to use (default: all)")
        p.add_argument("--fuse", type=Path)
        p.add_argument("--old-gate", action="store_true", help="with --gate: the former gate's limits")
        p.add_argument("--weight", type=float, default=0.6)
        p.add_argument("--shortlist", type=int, default=50)
        p.add_argument("--tail", type=Path)
        p.add_argument("--out", type=Path)
        p.add_argument("--manifest-entry",
                       help="fit-tail: also store the tail in models/manifest.json under this model")
        p.add_argument("--pipeline", default="BlazeFace-keypoint chips, no flip",
                       help="fit-tail: how the cache was made")
        p.add_argument("--fpir", type=float, default=0.003)
        p.add_argument("--facehash", type=Path, help="fit-tail-pairs / check-fmr: fingerprints from devset.py facehash")
        p.add_argument("--min-exceedances", type=int, default=2000)
        p.add_argument("--gated", action="store_true", help="fit-tail-pairs / check-fmr: only pairs of enrollable "
                       "faces of which at least one passes the device's gate")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    c = dict(np.load(args.cache))
    c["ndet"] = np.load(args.cache.parent / "dets.npz")["ndet"]  # same photo order (tools/devset.py)
    COMMANDS[args.cmd](args, c)

if __name__ == "__main__":
    sys.exit(main())
