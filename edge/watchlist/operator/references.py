"""Reference chips: the aligned faces a watchlist build enrolled, kept on the operator's side only so that a reviewer
sees the listed person's enrolled face beside the captured one.

`edge watchlist build` writes them into the build directory's `references/` (0700; each file 0600, a JPEG named
by its template's index, `0000017.jpg`), spooled to disk as enrollment goes so memory stays flat at any list size.
They are never part of a payload, a bundle or a delta: a device never holds a photo of anyone. The console reads
them back by subject id through the build's meta.json (`References`), at most `PER_SUBJECT` per subject, each
file size-limited and checked to be a JPEG.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import private_dir
from edge.errors import DataError

DIR = "references"
#: Largest reference file read back, bytes (a 150-px chip at quality 90 is ~10 KiB).
MAX_REFERENCE_BYTES = 256 * 1024
#: References shown per subject.
PER_SUBJECT = 2
#: JPEG quality of a reference chip (operator side: no size budget as tight as an event's).
QUALITY = 90
#: Largest meta.json read, bytes (300,000 subjects' ids, labels and categories are ~30 MB).
MAX_META_BYTES = 256 * 2**20


def chip_jpeg(chip: np.ndarray, quality: int = QUALITY) -> bytes:
    """An aligned face chip (RGB uint8) as JPEG bytes."""
    from edge.vision.jpeg import encode_jpeg

    jpeg = encode_jpeg(chip, quality)
    if jpeg is None:
        raise DataError("a reference chip could not be encoded as JPEG")
    return jpeg


def read_build_meta(build_dir: Path, use: Any) -> Any:
    """`use(meta)` of a build directory's meta.json (size-limited): DataError, one line, when the file cannot be
    read or `use` finds it is not a build's metadata (a KeyError, TypeError, ValueError or IndexError)."""
    path = Path(build_dir) / "meta.json"
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise DataError(f"{path} is larger than {MAX_META_BYTES // 2**20} MiB: not a build's metadata")
        return use(json.loads(path.read_bytes()))
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except (KeyError, TypeError, ValueError, IndexError, RecursionError):
        raise DataError(f"{path} is not a watchlist build's metadata (from `edge watchlist build`)") from None


class ReferenceSpool:
    """Reference chips written as enrollment accepts each template (`add`), into a private temporary directory
    beside the build; `commit(build_dir)` moves it in as `references/`, `discard()` removes it."""

    def __init__(self, near: Path) -> None:
        parent = Path(near).resolve().parent
        private_dir(parent, chmod_existing=False)
        self.path = Path(tempfile.mkdtemp(prefix=f".{Path(near).name}.references-", dir=parent))
        os.chmod(self.path, 0o700)
        self.count = 0

    def add(self, template_index: int, chip: np.ndarray | None) -> None:
        """Keep the chip of template `template_index` (nothing when the embedder gave no chip)."""
        if chip is not None:  # no fsync per file (300,000 of them): `commit` syncs the directory once
            fd = os.open(self.path / f"{int(template_index):07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(chip_jpeg(chip))
            self.count += 1

    def commit(self, build_dir: Path) -> Path:
        """Replace `build_dir`/references with the spooled chips; returns its path."""
        target = Path(build_dir) / DIR
        if target.exists():
            shutil.rmtree(target)
        os.sync()  # the chips are on disk before the build names them
        os.replace(self.path, target)
        return target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class References:
    """The reference chips of a build directory, by subject id (`images`). A build made before references were
    kept, or without them, simply has none (`available` is False)."""

    def __init__(self, build_dir: Path) -> None:
        self.dir = Path(build_dir) / DIR
        self.available = self.dir.is_dir()
        self._templates: dict[str, list[int]] = {}
        if not self.available:
            return
        read_build_meta(build_dir, self._index)

    def _index(self, meta: dict[str, Any]) -> None:
        """Subject id → its first `PER_SUBJECT` template indexes, from the build's items."""
        ids = meta["subjects"]["id"]
        for template, subject in enumerate(meta["items"]):
            kept = self._templates.setdefault(str(ids[int(subject)]), [])
            if len(kept) < PER_SUBJECT:
                kept.append(template)

    def images(self, subject_id: str) -> list[bytes]:
        """Up to `PER_SUBJECT` enrolled chips of `subject_id` as JPEG bytes (missing, oversized or non-JPEG files
        are skipped), first enrolled first."""
        out = []
        for template in self._templates.get(subject_id, []):
            path = self.dir / f"{template:07d}.jpg"
            try:
                with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
                    data = fh.read(MAX_REFERENCE_BYTES + 1)
            except OSError:
                continue
            if len(data) <= MAX_REFERENCE_BYTES and data.startswith(b"\xff\xd8\xff"):
                out.append(data)
        return out
