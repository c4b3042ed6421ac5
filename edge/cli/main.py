"""The `edge` command: argument parsing, output formatting and exit codes; the work happens in the modules.

Exit codes: 0 success, 1 a user error (the message names the cause; no traceback), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from edge import __version__
from edge.cli.common import analyzer_from_args as _analyzer
from edge.cli.common import print_json as _print_json
from edge.cli.common import progress as _progress
from edge.errors import EdgeError, NoFaceError


def _verify_threshold(analyzer: Any, override: float | None) -> float:
    if override is not None:
        return override
    return float(analyzer.embedder_info.info.get("thresholds", {}).get("verify_cosine", 0.9))


# --- commands -------------------------------------------------------------------------------------------------

def cmd_detect(args: argparse.Namespace) -> int:
    from edge.vision.annotate import annotate
    from edge.imageio import read_image, write_image

    if args.annotate:  # faces are personal data: a new folder is 0700 whatever the umask
        from edge.durable import private_dir

        if args.annotate.exists() and not args.annotate.is_dir():
            raise EdgeError(f"--annotate {args.annotate} is not a directory")
        private_dir(args.annotate, chmod_existing=False)
    analyzer = _analyzer(args)
    results, failed = [], 0
    for path in args.images:
        entry: dict[str, Any] = {"path": str(path)}
        try:
            rgb = read_image(path)
        except EdgeError as err:
            entry["error"] = str(err)
            failed += 1
            results.append(entry)
            continue
        dets = analyzer.detect(rgb)
        entry["width"], entry["height"] = rgb.shape[1], rgb.shape[0]
        entry["faces"] = [d.to_json() for d in dets]
        if args.annotate:
            out = args.annotate / f"{Path(path).stem}.annotated.jpg"
            write_image(out, annotate(rgb, dets))
            entry["annotated"] = str(out)
        results.append(entry)
    if args.json:
        _print_json({"images": results})
    else:
        for entry in results:
            if "error" in entry:
                print(f"{entry['path']}: error: {entry['error']}")
                continue
            print(f"{entry['path']}: {len(entry['faces'])} face(s)")
            for face in entry["faces"]:
                x0, y0, x1, y1 = face["box"]
                print(f"  box ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f}) px, {x1 - x0:.0f} px wide,"
                      f" score {face['score']:.3f}")
            if "annotated" in entry:
                print(f"  annotated: {entry['annotated']}")
    return 1 if failed else 0


def _best_face(analyzer: Any, path: Path) -> Any:
    from edge.imageio import read_image

    face = analyzer.best_face(read_image(path))
    if face is None:
        raise NoFaceError(f"no face found in {path}")
    return face


def cmd_compare(args: argparse.Namespace) -> int:
    analyzer = _analyzer(args)
    a, b = _best_face(analyzer, args.a), _best_face(analyzer, args.b)
    sim = float(a.embedding @ b.embedding)
    threshold = _verify_threshold(analyzer, args.threshold)
    result = {"similarity": round(sim, 4), "same": sim >= threshold, "threshold": threshold,
              "embedder": analyzer.embedder_info.name}  # the primary model: compare scores its embeddings
    if args.json:
        _print_json(result)
    else:
        verdict = "likely the same person" if result["same"] else "likely different people"
        print(f"similarity {sim:.4f} (cosine; threshold {threshold:.3f}): {verdict} — a candidate for human review")
    return 0


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    from edge.evaluation.pairs import eval_pairs, plot_pairs, read_pairs
    from edge.imageio import read_image

    pairs = read_pairs(args.pairs, args.root)
    analyzer = _analyzer(args)

    def embed(path: Path) -> Any:
        face = analyzer.best_face(read_image(path))
        return None if face is None else face.embedding

    report, sims, same = eval_pairs(pairs, embed, _progress("embedding"))
    report["detector"], report["embedder"] = analyzer.detector_info.name, analyzer.embedder_info.name
    report["flip"] = bool(args.flip)
    if args.plot:
        plot_pairs(args.plot, sims, same, report, title=f"{args.pairs.name}: {report['embedder']}")
        report["plot"] = str(args.plot)
    if args.json:
        _print_json(report)
    else:
        print(f"{report['n_pairs']} pairs ({report['n_genuine']} same, {report['n_impostor']} different), "
              f"{report['n_failed_detect']} without a face in one of the photos")
        print(f"accuracy {report['accuracy']:.4f} at threshold {report['threshold']:.4f} (best on these pairs); "
              f"10-fold {report['accuracy_10fold_mean']:.4f};"
              f" with failed detections {report['accuracy_with_failures']:.4f}")
        print(f"TAR@FAR=1e-3 {report['tar_at_far_1e-3']:.4f} (threshold {report['threshold_at_far_1e-3']:.4f}, "
              f"achieved FAR {report['far_achieved']}); {report['seconds']} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.cli.demo import run_demo
    from edge.paths import samples_dir

    photos = args.photos or samples_dir()
    gallery = None
    if args.gallery:
        gallery = {}
        for item in args.gallery:
            path, _, label = item.partition("=")
            gallery[Path(path)] = label or Path(path).stem
    analyzer = _analyzer(args)
    print(f"edge demo: detector {analyzer.detector_info.name}, embedder {analyzer.embedder_info.name}", flush=True)
    console = None
    if not args.no_console:
        from edge.cli.demo import serve_console

        def console(work, names, print_fn):
            serve_console(work, names, print_fn, args.listen, args.console_seconds)
    summary = run_demo(analyzer, photos, args.workdir, args.video, gallery, print_fn=lambda m: print(m, flush=True),
                       broker_kind=args.broker, console=console)
    return 0 if summary["frames"] else 1


# --- parser ---------------------------------------------------------------------------------------------------

def _vision_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("models")
    g.add_argument("--models-dir", type=Path, help="directory with manifest.json (default: the bundled models/)")
    g.add_argument("--detector", help="detector name in the manifest (default: the int8 full-range BlazeFace)")
    g.add_argument("--embedder", help="embedder name in the manifest (default: the manifest's, MobileFaceNet; "
                   "dlib_resnet_v1_int8 = the former default)")
    g.add_argument("--threads", type=int, default=2, help="CPU threads per model (default 2)")
    g.add_argument("--min-score", type=float, default=0.5, help="detection threshold, probability (default 0.5)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average each chip's embedding with its mirror image's (default on; --no-flip halves the "
                        "embedding cost)")
    g.add_argument("--alignment", choices=("auto", "onet", "dlib5", "keypoints"), default="auto",
                   help="how chips are cut: auto (default) = the embedder's own (onet: MTCNN ONet's five points to the "
                        "ArcFace template, for MobileFaceNet; dlib5: dlib's landmarks and chip, for dlib's ResNet); "
                        "keypoints = BlazeFace's keypoints (cheaper, less accurate)")
    g.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=True,
                   help="fuse the second embedder's score with dlib's (default on; only with --embedder "
                        "dlib_resnet_v1_int8 and its dlib5 alignment)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The `edge` argument parser (its help texts are the command reference)."""
    vision = _vision_parent()
    parser = argparse.ArgumentParser(
        prog="edge", description="Edge face-watchlist appliance: device service and operator tools.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", parents=[vision], help="the whole loop on bundled data, printing match events",
                       description="Enroll listed people from bundled photos, seal and install their watchlist, make a "
                                   "clip in which listed and unlisted people appear, run the real pipeline over it "
                                   "with a local broker, and print the events as the central consumer receives them.")
    p.add_argument("--photos", type=Path, help="folder of the bundled photos (default: tests/data/faces)")
    p.add_argument("--video", type=Path, help="run over this video instead of the generated clip")
    p.add_argument("--gallery", nargs="+", metavar="PHOTO[=LABEL]", help="enroll these photos instead of the demo's")
    p.add_argument("--workdir", type=Path, help="keep the demo's files (clip, outbox, audit log) here")
    p.add_argument("--broker", choices=("auto", "amqtt"), default="auto",
                   help="auto: mosquitto if installed, else the embedded amqtt broker; amqtt: the embedded one")
    p.add_argument("--no-console", action="store_true", help="do not start the review console after the clip")
    p.add_argument("--listen", default="127.0.0.1:8080", help="the console's address (default 127.0.0.1:8080; a free"
                                                               " port if that one is taken)")
    p.add_argument("--console-seconds", type=float, metavar="S", help="stop the console after S seconds"
                                                                      " (default: at Ctrl-C)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("detect", parents=[vision], help="faces per image",
                       description="Detect faces; print boxes (pixels), scores and the 6 BlazeFace keypoints.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="write <name>.annotated.jpg with boxes and keypoints")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("compare", parents=[vision], help="similarity of the largest face in each of two photos",
                       description="Cosine similarity of the largest face in A and in B; 'same' when it reaches "
                                   "the threshold (default: the embedder's, from models/manifest.json).")
    p.add_argument("a", type=Path, metavar="A")
    p.add_argument("b", type=Path, metavar="B")
    p.add_argument("--threshold", type=float, help="cosine similarity threshold for 'same'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_compare)

    ev = sub.add_parser("eval", help="accuracy measurements").add_subparsers(dest="eval_command", metavar="KIND",
                                                                           required=True)
    from edge.cli import audit as cli_audit, bench as cli_bench, console as cli_console, device as cli_device
    from edge.cli import fleet as cli_fleet
    from edge.cli import keys as cli_keys, mqtt as cli_mqtt, run as cli_run, watchlist as cli_watchlist
    from edge.cli import demographics as cli_demographics

    cli_keys.add_parsers(sub)

    watchlist_sub = cli_watchlist.add_parsers(sub, vision, ev)
    cli_demographics.add_parser(ev, vision)
    cli_mqtt.add_parsers(sub, watchlist_sub)
    cli_audit.add_parsers(sub)
    cli_run.add_parsers(sub)
    cli_bench.add_parsers(sub, vision)
    cli_device.add_parsers(sub)
    cli_fleet.add_parsers(sub)
    cli_console.add_parsers(sub)
    p = ev.add_parser("pairs", parents=[vision], help="verification accuracy on labelled pairs",
                      description="Embed every photo of a pairs CSV (path_a,path_b,same[,fold]; paths relative to "
                                  "--root) and report accuracy, 10-fold accuracy and TAR at FAR=1e-3.")
    p.add_argument("--pairs", type=Path, required=True, help="CSV with path_a,path_b,same")
    p.add_argument("--root", type=Path, required=True, help="folder the CSV's paths are relative to")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write similarity histograms and the ROC curve")
    p.set_defaults(func=cmd_eval_pairs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edge` console script. Everything printed goes through `SafeStream` (no terminal escapes
    from data); a user error is one line on stderr and exit 1, never a traceback."""
    import os

    from edge.cli.common import SafeStream

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(out), SafeStream(err)
    try:
        return _run(argv)
    except Exception as exc:  # noqa: BLE001 - a bug, still one line; EDGE_TRACEBACK=1 shows where
        if os.environ.get("EDGE_TRACEBACK"):
            raise
        print(f"edge: internal error: {type(exc).__name__}: {exc} (this is a bug; EDGE_TRACEBACK=1 shows the "
              "traceback)", file=sys.stderr)
        return 70
    finally:
        sys.stdout, sys.stderr = out, err


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeError as err:
        print(f"edge: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file the user named cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        print(f"edge: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge: interrupted", file=sys.stderr)
        return 130
