"""Event ids: UUIDv7 (RFC 9562), time-ordered so an operator's store sorts events by when they were made."""

from __future__ import annotations

import os
import threading
import time
import uuid

_uuid_lock = threading.Lock()
_uuid_last = [0, 0]  # [unix ms, 12-bit counter] of the last UUID made in this process


def uuid7() -> uuid.UUID:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, 12-bit counter (method 1, random start), variant 10,
    62 random bits. Monotonic within the process: same ms → counter + 1; counter overflow or clock going backwards
    → continue from the last timestamp + 1 ms."""
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid_last
        if ms > last_ms:
            counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # top bit clear leaves room to count
        else:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        _uuid_last[:] = [ms, counter]
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def uuid7_unix_ms(value: uuid.UUID | str) -> int:
    """The 48-bit Unix-millisecond timestamp of a UUIDv7."""
    return (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).int >> 80
