"""Where the appliance finds its read-only data (models, bundled sample photos).

Search order: an environment variable, the source checkout this package runs from, then the system-wide install
location used by the device installer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _first_existing(env: str, candidates: list[Path]) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]


def models_dir() -> Path:
    """Directory holding the .tflite files and `manifest.json` ($EDGE_MODELS_DIR overrides)."""
    return _first_existing(
        "EDGE_MODELS_DIR",
        [_PACKAGE_ROOT / "models", Path(sys.prefix) / "share" / "edge" / "models", Path("/usr/share/edge/models")],
    )


def samples_dir() -> Path:
    """Directory of bundled sample photos used by `edge demo` ($EDGE_SAMPLES_DIR overrides)."""
    return _first_existing(
        "EDGE_SAMPLES_DIR",
        [_PACKAGE_ROOT / "tests" / "data" / "faces", Path(sys.prefix) / "share" / "edge" / "samples",
         Path("/usr/share/edge/samples")],
    )
