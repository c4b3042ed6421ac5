"""`edge watchlist build|verify|bench` and `edge eval openset`: argument handling and output only (`seal` is in
`edge.cli.seal`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


from edge.cli.common import analyzer_from_args as _analyzer
from edge.cli.common import print_json as _print_json
from edge.cli.common import progress as _progress
from edge.cli.seal import cmd_watchlist_seal
from edge.errors import DataError, EdgeError


# --- watchlist ------------------------------------------------------------------------------------------------

def embedder_info(analyzer) -> dict:
    """The build's record of the embedding space it enrolled in (id, model, checksum, flip, alignment, fusion)."""
    return {"id": analyzer.embedder_id, "name": analyzer.embedder_info.name,
            "sha256": analyzer.embedder_info.sha256, "flip": analyzer.embedder.flip, "alignment": analyzer.alignment,
            "fusion": analyzer.fusion_meta is not None}


def _gate_parent() -> argparse.ArgumentParser:
    """The enrollment gate's options (defaults: edge.vision.quality; calibrated on the dev portraits, see README)."""
    from edge.vision.quality import ENROLLMENT_LIMITS, SubjectRule

    q, r = ENROLLMENT_LIMITS, SubjectRule()
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("enrollment gate")
    g.add_argument("--min-eye-distance", type=float, default=q.min_eye_distance, metavar="PX",
                   help=f"smallest eye distance, pixels (default {q.min_eye_distance:g})")
    g.add_argument("--min-sharpness", type=float, default=q.min_sharpness, metavar="S",
                   help=f"least sharpness 0-1 at the face's own resolution (default {q.min_sharpness:g})")
    g.add_argument("--max-yaw", type=float, default=q.max_yaw, help=f"largest |yaw ratio| (default {q.max_yaw:g})")
    g.add_argument("--max-roll", type=float, default=q.max_roll, metavar="DEG",
                   help=f"largest head tilt, degrees (default {q.max_roll:g})")
    g.add_argument("--min-face-score", type=float, default=q.min_score, metavar="P",
                   help=f"least detector probability (default {q.min_score:g})")
    g.add_argument("--min-relative-size", type=float, default=r.min_relative, metavar="FRACTION",
                   help="with several faces, those with an eye distance of at least FRACTION × the largest one's are "
                        "candidates; the one nearest the centre is enrolled, with a warning "
                        f"(default {r.min_relative:g})")
    g.add_argument("--max-offset", type=float, default=r.max_offset, metavar="FRACTION",
                   help="... when it lies within FRACTION of the image size from the centre "
                        f"(default {r.max_offset:g})")
    g.add_argument("--dominance", type=float, default=r.dominance, metavar="RATIO",
                   help="... and, when another candidate is about as central, its eye distance is RATIO × that one's "
                        f"(default {r.dominance:g})")
    g.add_argument("--no-gate", action="store_true", help="enroll the subject face whatever its quality")
    return p


def _gate(args: argparse.Namespace):
    """(QualityThresholds or None, SubjectRule) from the gate options, each checked."""
    from edge.vision.quality import QualityThresholds, SubjectRule

    for name, lo, hi in (("min_eye_distance", 0, 10_000), ("min_sharpness", 0, 1), ("max_yaw", 0, 10),
                         ("max_roll", 0, 180), ("min_face_score", 0, 1), ("dominance", 1, 100), ("max_offset", 0, 0.5),
                         ("min_relative_size", 0, 1)):
        v = getattr(args, name)
        if not lo <= v <= hi:
            raise DataError(f"--{name.replace('_', '-')} must be between {lo} and {hi}, got {v}")
    limits = None if args.no_gate else QualityThresholds(args.min_eye_distance, args.min_sharpness, args.max_yaw,
                                                         args.max_roll, args.min_face_score)
    return limits, SubjectRule(args.dominance, args.max_offset, args.min_relative_size)


