"""One offer's download on the device (`edge.messaging.sync`): which chunks it still misses and has asked the broker
for, and the file the chunks are assembled into once all are held (on disk, streamed: never in memory)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import EdgeError
from edge.messaging.payloads import Offer
from edge.messaging.topics import WatchlistTopics


class SyncError(EdgeError):
    """A malformed offer or chunk (device side), or a bundle that cannot be offered (operator side)."""

#: The file a complete download is assembled into, inside its version's folder in `incoming/`.
ASSEMBLED = "bundle"


def assemble(folder: Path, n_chunks: int, block: int = 1 << 20) -> str:
    """Concatenate the chunk files `0 … n_chunks-1` in `folder` into `folder/bundle` (0600) and return its sha256
    (hex). Streamed `block` bytes at a time and each chunk deleted once copied, so a bundle never sits in memory
    and costs at most its size (plus one chunk) on disk; symbolic links are refused (OSError ELOOP)."""
    digest = hashlib.sha256()
    fd = os.open(folder / ASSEMBLED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for n in range(n_chunks):
            part = folder / str(n)
            with os.fdopen(os.open(part, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                while piece := f.read(block):
                    digest.update(piece)
                    out.write(piece)
            part.unlink()
        out.flush()
    return digest.hexdigest()


@dataclass
class Download:
    """The offer being fetched from `source`: the chunks still `missing`, and those `requested` (subscribed to)."""

    source: WatchlistTopics
    offer: Offer
    missing: set[int] = field(default_factory=set)
    requested: set[int] = field(default_factory=set)

    @property
    def delta(self) -> bool:
        return self.offer.base is not None

    @property
    def key(self) -> tuple[str, int, str]:
        """(audience, version, bundle sha256): how the sync remembers an offer it failed or set aside."""
        return (self.source.audience, self.offer.version, self.offer.bundle_sha256)

    def topic(self, n: int) -> str:
        return self.source.chunk(self.offer.version, n, self.delta)

    def check(self, n: int, chunk: bytes) -> str | None:
        """Why chunk `n` is not the one the offer announced (its size, then its sha256); None when it is."""
        offer, last = self.offer, len(self.offer.chunks) - 1
        want = offer.chunk_bytes if n < last else offer.bundle_bytes - offer.chunk_bytes * last
        if len(chunk) != want:  # checked before hashing: a lying offer costs at most its declared size
            return f"chunk {n} of version {offer.version} has {len(chunk)} bytes; the offer says {want}"
        if hashlib.sha256(chunk).hexdigest() != offer.chunks[n]:
            return f"chunk {n} of version {offer.version} does not match the offer's sha256"
        return None
