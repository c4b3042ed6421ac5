"""`edge watchlist seal`: pick the threshold for the list's size, seal a build (full, or a delta on an archived
version) for one device or a fleet group, and archive the version's content for the next delta."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge.cli.common import print_json as _print_json
from edge.durable import atomic_write
from edge.errors import DataError, EdgeError


#: An impostor tail or demographic summary file is a few kilobytes; anything far larger is refused unread.
MAX_IMPOSTOR_FILE = 4 * 2**20


def _small_json(path: Path, what: str):
    """A JSON file of at most MAX_IMPOSTOR_FILE bytes, or a one-line DataError saying it is not `what`."""
    try:
        if Path(path).stat().st_size > MAX_IMPOSTOR_FILE:
            raise DataError(f"{path} is larger than {MAX_IMPOSTOR_FILE // 2**20} MiB: not {what}")
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{path} is not {what} ({type(err).__name__}: {err})") from None


def _impostor_tail(args: argparse.Namespace, embedder: dict):
    """The impostor tail for threshold selection: --impostors FILE, else the embedder's manifest entry."""
    from edge.evaluation.calibration import TailModel, embedder_tail
    from edge.vision.manifest import load_manifest

    if args.impostors:
        what = "an impostor file from `edge eval openset --save-impostors`"
        data = _small_json(args.impostors, what)
        try:
            stats = data["impostor_tail"]
        except (KeyError, TypeError) as err:
            raise DataError(f"{args.impostors} is not {what} ({type(err).__name__}: {err})") from None
        return TailModel.from_json(stats)
    manifest = load_manifest(args.models_dir)
    if embedder.get("fusion"):
        from edge.evaluation.calibration import scoring_tail
        from edge.vision.fusion import load_fusion
        from edge.vision.runtime import sha256_file

        if not manifest.fusion:
            raise DataError("this build fuses a second embedder, but the model manifest has no fusion section")
        return scoring_tail({}, load_fusion(manifest.fusion, manifest.directory, sha256_file))
    return embedder_tail(manifest.get(embedder.get("name", ""), "embedder").info)


def _demographics(args: argparse.Namespace, embedder: dict, threshold: float) -> dict:
    """Per-group within-group FMR at the sealed threshold, from --demographics FILE (`edge eval demographics
    --save-summary`) or the embedder's shipped summary (model manifest "demographics"), and the ratio warning."""
    from edge.vision.demographics import fmr_at, ratio_warning
    from edge.vision.manifest import load_manifest

    if args.demographics:
        what = "a summary from `edge eval demographics --save-summary`"
        summary = _small_json(args.demographics, what)
        try:
            rates = fmr_at(summary, threshold)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise DataError(f"{args.demographics} is not {what} ({type(err).__name__}: {err})") from None
    else:
        if embedder.get("fusion"):
            return {"note": "no demographic summary ships for fused scores: pass --demographics FILE"}
        try:
            summary = load_manifest(args.models_dir).get(embedder.get("name", ""), "embedder").info.get("demographics")
        except EdgeError:
            summary = None
        if not summary:
            return {"note": "the model manifest has no demographic summary for this embedder"}
        rates = fmr_at(summary, threshold)
    return {"threshold": threshold, "source": str(summary.get("source", "")), "within_group_fmr": rates,
            "bound": args.demographic_bound, "warning": ratio_warning(rates, args.demographic_bound)}


#: Longest validity a sealed watchlist may have, days (a device treats it as stale after it).
MAX_EXPIRES_DAYS = 3650


def _check_seal_args(args: argparse.Namespace) -> None:
    """Every value `seal` writes into a bundle, checked before anything is read or written (one line each)."""
    from edge.messaging.topics import DEVICE_ID, MAX_SEQ

    named = (("--device-id", args.device_id), ("--group", args.group), ("--watchlist-id", args.watchlist_id))
    for name, value in named:
        if value is not None and not DEVICE_ID.match(value):
            raise DataError(f"{name} {value!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ - (it becomes"
                            " part of MQTT topics and file names)")
    if (args.device_id is None) == (args.group is None):
        raise DataError("seal for one device (--device-id ID with --device-key PUB or --fleet FILE) or for one group"
                        " (--group G --fleet FILE)")
    if args.group is not None and args.fleet is None:
        raise DataError("--group needs --fleet FILE (the fleet registry holds the members' keys)")
    if args.device_id is not None and (args.device_key is None) == (args.fleet is None):
        raise DataError("--device-id needs exactly one of --device-key PUB or --fleet FILE")
    if not 1 <= args.version <= MAX_SEQ:
        raise DataError(f"--version must be an integer in [1, 2^63-1], got {args.version}")
    if args.base is not None and not 1 <= args.base < args.version:
        raise DataError(f"--base must be an older version than --version {args.version}, got {args.base}")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise DataError(f"--threshold must be a cosine similarity in (0, 1], got {args.threshold}")
    if not 0 <= args.margin < 1:
        raise DataError(f"--margin must be a cosine margin in [0, 1), got {args.margin}")
    if not 0 < args.fpir < 1:
        raise DataError(f"--fpir must be a rate in (0, 1), got {args.fpir}")
    if not 1 <= args.demographic_bound <= 1e6:
        raise DataError(f"--demographic-bound must be a ratio ≥ 1, got {args.demographic_bound}")
    if not 0 < args.expires_days <= MAX_EXPIRES_DAYS:
        raise DataError(f"--expires-days must be in (0, {MAX_EXPIRES_DAYS}], got {args.expires_days:g}")
    for out in [args.out] + ([_full_out(args)] if args.base is not None else []):
        if out.exists() and not args.force:
            raise DataError(f"{out} exists; pass --force to replace it")