def cmd_watchlist_build(args: argparse.Namespace) -> int:
    from edge.watchlist.operator.build import check_out_dir, enroll, payload_of, read_gallery, write_build
    from edge.watchlist.operator.references import ReferenceSpool

    entries = read_gallery(args.gallery, args.root)
    check_out_dir(args.out, args.force)
    analyzer = _analyzer(args)
    limits, rule = _gate(args)
    t0 = time.perf_counter()
    spool = ReferenceSpool(args.out)  # the enrolled chips, for the reviewers: operator side only
    try:
        enrollment = enroll(entries, analyzer, limits, progress=_progress("enrolling"), subject=rule,
                            on_template=spool.add)
        if not enrollment.vectors:
            raise EdgeError(f"no photo of {args.gallery} could be enrolled ({len(enrollment.rejected)} rejected)")
        payload = payload_of(enrollment, analyzer.fusion_meta, args.trees)
        report = write_build(args.out, payload, enrollment, embedder_info(analyzer), time.perf_counter() - t0,
                             force=args.force, references=spool)
    finally:
        spool.discard()  # nothing left when committed; the partial chips of a failed build otherwise
    if args.json:
        _print_json(report)
    else:
        print(f"enrolled {report['n_subjects']} subjects, {report['n_templates']} templates ({report['n_references']}"
              f" reference chips for the console, operator side only) into {args.out} "
              f"({report['seconds']} s); rejected {len(report['rejected'])}:")
        for r in report["rejected"]:
            print(f"  {r['path']}: {r['reason']}" + (f" ({r['detail']})" if r.get("detail") else ""))
        for w in report["warnings"]:
            print(f"  warning: {w['path']}: {w['warning']}")
    return 0


