"""The operator's archive of sealed versions: the full plaintext content of every version sealed, so that the next
version can be sealed as a delta on it (`edge watchlist seal --base N`). Plaintext (names, templates): the folder
is 0700 and every file 0600, and it stays on the operator machine like the build directories.

    <releases>/<watchlist_id>/v<N>.payload    the packed full payload of version N
    <releases>/<watchlist_id>/v<N>.json       {"version", "content_sha256", "n_items", "n_subjects", "sealed"}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge.canonical import canonical_json
from edge.durable import atomic_write, private_dir
from edge.errors import DataError
from edge.watchlist.payload import content_sha256


def _paths(root: Path, watchlist_id: str, version: int) -> tuple[Path, Path]:
    folder = Path(root) / watchlist_id
    return folder / f"v{version}.payload", folder / f"v{version}.json"


def save_release(root: Path, watchlist_id: str, version: int, packed: bytes, n_items: int, n_subjects: int,
                 force: bool = False) -> str:
    """Archive version `version`'s full content; returns its content hash. A version already archived with other
    content is refused (one version, one content) unless `force`."""
    payload_path, info_path = _paths(root, watchlist_id, version)
    content = content_sha256(packed)
    if info_path.exists() and not force:
        try:
            old = json.loads(info_path.read_text()).get("content_sha256")
        except (OSError, ValueError):
            old = None
        if old != content:
            raise DataError(f"version {version} of {watchlist_id!r} was already sealed with other content"
                            f" ({info_path}); use a new version number (or --force to overwrite the archive)")
    private_dir(Path(root))
    private_dir(payload_path.parent)
    atomic_write(payload_path, packed, 0o600)
    atomic_write(info_path, canonical_json({"version": version, "content_sha256": content, "n_items": n_items,
                                            "n_subjects": n_subjects,
                                            "sealed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}), 0o600)
    return content


def load_release(root: Path, watchlist_id: str, version: int) -> bytes:
    """The packed full payload of an archived version, checked against its recorded content hash."""
    payload_path, info_path = _paths(root, watchlist_id, version)
    try:
        packed = payload_path.read_bytes()
        want = json.loads(info_path.read_text())["content_sha256"]
    except FileNotFoundError:
        raise DataError(f"version {version} of {watchlist_id!r} is not in the release archive {root} (it keeps every"
                        " version sealed there; pass --releases DIR if it lives elsewhere)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{info_path} is not a readable release record ({type(err).__name__})") from None
    if content_sha256(packed) != want:
        raise DataError(f"{payload_path} does not match its recorded content hash (corrupt or edited)")
    return packed
