"""Watchlist sync over MQTT, both ends of the chunk protocol (no paho here: a transport is injected).

Operator: `offer_messages(bundle)` → one retained *offer* on `edge/<device>/watchlist/manifest` (version, bundle
sha256 and size, chunk size, the sha256 of every chunk) and retained chunks on `.../watchlist/chunk/<version>/<n>`.
Retained messages let a device that was offline catch up on reconnect without the broker's bounded offline queue.

Device (`WatchlistSync`): on an offer newer than the installed version it subscribes to each chunk it does not
hold yet (a window at a time), stores every chunk whose sha256 matches the offer (ciphertext only) in `incoming/`, and unsubscribes
it, so a sync interrupted half-way resumes without fetching the chunks it already has. With all chunks it
assembles the bundle and hands it to the `WatchlistStore`, which verifies everything (the offer itself is
untrusted; a forged one can only waste bandwidth), and reports the installed version or the rejection on
`.../watchlist/state`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from edge.durable import atomic_write, private_dir
from edge.errors import EdgeError
from edge.messaging.payloads import MAX_CHUNKS, Offer, PayloadError, encode_offer, encode_watchlist_state, parse_offer
from edge.messaging.topics import TopicError, Topics

DEFAULT_CHUNK_BYTES = 1 << 20
#: Chunks requested at a time: the broker queues retained copies for a new subscription, and mosquitto drops
#: what exceeds its per-client queue (max_queued_bytes), so the device asks for a few MiB at a time.
WINDOW = 8
#: Seconds without progress after which the requested chunks are asked for again.
STALL_AFTER = 10.0


class SyncError(EdgeError):
    """A malformed offer or chunk."""


class Transport(Protocol):
    """What sync needs from the MQTT client."""

    def subscribe(self, topic: str, qos: int = 1) -> None: ...
    def unsubscribe(self, topic: str) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any: ...


def offer_messages(bundle: bytes, device_id: str, version: int, prefix: str = "edge",
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained: the chunks first, then the offer that announces them."""
    topics = Topics(device_id, prefix)
    chunks = [bundle[i:i + chunk_bytes] for i in range(0, len(bundle), chunk_bytes)]
    if len(chunks) > MAX_CHUNKS:
        raise SyncError(f"bundle of {len(bundle)} bytes needs {len(chunks)} chunks; raise the chunk size")
    try:
        offer = encode_offer(device_id, version, hashlib.sha256(bundle).hexdigest(), len(bundle), chunk_bytes,
                             [hashlib.sha256(c).hexdigest() for c in chunks])
    except PayloadError as err:
        raise SyncError(str(err)) from None
    messages = [(topics.watchlist_chunk(version, n), c) for n, c in enumerate(chunks)]
    messages.append((topics.watchlist_manifest, offer))
    return messages


@dataclass
class SyncStats:
    """Counters for health reports."""

    offers: int = 0
    chunks_received: int = 0
    chunks_rejected: int = 0
    chunks_ignored: int = 0
    malformed: int = 0
    installs: int = 0
    rejections: int = 0
    last_reason: str | None = None