def cmd_watchlist_verify(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.files import read_file
    from edge.watchlist.device.unseal import find_recipient, open_bundle
    from edge.watchlist.device.verify import verify_bundle
    from edge.watchlist.frame import MAX_BUNDLE_BYTES, BundleError
    from edge.watchlist.delta import DeltaError, unpack_delta
    from edge.watchlist.device.matcher import Watchlist

    data = read_file(args.file, "bundle", MAX_BUNDLE_BYTES, DataError)
    device = keys.load_private_key(args.device_key, "device")
    operator = keys.load_public_key(args.operator_key, "operator")
    result: dict[str, Any] = {"ok": False, "version": None, "n_items": None, "reason": None}
    try:
        trust = {keys.key_id(operator): operator}
        device_id = args.device_id
        if device_id is None:  # the recipient whose wrap this key opens
            manifest, _ = verify_bundle(data, trust)
            device_id = find_recipient(manifest, device)
            if device_id is None:
                raise BundleError("not_recipient", f"bundle v{manifest['version']} for {manifest['audience']} has no"
                                                   " key wrap this device key opens (not a recipient)")
        opened = open_bundle(data, device, trust, expected_device_id=device_id)
        m = opened.manifest
        if opened.kind == "delta":  # applied only on top of its base: here its structure is checked
            unpack_delta(opened.payload_bytes)
            n_items, n_subjects = m["n_items"], m["n_subjects"]
        else:
            watchlist = Watchlist.from_payload(opened.payload, m.get("thresholds"), m)
            n_items, n_subjects = len(watchlist), watchlist.n_subjects
        result.update(ok=True, version=m["version"], n_items=n_items, n_subjects=n_subjects,
                      watchlist_id=m["watchlist_id"], expires=m["expires"], thresholds=m["thresholds"],
                      kind=m["kind"], base=(m["base"] or {}).get("version"), audience=m["audience"],
                      device_id=device_id)
        if args.state_dir is not None:
            _against_install_record(args, opened, device, result)
    except BundleError as err:
        result.update(reason=err.reason, message=str(err))
    except (DeltaError, EdgeError) as err:
        result.update(reason="load_failed", message=str(err))
    if args.json:
        _print_json(result)
    elif result["ok"]:
        what = f" (delta on v{result['base']})" if result["kind"] == "delta" else ""
        print(f"OK: watchlist {result['watchlist_id']} v{result['version']}{what} for {result['audience']}, "
              f"{result['n_subjects']} subjects, {result['n_items']} templates, expires {result['expires']}")
    else:
        print(f"REJECTED ({result['reason']}): {result['message']}")
    return 0 if result["ok"] else 1


def _against_install_record(args: argparse.Namespace, opened: Any, device: Any, result: dict) -> None:
    """--state-dir: the bundle against that device's authenticated install record (no rollback, no swap)."""
    from edge.watchlist.device.policy import record_conflict
    from edge.watchlist.device.record import RecordError
    from edge.watchlist.device.store import WatchlistStore

    store = WatchlistStore(args.state_dir, result["device_id"], device, {}, "", "", lambda b: b)
    try:
        record = store.read_record()
    except RecordError as err:
        result.update(ok=False, reason="install_record_invalid", message=str(err))
        return
    if record is None:
        result["install_record"] = None
        return
    result["install_record"] = {"version": record[0], "content_sha256": record[1]}
    conflict = record_conflict(record, opened.version, opened.content_sha256)
    if conflict is not None:
        result.update(ok=False, reason=conflict[0], message=f"{args.state_dir}: {conflict[1]}")


def cmd_watchlist_bench(args: argparse.Namespace) -> int:
    from edge.evaluation.watchlist_bench import run_watchlist_bench

    report = run_watchlist_bench(_analyzer(args), args.gallery, args.root, args.probes, args.size, args.queries,
                                 args.trees, args.search_k, args.seed, args.stage1_dim, args.shortlist,
                                 args.save_bundle, progress=_progress, log=lambda line: print(line, file=sys.stderr))
    if args.json:
        _print_json(report)
    else:
        print(json.dumps(report, indent=2))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


# --- eval openset ---------------------------------------------------------------------------------------------

def cmd_watchlist_bench_sync(args: argparse.Namespace) -> int:
    from edge.evaluation.sync_bench import run_sync_bench

    report = run_sync_bench(args.devices, args.size, args.change, args.parallel_installs, args.chunk_bytes,
                            progress=lambda s: print(f"bench-sync: {s}", file=sys.stderr, flush=True))
    if args.json:
        _print_json(report)
    else:
        print(f"{report['devices']} devices, {report['size']} subjects: full v1 {report['full_bundle_bytes']} bytes,"
              f" {report['full_bytes_retained']} bytes retained on the broker, all installed in"
              f" {report['full_seconds_all_installed']} s; delta +{args.change}/-{args.change}:"
              f" {report['delta_bytes']} bytes ({100 * report['delta_fraction_of_full']:.2f} % of the full bundle),"
              f" all on v2 in {report['delta_seconds_all_installed']} s ({report['devices_via_delta']} via the delta)")
        print(f"note: {report['note']}")
    return 0


def cmd_eval_openset(args: argparse.Namespace) -> int:
    from edge.evaluation.calibration import fit_tail
    from edge.evaluation.openset import (calibration_check, det_points, openset_report, plot_det, projection,
                                         read_probes, search_probes)
    from edge.watchlist.operator.build import enroll, read_gallery

    t0 = time.perf_counter()
    entries = read_gallery(args.gallery, args.root)
    probes = read_probes(args.probes, args.root)
    analyzer = _analyzer(args)
    limits, rule = _gate(args)
    enrollment = enroll(entries, analyzer, limits, progress=_progress("enrolling"), subject=rule)
    if not enrollment.vectors:
        raise EdgeError("no gallery photo could be enrolled")
    s = search_probes(analyzer, enrollment, probes, args.trees, _progress)
    failed = s.failed_detect
    reasons: dict[str, int] = {}
    for r in enrollment.rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    report: dict[str, Any] = {
        "n_gallery": len(enrollment.subjects), "n_templates": len(enrollment.vectors),
        "n_gallery_rejected": len(enrollment.rejected), "gallery_rejected_reasons": reasons,
        "n_gallery_warnings": len(enrollment.warnings), "n_mated": len(s.mated_top),
        "n_nonmated": len(s.nonmated_top), "n_failed_detect": failed}
    report.update(openset_report(s.mated_top, s.mated_ok, s.nonmated_top, args.fpir))
    report["calibration"] = calibration_check(analyzer, len(enrollment.vectors), args.fpir, s.nonmated_top)
    if args.project_size:
        report["projection"] = projection(analyzer, args.project_size, args.fpir, s.mated_top, s.mated_ok)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if args.save_impostors:
        n = sum(len(g) for g in s.impostors)
        model = fit_tail(s.impostors, min_exceedances=max(10, min(2000, n // 100)),
                         source=f"edge eval openset: {len(s.impostors)} non-mated probes x"
                                f" {len(enrollment.vectors)} templates")
        args.save_impostors.write_text(json.dumps({"impostor_tail": model.to_json(),
                                                   "embedder": embedder_info(analyzer)}, indent=2))
    if args.plot:
        plot_det(args.plot, *det_points(s.mated_top, s.mated_ok, s.nonmated_top), report)
        report["plot"] = str(args.plot)
    if args.json:
        _print_json(report)
    else:
        print(f"gallery {report['n_gallery']} subjects ({report['n_templates']} templates); probes:"
              f" {report['n_mated']} mated, {report['n_nonmated']} non-mated, {failed} without a face")
        print(f"at FPIR ≤ {args.fpir}: threshold {report['threshold']:.4f}, FPIR {report['fpir']},"
              f" FNIR {report['fnir']} (FPIR resolution {report['fpir_resolution']}); rank-1 {report['rank1']}")
        proj = report.get("projection")
        if proj and "error" in proj:
            print(f"projected to {proj['size']:,} templates: {proj['error']}")
        elif proj:
            reach = "" if proj["reachable"] else " (above any score: `seal` refuses this size at this FPIR)"
            print(f"projected to {proj['size']:,} templates at FPIR {args.fpir}:"
                  f" threshold {proj['threshold_bound']:.4f}{reach}, point estimate {proj['threshold']:.4f};"
                  f" FNIR of these mated searches {proj['fnir']} ({proj['fnir_at_point']} at the point estimate)")
    return 0


# --- parser ---------------------------------------------------------------------------------------------------

def add_parsers(sub: argparse._SubParsersAction, vision: argparse.ArgumentParser,
                eval_sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register the watchlist / eval openset commands; returns the `watchlist` sub-command group."""
    wl = sub.add_parser("watchlist", help="enroll, seal and verify watchlists").add_subparsers(
        dest="watchlist_command", metavar="ACTION", required=True)
    gate = _gate_parent()
    p = wl.add_parser("build", parents=[vision, gate], help="enroll gallery photos into an index (operator side)",
                      description="Detect, quality-check, align and embed each photo of a gallery CSV (path,identity"
                                  "[,label,category,expires]) and build the Annoy index; rejected photos are listed.")
    p.add_argument("--gallery", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="folder the CSV's paths are relative to")
    p.add_argument("--out", type=Path, required=True,
                   help="build directory (plaintext: keep it on the operator machine)")
    p.add_argument("--trees", type=int, default=8, help="Annoy trees (default 8, see README for the trade-off)")
    p.add_argument("--force", action="store_true", help="replace an existing build in --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_build)
    p = wl.add_parser("seal", help="sign and encrypt a build for one device or a group",
                      description="Pack a build directory, pick the match threshold for its size and a target FPIR, "
                                  "encrypt it once, wrap its key to each recipient device (one device, or a group of "
                                  "the fleet file) and sign it with the operator key; --base N makes a delta.")
    p.add_argument("--in", dest="input", type=Path, required=True, help="build directory from `watchlist build`")
    p.add_argument("--signing-key", type=Path, required=True, help="operator private key (Ed25519)")
    p.add_argument("--device-key", type=Path,
                   help="the device's public key (X25519), for one device not in a fleet file")
    p.add_argument("--device-id", help="seal for this one device (its key from --device-key or --fleet)")
    p.add_argument("--group", help="seal for every member of this group of the --fleet file (one payload for all)")
    p.add_argument("--fleet", type=Path, help="fleet file from `edge fleet add` (device keys and groups)")
    p.add_argument("--version", type=int, required=True, help="watchlist version (must increase on every release)")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write")
    p.add_argument("--base", type=int, metavar="N", help="seal a delta on version N (from the release archive); the "
                   "full bundle of this version is written to --full-out as well")
    p.add_argument("--full-out", type=Path, help="with --base: where the full bundle goes (default OUT.full.bundle)")
    p.add_argument("--releases", type=Path, help="release archive: every version's full content, for --base "
                   "(plaintext, 0700; default: 'releases' beside --out)")
    p.add_argument("--watchlist-id", default="default", help="watchlist name (default 'default')")
    p.add_argument("--expires-days", type=float, default=30.0,
                   help="days until the device treats it as stale (default 30)")
    p.add_argument("--fpir", type=float, default=0.003,
                   help="target false-positive identification rate (default 0.003)")
    p.add_argument("--impostors", type=Path, help="impostor model from `edge eval openset --save-impostors` "
                                                  "(default: the embedder's, measured on the dev set)")
    p.add_argument("--threshold", type=float, help="use this match threshold instead of calibrating one")
    p.add_argument("--demographics", type=Path, metavar="JSON", help="per-group counts from `edge eval demographics "
                   "--save-summary` (default: the embedder's shipped summary) for the per-group rates seal prints")
    p.add_argument("--demographic-bound", type=float, default=3.0, metavar="RATIO", help="warn when the highest "
                   "within-group false-match rate exceeds the lowest by more than RATIO times (default 3)")
    p.add_argument("--margin", type=float, default=0.02,
                   help="required cosine margin over the next subject (default 0.02)")
    p.add_argument("--models-dir", type=Path, help="directory with manifest.json (for the default impostor model)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_seal)  # edge.cli.seal
    p = wl.add_parser("verify", help="verify and decrypt a bundle in memory")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--device-key", type=Path, required=True, help="the device's private key (X25519)")
    p.add_argument("--operator-key", type=Path, required=True, help="the operator's public key (Ed25519)")
    p.add_argument("--device-id", help="also require this target device id")
    p.add_argument("--state-dir", type=Path, help="also check it against this device state directory's install "
                                                  "record: an older version (rollback) is refused")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_verify)
    p = wl.add_parser("bench", parents=[vision], help="build/seal/load/query a watchlist of N subjects",
                      description="Real enrollments from --gallery padded with synthetic distractors (matched to the "
                                  "measured impostor distribution) to --size subjects; reports build time, bundle "
                                  "size, verify+decrypt+load time, RSS, query p50/p99 and recall@1 vs exact search.")
    p.add_argument("--gallery", type=Path, required=True, help="real enrollments (path,identity)")
    p.add_argument("--probes", type=Path, required=True, help="real probes (path,identity,in_watchlist)")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--size", type=int, default=300_000, help="subjects in the watchlist (default 300000)")
    p.add_argument("--queries", type=int, default=10_000, help="number of timed queries (default 10000)")
    p.add_argument("--trees", type=lambda s: [int(x) for x in s.split(",")], default=[8],
                   help="comma-separated Annoy tree counts to compare (default 8)")
    p.add_argument("--search-k", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                   help="comma-separated Annoy search_k values to compare (0 = Annoy's default)")
    p.add_argument("--stage1-dim", type=int, default=32, help="PCA dimensions of the shortlist index (default 32)")
    p.add_argument("--shortlist", type=int, default=128, help="templates re-scored exactly per query (default 128)")
    p.add_argument("--save-bundle", type=Path, metavar="DIR", help="keep each sealed bundle (bench-TREES.bundle) "
                   "with its throwaway device key and operator public key here, for `edge bench --bundle`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_bench)

    p = wl.add_parser("bench-sync", help="a group watchlist and a delta to N device processes over a loopback broker",
                      description="Seal a SIZE-subject group watchlist for N device processes, publish it over a "
                                  "loopback mosquitto running the shipped TLS/ACL config, then a +CHANGE/-CHANGE "
                                  "delta; report bytes retained, delta bytes and seconds until every device runs each.")
    p.add_argument("--devices", type=int, default=20, help="device processes (default 20)")
    p.add_argument("--size", type=int, default=300_000, help="subjects in the watchlist (default 300000)")
    p.add_argument("--change", type=int, default=500, help="subjects removed and added by the delta (default 500)")
    p.add_argument("--parallel-installs", type=int, default=2, help="devices installing at once on this machine "
                   "(default 2, its cores; real devices each have their own)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="chunk size in bytes (default 1 MiB)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_watchlist_bench_sync)

    p = eval_sub.add_parser("openset", parents=[vision, _gate_parent()],
                            help="1:N identification: FNIR at a target FPIR",
                            description="Enroll the gallery, search every probe (path,identity,in_watchlist) and "
                                        "report FNIR at the threshold meeting the target FPIR, rank-1 and the DET "
                                        "curve.")
    p.add_argument("--gallery", type=Path, required=True)
    p.add_argument("--probes", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--fpir", type=float, default=0.003, help="target FPIR (default 0.003)")
    p.add_argument("--trees", type=int, default=8)
    p.add_argument("--save-impostors", type=Path, metavar="JSON", help="save the impostor tail fitted on this run's "
                   "non-mated comparisons (for `watchlist seal --impostors`)")
    p.add_argument("--project-size", type=_positive_int, metavar="N", help="also report the shipped calibration's "
                   "threshold for a watchlist of N templates at --fpir and this run's FNIR at it (JSON: projection)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the DET curve")
    p.set_defaults(func=cmd_eval_openset)
    return wl