def _full_out(args: argparse.Namespace) -> Path:
    return args.full_out or args.out.with_name(args.out.stem + ".full" + (args.out.suffix or ".bundle"))


def _recipients(args: argparse.Namespace) -> dict:
    from edge import keys
    from edge.operator.fleet import load_fleet

    if args.device_key is not None:
        return {args.device_id: keys.load_public_key(args.device_key, "device")}
    fleet = load_fleet(args.fleet, missing_ok=False)
    raw = fleet.recipients(group=args.group, device_id=args.device_id)
    return {d: keys.x25519_public(k) for d, k in raw.items()}


def cmd_watchlist_seal(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.watchlist import delta as D
    from edge.watchlist.operator.diff import diff
    from edge.watchlist.operator.build import load_build
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.device.matcher import Watchlist
    from edge.watchlist.payload import pack, unpack
    from edge.watchlist.operator.releases import load_release, save_release

    _check_seal_args(args)
    new, embedder = load_build(args.input)
    signing = keys.load_private_key(args.signing_key, "operator")
    recipients = _recipients(args)
    releases = args.releases or args.out.parent / "releases"
    delta = None
    if args.base is not None:
        base = unpack(load_release(releases, args.watchlist_id, args.base))
        try:
            delta = diff(base, new)
            full = D.apply(base, delta)
        except D.DeltaError as err:
            raise DataError(f"cannot seal v{args.version} as a delta on v{args.base}: {err}") from None
    else:
        full = new
    n_templates = len(full.meta["items"])
    if args.threshold is not None:
        thresholds = {"match": args.threshold, "source": "given on the command line"}
    else:
        thresholds = _impostor_tail(args, embedder).threshold_for(n_templates, args.fpir)
    thresholds["margin"] = args.margin
    demo = _demographics(args, embedder, float(thresholds["match"]))  # a bad summary file stops seal before it writes
    full_packed = pack(full)
    try:  # what the device will load must load here first (a corrupt index.ann or templates.bin is caught now)
        Watchlist.from_payload(full_packed, _numbers_only(thresholds), {"embedder": embedder})
    except (EdgeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{args.input} does not load as a watchlist ({err}); rebuild it with `edge watchlist build`")\
            from None
    expires = datetime.now(timezone.utc) + timedelta(days=args.expires_days)
    n_subjects = len(full.meta["subjects"]["id"])
    common = dict(watchlist_id=args.watchlist_id, version=args.version, signing_key=signing, recipients=recipients,
                  device_id=args.device_id, group=args.group, embedder_id=embedder.get("id", ""),
                  embedder_sha256=embedder.get("sha256", ""), dim=int(full.meta["dim"]), n_items=n_templates,
                  n_subjects=n_subjects, thresholds=_numbers_only(thresholds), expires=expires)
    full_data = seal(full_packed, **common)
    content = save_release(releases, args.watchlist_id, args.version, full_packed, n_templates, n_subjects,
                           force=args.force)
    outputs = [(args.out, full_data)]
    result = {"version": args.version, "audience": f"group:{args.group}" if args.group else f"device:{args.device_id}",
              "recipients": sorted(recipients), "kind": "full", "content_sha256": content, "n_items": n_templates,
              "n_subjects": n_subjects, "thresholds": _numbers_only(thresholds),
              "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "releases": str(releases)}
    if delta is not None:
        delta_data = seal(D.pack_delta(delta), base={"version": args.base, "content_sha256": delta.base_content_sha256},
                          content=content, **common)
        outputs = [(args.out, delta_data), (_full_out(args), full_data)]
        result.update(kind="delta", base=args.base, added=delta.n_added, removed=len(delta.removed),
                      updated=len(delta.updated),
                      full={"path": str(_full_out(args)), "sha256": hashlib.sha256(full_data).hexdigest(),
                            "bytes": len(full_data)})
    for path, data in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)  # a sealed bundle is not personal data in clear
        atomic_write(path, data, mode=0o644)  # sealed: only its recipients can open it
    data = outputs[0][1]
    result.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), device_id=args.device_id)
    result["demographics"] = demo
    if demo.get("warning"):
        print(f"warning: {demo['warning']}", file=sys.stderr)
    if args.json:
        _print_json(result)
    else:
        what = f"delta on v{args.base} (+{delta.n_added}/-{len(delta.removed)} subjects)" if delta else "full"
        print(f"sealed watchlist {args.watchlist_id} v{args.version} ({what}) for {result['audience']}"
              f" ({len(recipients)} recipient{'s' if len(recipients) != 1 else ''}): {args.out} ({len(data)} bytes,"
              f" sha256 {result['sha256'][:16]}…); match threshold {thresholds['match']:.4f} for {n_templates}"
              f" templates, margin {args.margin}")
        if delta is not None:
            print(f"full bundle of v{args.version} for devices without v{args.base}: {_full_out(args)}"
                  f" ({len(full_data)} bytes)")
        _print_demographics(demo)
    return 0


def _print_demographics(demo: dict) -> None:
    """The per-group false-match rates at the sealed threshold, one line per group."""
    if "note" in demo:
        print(f"demographic false-match rates: {demo['note']}")
        return
    print(f"within-group false-match rate per comparison at {demo['threshold']:.4f} ({demo['source']}):")
    for name, r in sorted(demo["within_group_fmr"].items()):
        value = f"{r['rate']:.2e}" if r["estimable"] else "not estimable (no false match)"
        print(f"  {name:28s} {value:>30s}  95 % [{r['low']:.1e}, {r['high']:.1e}], {r['pairs']:,} pairs")


def _numbers_only(thresholds: dict) -> dict:
    """The manifest's thresholds hold numbers only (the impostor model's provenance stays in the report)."""
    return {k: v for k, v in thresholds.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
