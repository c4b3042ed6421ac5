"""Reading a small file whole, as the readers of keys, the trust store, model manifests and files, photos, seal keys
and bundles do: bounded by a size limit, optionally refusing a symbolic link, and with every OS error turned into the
caller's error class as one readable line naming what the file is and where. (Streaming readers — CSV tables, the
audit log, a streamed bundle — and a few JSON readers with their own messages keep their own loops.)"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable

from edge.errors import DataError

_CHUNK = 1 << 16


def read_file(path: str | os.PathLike, what: str, limit: int, error: type[Exception] = DataError, *,
              follow_symlinks: bool = True, check: Callable[[os.stat_result], None] | None = None,
              missing_hint: str = "") -> bytes:
    """The bytes of the file at `path`, at most `limit` of them. `what` names the file in messages ("key file",
    "model manifest"); every refusal is `error(message)`:

    - "<what> not found: <path><missing_hint>"
    - "<what> <path> is a directory"
    - "<what> <path> is a symbolic link: refused" (with `follow_symlinks=False`: a link where the file should be
      is never followed, e.g. one planted in a device's state directory)
    - "<what> <path> is <n> bytes; the limit is <limit> bytes" (from its size before reading, or counted while
      reading a file that grows or has no size, such as a pipe)
    - "cannot read <what> <path>: <the system's reason>"

    `check` is called with the opened file's status before it is read (e.g. to refuse a private key others may
    read: the mode checked is the mode of the file that is read)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}{missing_hint}") from None
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_symlinks and path.is_symlink():
            raise error(f"{what} {path} is a symbolic link: refused") from None
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {path} is a directory")
        if st.st_size > limit:
            raise error(f"{what} {path} is {st.st_size:,} bytes; the limit is {limit:,} bytes")
        if check is not None:
            check(st)
        # one read for a regular file of known size (+1 to see it grew); chunks for anything else
        want = st.st_size + 1 if stat.S_ISREG(st.st_mode) else _CHUNK
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(max(want, _CHUNK), limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = _CHUNK  # the end (or growth) is seen with a small read, not another file-sized buffer
        if total > limit:
            raise error(f"{what} {path} is more than {limit:,} bytes; the limit is {limit:,} bytes")
        return b"".join(chunks)
    except OSError as err:  # EISDIR on some systems, EIO, …
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
