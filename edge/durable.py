"""Durable file writes: a power cut leaves the old file or the new one, never a mix or a stray temp file."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from edge.errors import DataError


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so a rename or a new file in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temp file in the same directory (created with `mode`) → fsync → rename →
    fsync the directory. On any failure the old file is untouched and the temp file removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def move_into_place(src: str | Path, dst: str | Path, mode: int = 0o600) -> None:
    """Replace `dst` with the file `src` durably: `src` made `mode` and fsynced → renamed over `dst` → the
    directory fsynced; across file systems it is copied to a temp file beside `dst` first. A symbolic link at
    `src` is refused (OSError ELOOP). On failure `dst` is untouched."""
    src, dst = Path(src), Path(dst)
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
        os.fsync(fd)
        try:
            os.replace(src, dst)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            try:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode), "wb") as out:
                    with os.fdopen(os.dup(fd), "rb") as f:
                        f.seek(0)
                        shutil.copyfileobj(f, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            src.unlink(missing_ok=True)
    finally:
        os.close(fd)
    fsync_dir(dst.parent)


def private_dir(path: str | Path, chmod_existing: bool = True) -> Path:
    """`path` (and every missing parent) created mode 0700 whatever the umask: it holds keys or personal data. An
    existing `path` is made 0700 too (like ssh's ~/.ssh) unless `chmod_existing` is False; existing parents are
    left as they are."""
    path = Path(path)
    if chmod_existing and path.is_symlink():  # chmod, and whatever the caller does inside, would act on the target
        raise DataError(f"{path} is a symbolic link: refused (a private folder must be a real folder; remove the link)")
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    for level in missing:
        level.mkdir(mode=0o700, exist_ok=True)
        os.chmod(level, 0o700)
    if chmod_existing:
        os.chmod(path, 0o700)
    return path


def private_file(path: str | Path) -> Path:
    """Create `path` empty with mode 0600 if it does not exist (before a library such as SQLite creates it with the
    umask's mode); an existing file is made 0600."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except OSError:
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link: refused (a private file must be a regular file)") from None
        raise
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path
