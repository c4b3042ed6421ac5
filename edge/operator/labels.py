"""Names for subject ids, on the operator side only: a device's events carry the opaque subject id; the operator's
own copy of the watchlist metadata (a build directory's meta.json) says who that is."""

from __future__ import annotations

import json
from pathlib import Path

from edge.errors import DataError

#: Largest meta.json read, bytes (300,000 subjects' ids, labels and categories are ~30 MB).
MAX_META_BYTES = 256 * 2**20


def labels_from_build(build_dir: Path) -> dict[str, str]:
    """subject id → label from a watchlist build directory (`edge watchlist build --out`)."""
    path = Path(build_dir) / "meta.json"
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise DataError(f"{path} is larger than {MAX_META_BYTES // 2**20} MiB: not a build's metadata")
        subjects = json.loads(path.read_bytes())["subjects"]
        ids, labels = subjects["id"], subjects["label"]
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except (KeyError, TypeError, ValueError, RecursionError):
        raise DataError(f"{path} is not a watchlist build's metadata (from `edge watchlist build`)") from None
    return {str(i): str(label) for i, label in zip(ids, labels) if label}