class WatchlistSync:
    """Device side. `handle(topic, payload)` is called from the control thread for every message under
    `<prefix>/<device>/watchlist/`. `store` is a started `WatchlistStore` (anything with install/current/state).

    on_result: called with (InstallResult, bundle bytes) after every install attempt (the device's audit trail).
    clock: monotonic seconds (injected by tests).
    """

    def __init__(self, store: Any, transport: Transport, device_id: str, incoming_dir: Path, prefix: str = "edge",
                 window: int = WINDOW, stall_after: float = STALL_AFTER,
                 on_result: Callable[[Any, bytes], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.transport, self.on_result, self.clock = store, transport, on_result, clock
        self.device_id, self.prefix, self.topics = device_id, prefix, Topics(device_id, prefix)
        self.incoming_dir = Path(incoming_dir)
        self.window, self.stall_after = window, stall_after
        self.stats = SyncStats()
        self.offer: Offer | None = None
        self._missing: set[int] = set()
        self._requested: set[int] = set()
        self._progress = self.clock()

    def start(self) -> None:
        """Subscribe to offers (the broker re-sends the retained one) and report the installed state."""
        self.transport.subscribe(self.topics.watchlist_manifest, 1)
        self.report()

    def _installed_version(self) -> int:
        _, manifest = self.store.current()
        return int(manifest["version"]) if manifest else 0

    def _dir(self, offer: Offer) -> Path:
        return self.incoming_dir / f"v{offer.version}-{offer.bundle_sha256[:16]}"

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one message; malformed input is counted and reported, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.device_id != self.device_id:
                raise SyncError(f"topic {topic!r} belongs to device {parsed.device_id!r}")
            if parsed.kind == "watchlist_manifest":
                try:
                    offer = parse_offer(payload, self.device_id)
                except PayloadError as err:  # told on watchlist/state; the installed list keeps serving
                    self.stats.malformed += 1
                    self.stats.last_reason = str(err)
                    self.report(reason="malformed_offer", message=str(err)[:1000])
                    return
                self._on_offer(offer)
            elif parsed.kind == "watchlist_chunk":
                self._on_chunk(*parsed.extra, payload)
            else:
                self.stats.chunks_ignored += 1
        except (SyncError, PayloadError, TopicError) as err:
            self.stats.malformed += 1
            self.stats.last_reason = str(err)

    def _on_offer(self, offer: Offer) -> None:
        self.stats.offers += 1
        if offer.version <= self._installed_version():
            return  # already installed, or a replayed older offer: the store would refuse it anyway
        if self.offer == offer:
            return  # the same offer again (e.g. re-sent on reconnect): keep going
        if self.offer:
            for n in self._requested:
                self.transport.unsubscribe(self.topics.watchlist_chunk(self.offer.version, n))
        self._requested = set()
        self.offer = offer
        folder = self._dir(offer)
        private_dir(folder)
        for stale in self.incoming_dir.iterdir():
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        held = {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
        self._missing = set(range(len(offer.chunks))) - held
        self._progress = self.clock()
        self._request_more()
        self._maybe_install()

    def _request_more(self) -> None:
        """Subscribe to the next missing chunks, keeping at most `window` outstanding."""
        for n in sorted(self._missing - self._requested):
            if len(self._requested) >= self.window:
                break
            self._requested.add(n)
            self.transport.subscribe(self.topics.watchlist_chunk(self.offer.version, n), 1)

    def tick(self, now: float | None = None) -> None:
        """Call periodically: re-requests the outstanding chunks when nothing arrived for `stall_after` s."""
        now = self.clock() if now is None else now
        if self.offer and self._requested and now - self._progress > self.stall_after:
            for n in self._requested:
                t = self.topics.watchlist_chunk(self.offer.version, n)
                self.transport.unsubscribe(t)
                self.transport.subscribe(t, 1)
            self._progress = now

    def _on_chunk(self, version: int, n: int, payload: bytes) -> None:
        offer = self.offer
        if offer is None or version != offer.version or n not in self._missing:
            self.stats.chunks_ignored += 1  # replayed, stale or already held
            return
        if hashlib.sha256(payload).hexdigest() != offer.chunks[n]:
            self.stats.chunks_rejected += 1
            self.stats.last_reason = f"chunk {n} of version {version} does not match the offer's sha256"
            # Ask again: re-subscribing makes the broker re-send its retained copy.
            t = self.topics.watchlist_chunk(version, n)
            self.transport.unsubscribe(t)
            self.transport.subscribe(t, 1)
            return
        atomic_write(self._dir(offer) / str(n), payload)
        self._missing.discard(n)
        self._requested.discard(n)
        self._progress = self.clock()
        self.stats.chunks_received += 1
        self.transport.unsubscribe(self.topics.watchlist_chunk(version, n))
        self._request_more()
        self._maybe_install()

    def _maybe_install(self) -> None:
        offer = self.offer
        if offer is None or self._missing:
            return
        folder = self._dir(offer)
        data = b"".join((folder / str(n)).read_bytes() for n in range(len(offer.chunks)))
        self.offer = None
        shutil.rmtree(folder, ignore_errors=True)
        if hashlib.sha256(data).hexdigest() != offer.bundle_sha256:
            self.stats.rejections += 1
            self.report(reason="sync_mismatch", message="the assembled bundle does not match the offer")
            return
        result = self.store.install(data)
        if self.on_result is not None:
            self.on_result(result, data)
        if result.ok:
            self.stats.installs += 1
        else:
            self.stats.rejections += 1
        self.report(reason=None if result.ok else result.reason, message=result.message)

    def report(self, reason: str | None = None, message: str | None = None) -> None:
        """Publish the installed version (and the last rejection) on the retained state topic."""
        state = self.store.state()
        kind = "rejected" if reason else {"ok": "installed"}.get(state.get("state"), state.get("state") or "none")
        try:
            body = encode_watchlist_state(state.get("version"), kind, reason, message)
        except PayloadError:  # a message quoting hostile input the state schema refuses: report without it
            body = encode_watchlist_state(state.get("version"), kind, reason, None)
        self.transport.publish(self.topics.watchlist_state, body, 1, True)
