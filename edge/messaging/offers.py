"""The operator's end of watchlist sync over MQTT (the device's is `edge.messaging.sync`).

`offer_messages(bundle, source, …)` → retained chunks on `<source>/chunk/<version>/<n>` (a delta's on
`<source>/delta/chunk/…`) and the retained *offer* that announces them on `<source>/manifest` (`delta/manifest`):
version, base, bundle sha256 and size, chunk size, every chunk's sha256, the recipients. A source is a device's own
watchlist subtree or a group's (`WatchlistTopics`); a group's bundle is published once for all its members.
Retained messages let a device that was offline catch up on reconnect without the broker's bounded offline queue.
"""

from __future__ import annotations

import hashlib

from edge.messaging.download import SyncError
from edge.messaging.payloads import MAX_CHUNKS, Offer, PayloadError, encode_offer
from edge.messaging.topics import WatchlistTopics

DEFAULT_CHUNK_BYTES = 1 << 20


def offer_messages(bundle: bytes, source: WatchlistTopics | str, version: int, prefix: str = "edge",
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, base: int | None = None,
                   recipients: list[str] | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained: the chunks first, then the offer that announces them.
    source: the subtree (a device id is taken as that device's own). base: a delta's base version."""
    if isinstance(source, str):
        source = WatchlistTopics.for_device(source, prefix)
    delta = base is not None
    chunks = [bundle[i:i + chunk_bytes] for i in range(0, len(bundle), chunk_bytes)]
    if len(chunks) > MAX_CHUNKS:
        raise SyncError(f"bundle of {len(bundle)} bytes needs {len(chunks)} chunks; raise the chunk size")
    try:
        offer = encode_offer(source.audience, version, hashlib.sha256(bundle).hexdigest(), len(bundle), chunk_bytes,
                             [hashlib.sha256(c).hexdigest() for c in chunks], base, recipients)
    except PayloadError as err:
        raise SyncError(str(err)) from None
    messages = [(source.chunk(version, n, delta), c) for n, c in enumerate(chunks)]
    messages.append((source.offer(delta), offer))
    return messages


def clear_messages(source: WatchlistTopics, offer: Offer) -> list[tuple[str, bytes]]:
    """Empty retained messages that delete an old offer's chunks from the broker (publish after the new offer)."""
    delta = offer.base is not None
    return [(source.chunk(offer.version, n, delta), b"") for n in range(len(offer.chunks))]
