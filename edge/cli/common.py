"""Helpers shared by the `edge` sub-command modules: JSON output, progress bars, the analyzer from options."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Callable, TextIO

#: What may not reach a terminal raw: C0 controls but tab, newline and carriage return; DEL; C1 controls; the
#: bidirectional overrides (text that reads differently from what it is).
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """`text` with every terminal control character shown as an escape (ESC → \\x1b), so printed data (subject
    ids, labels, file names, messages from hostile input) can neither recolour nor rewrite the operator's screen."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


class SafeStream:
    """A text stream that escapes control characters in everything written to it (`escape_controls`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(escape_controls(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


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
        flip=args.flip, models_dir=args.models_dir, alignment=getattr(args, "alignment", "auto"),
        fusion=getattr(args, "fusion", True)))
