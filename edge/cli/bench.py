"""`edge bench`: argument handling and output for the pipeline benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.errors import EdgeError


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.evaluation.pipeline_bench import run_bench
    from edge.cli.common import analyzer_from_args
    from edge.paths import samples_dir

    bundle = None
    if args.bundle:
        if not (args.device_key and args.operator_key):
            raise EdgeError("--bundle needs --device-key and --operator-key")
        bundle = (args.bundle, args.device_key, args.operator_key)
    report = run_bench(analyzer_from_args(args), args.video, args.photos or samples_dir(), args.pace,
                       args.watchlist_size, args.max_seconds, bundle)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        s = report["stage_ms"]
        print(f"{report['frames']} frames in {report['seconds']} s: {report['fps']} fps ({report['pace']}), "
              f"{report['faces']} faces, {report['embeddings']} embeddings, {report['events']} events, "
              f"{report['frames_dropped']} frames dropped")
        for stage in ("detect", "embed", "match", "frame", "frame_to_event"):
            if stage in s:
                print(f"  {stage:15s} p50 {s[stage]['p50']:8.2f} ms   p99 {s[stage]['p99']:8.2f} ms")
        print(f"  CPU {report['cpu_percent']} % of one core, RSS {report['rss_mb']} MiB (peak {report['max_rss_mb']}), "
              f"watchlist {report['watchlist_size']} templates")
    return 0


def add_parsers(sub: argparse._SubParsersAction, vision: argparse.ArgumentParser) -> None:
    """Register `edge bench`."""
    p = sub.add_parser("bench", parents=[vision], help="end-to-end and per-stage speed over a video",
                       description="Run the real pipeline over a video (default: the demo clip) and report fps, "
                                   "per-stage p50/p99 latency, CPU use and RSS.")
    p.add_argument("--video", type=Path, help="video file (default: the generated demo clip)")
    p.add_argument("--photos", type=Path,
                   help="bundled photos for the demo clip and gallery (default tests/data/faces)")
    p.add_argument("--pace", choices=["fast", "realtime"], default="fast",
                   help="fast: unthrottled (default); realtime: at the file's frame rate")
    p.add_argument("--watchlist-size", type=int, default=2, help="templates in the watchlist (demo people + random)")
    p.add_argument("--max-seconds", type=float, help="stop after this long")
    p.add_argument("--bundle", type=Path, help="load the watchlist from this sealed bundle, as a device does")
    p.add_argument("--device-key", type=Path, help="device private key for --bundle")
    p.add_argument("--operator-key", type=Path, help="operator public key for --bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
