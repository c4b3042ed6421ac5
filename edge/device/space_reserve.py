"""A little disk space set aside at start, given back when the disk fills: the room the event writer needs to keep
its held events and the audit log's record of what it could not keep (issue 22, F1).

A file of `size` bytes (default 4 MiB: ~500 events with two sealed faces, or the audit records of thousands) is
written in the state directory when there is room for it. `release()` deletes it — the writer calls it at the
first "no space left on device" — and `restore()` writes it again once the disk has room for twice its size."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Bytes set aside by default.
RESERVE_BYTES = 4 * 2**20


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (an OSError, or an error whose message carries one) is the disk or quota being full."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text or "database or disk is full" in text


class SpaceReserve:
    """`path`: the reserve file (in the directory whose disk it protects); `size`: bytes."""

    def __init__(self, path: str | Path, size: int = RESERVE_BYTES) -> None:
        self.path, self.size = Path(path), int(size)

    @property
    def held(self) -> bool:
        """Whether the reserve file is there (space set aside)."""
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def restore(self) -> bool:
        """Write the reserve if it is missing and the disk has room for twice its size; True when it is held."""
        if self.held:
            return True
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, bytes(self.size))  # real blocks (a sparse file would give nothing back)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as err:
            self.path.unlink(missing_ok=True)
            log.debug("space reserve %s not written: %s", self.path, err)
            return False

    def release(self) -> bool:
        """Delete the reserve (the disk is full); True when there was one to give back."""
        if not self.path.exists():
            return False
        try:
            self.path.unlink()
        except OSError:
            return False
        log.warning("disk full: released the %d MiB kept in reserve (%s) for held events and the audit log",
                    self.size // 2**20, self.path)
        return True
