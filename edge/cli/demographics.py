"""`edge eval demographics`: false-match rates within and across demographic groups at a threshold, from labelled
face photos (argument handling and output only; the counting is `edge.evaluation.demographics`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edge.cli.common import analyzer_from_args as _analyzer
from edge.cli.common import print_json as _print_json
from edge.cli.common import progress as _progress
from edge.errors import DataError

#: Bytes of a sealed bundle read for its manifest (the header; never the whole, possibly huge, file).
HEADER_BYTES = 2 * 2**20

#: Threshold grid of a saved summary (cosine): fine enough that `seal` reads a rate at any threshold within 0.005.
SUMMARY_GRID = [round(0.2 + 0.005 * i, 4) for i in range(161)]


def read_manifest(path: Path, root: Path, columns: list[str]) -> list[tuple[Path, str, str]]:
    """(photo, identity or '', group label) per row of a `path[,identity],COL…` CSV."""
    from edge.evaluation.demographics import group_label
    from edge.tables import read_csv

    rows = []
    for line, row in enumerate(read_csv(path, ("path", *columns)), start=2):
        values = [(row.get(c) or "").strip() for c in columns]
        if not all(values):
            raise DataError(f"{path}, line {line}: every group column needs a value ({', '.join(columns)})")
        rows.append((root / row["path"], (row.get("identity") or "").strip(), group_label(values)))
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _thresholds(args: argparse.Namespace, analyzer) -> list[dict]:
    """[{threshold, why}] from --threshold, --bundle or --size/--fpir (the shipped tail, as `seal` would)."""
    if args.threshold:
        return [{"threshold": t, "why": "--threshold"} for t in args.threshold]
    if args.bundle:
        from edge.watchlist.frame import BundleError, peek_manifest

        try:
            with open(args.bundle, "rb") as fh:  # the header is enough (as the device's store reads it)
                m = peek_manifest(fh.read(HEADER_BYTES))
            return [{"threshold": float(m["thresholds"]["match"]),
                     "why": f"bundle {args.bundle.name} v{m.get('version')} "
                            f"(calibrated for {m['thresholds'].get('calibrated_for_n', '?')} templates)"}]
        except (OSError, BundleError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"cannot read the threshold of {args.bundle}: {err}") from None
    from edge.evaluation.calibration import scoring_tail

    tail = scoring_tail(analyzer.embedder_info.info, analyzer.fusion)
    out = []
    for n in args.size:
        point, bound, _ = tail.thresholds(n, args.fpir)
        if bound <= tail.max_score:
            out.append({"threshold": round(bound, 5),
                        "why": f"{n:,} templates at FPIR {args.fpir} (the bound seal applies)"})
        else:
            out.append({"threshold": round(point, 5), "why": f"{n:,} templates at FPIR {args.fpir}: the bound "
                        f"{bound:.4f} is out of reach, the point estimate instead"})
    return out


def cmd_eval_demographics(args: argparse.Namespace) -> int:
    from edge.evaluation.demographics import pair_counts, plot, report_at, summarise
    from edge.imageio import read_image

    if not (args.threshold or args.bundle or args.size):
        raise DataError("give the threshold: --threshold T, --bundle FILE, or --size N [N …] (with --fpir)")
    t0 = time.perf_counter()
    rows = read_manifest(args.manifest, args.root, args.group_columns)
    analyzer = _analyzer(args)
    embs, groups, ids, failed = [], [], [], 0
    for path, ident, group in _progress("embedding")(rows):
        face = analyzer.best_face(read_image(path))
        if face is None:
            failed += 1
            continue
        embs.append(face.embedding)
        groups.append(group)
        ids.append(ident)
    if len(embs) < 2:
        raise DataError("fewer than two faces were found: nothing to compare")
    import numpy as np

    marks = _thresholds(args, analyzer)
    grid = sorted(set(SUMMARY_GRID) | {m["threshold"] for m in marks})
    within, across = pair_counts(np.stack(embs), groups, ids, grid)
    reports = [dict(report_at(within, across, grid.index(m["threshold"]), m["threshold"]), why=m["why"]) for m in marks]
    out = {"n_photos": len(rows), "n_faces": len(embs), "n_failed_detect": failed, "group_columns": args.group_columns,
           "embedder": analyzer.embedder_id, "at": reports, "seconds": round(time.perf_counter() - t0, 1)}
    if args.save_summary:
        summary = summarise(within, grid, f"edge eval demographics --manifest {args.manifest.name}: {len(embs)} faces, "
                            f"groups by {', '.join(args.group_columns)}; embedder {analyzer.embedder_id}")
        args.save_summary.write_text(json.dumps(summary))
        out["summary"] = str(args.save_summary)
    if args.plot:
        try:
            plot(args.plot, within, grid, [m["threshold"] for m in marks])
        except ImportError:
            raise DataError("--plot needs matplotlib: pip install 'edge-watchlist[eval]'") from None
        out["plot"] = str(args.plot)
    if args.json:
        _print_json(out)
        return 0
    print(f"{len(embs)} faces ({failed} photos without a face), groups by {', '.join(args.group_columns)}; "
          f"embedder {analyzer.embedder_id}")
    for r in reports:
        print(f"\nthreshold {r['threshold']:.4f} — {r['why']}")
        print(f"  {'group':28s} {'faces':>6s} {'impostor pairs':>15s} {'FMR within':>11s}  95 % interval")
        for name, g in sorted(r["within"].items()):
            f = g["fmr"]
            val = f"{f['rate']:.2e}" if f["estimable"] else "too few"
            print(f"  {name:28s} {g['faces']:6d} {f['pairs']:15,d} {val:>11s}  "
                  f"[{f['low'] or 0:.1e}, {f['high'] or 0:.1e}]"
                  + ("" if f["estimable"] else "  (no false match: not estimable at this threshold)"))
        a = r["across"]
        print(f"  {'across groups':28s} {'':6s} {a['pairs']:15,d} "
              f"{(format(a['rate'], '.2e') if a['estimable'] else 'too few'):>11s}")
        ratio = r["max_min_ratio"]
        print("  highest / lowest within-group FMR: "
              + (f"{ratio['value']}× ({ratio['highest']} / {ratio['lowest']})"
                 if ratio else "not estimable (fewer than two estimable groups)"))
    return 0


def add_parser(eval_sub: argparse._SubParsersAction, vision: argparse.ArgumentParser) -> None:
    """Register `edge eval demographics`."""
    p = eval_sub.add_parser(
        "demographics", parents=[vision], help="false-match rates within and across demographic groups",
        description="Embed every photo of a manifest (path[,identity],GROUP COLUMNS…) and report, at a threshold, the "
                    "false-match rate of impostor pairs within each group and across groups (95 % intervals), the "
                    "false non-match rate where genuine pairs exist, and the highest/lowest group ratio. Faces without "
                    "an identity count as different people. A group without a false match is reported as not "
                    "estimable at that threshold, never as zero.")
    p.add_argument("--manifest", type=Path, required=True, help="CSV: path, optional identity, the group columns")
    p.add_argument("--root", type=Path, required=True, help="folder the CSV's paths are relative to")
    p.add_argument("--group-columns", nargs="+", default=["group"], metavar="COL",
                   help="columns whose values make a group (default: group); several = their combinations")
    g = p.add_argument_group("threshold (one of)")
    g.add_argument("--threshold", type=float, nargs="+", metavar="T", help="cosine threshold(s)")
    g.add_argument("--bundle", type=Path, help="the match threshold a sealed bundle carries (read, not verified)")
    g.add_argument("--size", type=int, nargs="+", metavar="N", help="the shipped calibration's threshold for a list "
                   "of N templates at --fpir")
    p.add_argument("--fpir", type=float, default=0.003, help="with --size: target FPIR (default 0.003)")
    p.add_argument("--save-summary", type=Path, metavar="JSON", help="write the per-group counts on a threshold grid "
                   "(what `watchlist seal --demographics` and the model manifest's summary hold)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="FMR against threshold per group, DET where genuine pairs exist")
    p.set_defaults(func=cmd_eval_demographics)


