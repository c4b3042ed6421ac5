"""Names for subject ids, on the operator side only: a device's events carry the opaque subject id; the operator's
own copy of the watchlist metadata (a build directory's meta.json) says who that is."""

from __future__ import annotations

from pathlib import Path

from edge.watchlist.operator.references import read_build_meta


def labels_from_build(build_dir: Path) -> dict[str, str]:
    """subject id → label from a watchlist build directory (`edge watchlist build --out`)."""
    def labels(meta: dict) -> dict[str, str]:
        subjects = meta["subjects"]
        pairs = zip(subjects["id"], subjects["label"], strict=False)  # ids past the last label stay unnamed
        return {str(i): str(label) for i, label in pairs if label}

    return read_build_meta(build_dir, labels)
