"""Helpers shared by the `edge` sub-command modules: JSON output, progress bars, the analyzer from options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable


def print_json(obj: Any) -> None:
    """Indented JSON on stdout."""
    print(json.dumps(obj, indent=2))


def progress(desc: str) -> Callable:
    """tqdm progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


def analyzer_from_args(args: argparse.Namespace) -> Any:
    """A FaceAnalyzer for the vision options every vision command takes (--detector, --threads, --flip …)."""
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(
        detector=args.detector, embedder=args.embedder, threads=args.threads, min_score=args.min_score,
        flip=args.flip, models_dir=args.models_dir, alignment=getattr(args, "alignment", "dlib5"), fusion=getattr(args, "fusion", True)))
