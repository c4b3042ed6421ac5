"""Watchlist sync over MQTT, the device's end of the chunk protocol (no paho here: a transport is injected; the
operator's end, `offer_messages`, is `edge.messaging.offers`).

`WatchlistSync` listens to its own subtree and to every group subtree the broker lets it read. Of the
offers that list it and are newer than the installed version, it takes the newest version, as a delta when that
delta builds on exactly the installed version (and has not failed), else as the full bundle. It subscribes to each
chunk it does not hold yet (a window at a time), stores every chunk whose sha256 matches the offer (ciphertext
only) in `incoming/`, so an interrupted sync resumes, assembles the bundle on disk (streamed: a bundle is never
held in memory) and hands the file to the `WatchlistStore`, which verifies everything (an offer is untrusted; a
forged one can only waste bandwidth). A delta refused for a missing base makes it fetch the full version.
Results, wipes included, go to `<device>/watchlist/state`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from edge.durable import atomic_write, private_dir
from edge.errors import DataError
from edge.install_state import InstalledState, InstallReason, InstallResult, Serving
from edge.messaging.download import ASSEMBLED, Download, SyncError, assemble
from edge.messaging.payloads import Offer, PayloadError, encode_watchlist_state, parse_offer
from edge.messaging.topics import TopicError, Topics, WatchlistTopics, watchlist_filters

#: Chunks requested at a time: the broker queues retained copies for a new subscription, and mosquitto drops
#: what exceeds its per-client queue (max_queued_bytes), so the device asks for a few MiB at a time.
WINDOW = 8
#: Largest bundle an offer may announce, bytes (config watchlist.max_bundle_mb): a Pi has a few GiB of memory and
#: disk; a 300,000-subject list is ~140 MiB.
MAX_BUNDLE_BYTES = 512 * 2**20
#: Seconds without progress after which the requested chunks are asked for again.
STALL_AFTER = 10.0
#: Seconds without a single new chunk after which a download is given up and the next best offer fetched: an offer
#: whose chunks never come (a forged or half-published one) must not keep a device from the versions it can get.
GIVE_UP_AFTER = 60.0


class Transport(Protocol):
    """What sync needs from the MQTT client."""

    def subscribe(self, topic: str, qos: int = 1) -> None: ...
    def unsubscribe(self, topic: str) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any: ...


class Installer(Protocol):
    """What sync needs from the device's `WatchlistStore` (edge.watchlist.device.store)."""

    @property
    def floor(self) -> int | None: ...
    def current(self) -> tuple[Any, dict[str, Any] | None]: ...
    def state(self) -> InstalledState: ...
    def install_file(self, path: Path) -> InstallResult: ...
    def wipe(self, data: bytes) -> InstallResult: ...


#: What a store's state is reported as on watchlist/state when nothing was refused.
REPORTED = {Serving.OK: "installed", Serving.STALE: "stale", Serving.NONE: "none", Serving.WIPED: "wiped"}


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
    wipes: int = 0
    last_reason: str | None = None


class WatchlistSync:
    """Device side. `handle(topic, payload)` is called from the control thread for every message under the
    device's watchlist subtree and the group subtrees. `store` is a started `WatchlistStore`.

    on_result: called with (InstallResult, sha256 hex of the bundle or wipe statement) after every install or wipe
    attempt (the audit trail).
    clock: monotonic seconds (injected by tests). background: run installs and wipes on a worker thread (the
    device: rebuilding a 300,000-subject index takes seconds, and the control thread must keep acknowledging events
    and feeding the watchdog meanwhile); `tick()` then collects the outcome. Off, they run inside `handle`.
    """

    def __init__(self, store: Installer, transport: Transport, device_id: str, incoming_dir: Path, prefix: str = "edge",
                 window: int = WINDOW, stall_after: float = STALL_AFTER,
                 on_result: Callable[[InstallResult, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, background: bool = False,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES, give_up_after: float = GIVE_UP_AFTER) -> None:
        self.store, self.transport, self.on_result, self.clock = store, transport, on_result, clock
        self.max_bundle_bytes, self.give_up_after = max_bundle_bytes, give_up_after
        self.device_id, self.prefix, self.topics = device_id, prefix, Topics(device_id, prefix)
        self.own = WatchlistTopics.for_device(device_id, prefix)
        self.incoming_dir = Path(incoming_dir)
        self.window, self.stall_after = window, stall_after
        self.stats = SyncStats()
        self.offers: dict[tuple[str, bool], tuple[WatchlistTopics, Offer]] = {}
        self.failed: set[tuple[str, int, str]] = set()  # (audience, version, bundle sha256) refused by the store
        self.download: Download | None = None
        self._last_chunk = 0.0  # when the running download last got a new chunk (monotonic seconds)
        self.set_aside: dict[tuple[str, int, str], float] = {}  # offers given up on → when they may be tried again
        self._progress = self.clock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="edge-install") if background else None
        self._pending: tuple[Future[Any], Callable[[Any], None]] | None = None

    @property
    def busy(self) -> bool:
        """An install or wipe is running on the worker thread."""
        return self._pending is not None

    def _run(self, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """`then(work())` now, or on the worker with `then` called from a later `tick()`."""
        if self._worker is None:
            then(work())
        else:
            self._pending = (self._worker.submit(work), then)

    def _collect(self) -> None:
        if self._pending is not None and self._pending[0].done():
            future, then = self._pending
            self._pending = None
            then(future.result())

    def close(self, wait: bool = True) -> None:
        """Stop the worker thread (after a running install: its persist is atomic, so a stop never leaves a mix)."""
        if self._worker is not None:
            self._worker.shutdown(wait=wait)

    @property
    def offer(self) -> Offer | None:
        """The offer being downloaded, if any."""
        return self.download.offer if self.download else None

    def start(self) -> None:
        """Subscribe to offers and wipes (the broker re-sends the retained ones) and report the installed state."""
        for topic in watchlist_filters(self.device_id, self.prefix):
            self.transport.subscribe(topic, 1)
        self.report()

    def _installed_version(self) -> int:
        _, manifest = self.store.current()
        if manifest:
            return int(manifest["version"])
        # Nothing live: after a wipe nothing at or below the wiped version may come back; otherwise (a refused or
        # missing file) the same version may be sent again to repair the device, so everything is wanted.
        if self.store.state().state is Serving.WIPED:
            return self.store.floor or 0
        return 0

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one message; malformed input is counted and reported, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.group is None and parsed.device_id != self.device_id:
                raise SyncError(f"topic {topic!r} belongs to device {parsed.device_id!r}")
            source = (WatchlistTopics.for_group(parsed.group, self.prefix) if parsed.group is not None
                      else self.own)
            if parsed.kind in ("watchlist_manifest", "watchlist_delta"):
                if not payload:  # a retained offer was cleared: so is its download, if it was running
                    key = (source.audience, parsed.kind == "watchlist_delta")
                    self.offers.pop(key, None)
                    self.stats.chunks_ignored += 1
                    d = self.download
                    if d is not None and (d.source.audience, d.offer.base is not None) == key:
                        self._cancel()
                        self._choose()
                    return
                try:
                    offer = parse_offer(payload, source.audience)
                    if (offer.base is not None) != (parsed.kind == "watchlist_delta"):
                        raise PayloadError("watchlist offer on the wrong topic (delta vs full)")
                    if offer.bundle_bytes > self.max_bundle_bytes:
                        raise PayloadError(f"watchlist offer of {offer.bundle_bytes} bytes is over this device's limit"
                                           f" of {self.max_bundle_bytes} bytes (watchlist.max_bundle_mb)")
                except PayloadError as err:  # told on watchlist/state; the installed list keeps serving
                    self.stats.malformed += 1
                    self.stats.last_reason = str(err)
                    self.report(reason=InstallReason.MALFORMED_OFFER, message=str(err)[:1000])
                    return
                self.stats.offers += 1
                if offer.recipients and self.device_id not in offer.recipients:
                    return  # sealed for others: not worth downloading
                self.offers[(source.audience, offer.base is not None)] = (source, offer)
                self._choose()
            elif parsed.kind in ("watchlist_chunk", "watchlist_delta_chunk"):
                version, n = parsed.extra
                self._on_chunk(source, parsed.kind == "watchlist_delta_chunk", version, n, payload)
            elif parsed.kind == "watchlist_wipe":
                if payload:
                    self._on_wipe(payload)
                else:
                    self.stats.chunks_ignored += 1
            else:
                self.stats.chunks_ignored += 1
        except (SyncError, PayloadError, TopicError) as err:
            self.stats.malformed += 1
            self.stats.last_reason = str(err)

    # ------------------------------------------------------------ choosing what to fetch

    def _choose(self) -> None:
        """Start (or switch to) the best download: the newest version; its delta if it builds on what is installed."""
        if self._pending is not None:
            return  # chosen again when the running install ends
        installed = self._installed_version()
        candidates = [(s, o) for s, o in self.offers.values() if o.version > installed
                      and (s.audience, o.version, o.bundle_sha256) not in self.failed
                      and (s.audience, o.version, o.bundle_sha256) not in self.set_aside
                      and (o.base is None or o.base == installed)]
        if not candidates:
            return
        best = max(candidates, key=lambda so: (so[1].version, so[1].base is not None))
        if self.download and (self.download.source, self.download.offer) == best:
            return
        self._begin(*best)

    def _dir(self, offer: Offer) -> Path:
        return self.incoming_dir / f"v{offer.version}-{offer.bundle_sha256[:16]}"

    def _begin(self, source: WatchlistTopics, offer: Offer) -> None:
        self._cancel()
        folder = self._dir(offer)
        try:  # a symbolic link where incoming/ or the version's folder should be is refused, never followed
            private_dir(self.incoming_dir)
            private_dir(folder)
        except DataError as err:
            self.stats.malformed += 1
            self.stats.last_reason = str(err)
            self.report(reason=InstallReason.INCOMING_REFUSED, message=str(err)[:1000])
            return
        for stale in self.incoming_dir.iterdir():
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        held = {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
        self.download = Download(source, offer, set(range(len(offer.chunks))) - held)
        self._progress = self._last_chunk = self.clock()
        self._request_more()
        self._maybe_install()

    def _cancel(self) -> None:
        if self.download:
            for n in self.download.requested:
                self.transport.unsubscribe(self.download.topic(n))
        self.download = None

    def _request_more(self) -> None:
        """Subscribe to the next missing chunks, keeping at most `window` outstanding."""
        d = self.download
        if d is None:
            return
        for n in sorted(d.missing - d.requested):
            if len(d.requested) >= self.window:
                break
            d.requested.add(n)
            self.transport.subscribe(d.topic(n), 1)

    def tick(self, now: float | None = None) -> None:
        """Call periodically: collects a finished background install; re-requests the outstanding chunks when
        nothing arrived for `stall_after` s."""
        self._collect()
        now = self.clock() if now is None else now
        d = self.download
        if d and now - self._last_chunk > self.give_up_after:
            self.stats.rejections += 1
            # Set aside, not failed: a real offer whose chunks were held up (a broker down for minutes) is tried
            # again once the others have had their turn.
            self.set_aside[d.key] = now + 10 * self.give_up_after
            self._cancel()
            self.report(reason=InstallReason.SYNC_TIMEOUT, message=f"no chunk of version {d.offer.version} arrived"
                                                                   f" for {self.give_up_after:g} s: trying the next"
                                                                   " best offer")
            self._choose()
            return
        if d is None and self.set_aside:  # a set-aside offer's turn may have come again
            self.set_aside = {k: t for k, t in self.set_aside.items() if t > now}
            self._choose()
        if d and d.requested and now - self._progress > self.stall_after:
            for n in d.requested:
                self.transport.unsubscribe(d.topic(n))
                self.transport.subscribe(d.topic(n), 1)
            self._progress = now

    def _on_chunk(self, source: WatchlistTopics, delta: bool, version: int, n: int, payload: bytes) -> None:
        d = self.download
        if d is None or d.source != source or d.delta != delta or version != d.offer.version or n not in d.missing:
            self.stats.chunks_ignored += 1  # replayed, stale, cleared or already held
            return
        problem = d.check(n, payload)
        if problem is not None:
            self.stats.chunks_rejected += 1
            self.stats.last_reason = problem
            # Ask again: re-subscribing makes the broker re-send its retained copy.
            self.transport.unsubscribe(d.topic(n))
            self.transport.subscribe(d.topic(n), 1)
            return
        atomic_write(self._dir(d.offer) / str(n), payload)
        d.missing.discard(n)
        d.requested.discard(n)
        self._progress = self._last_chunk = self.clock()
        self.stats.chunks_received += 1
        self.transport.unsubscribe(d.topic(n))
        self._request_more()
        self._maybe_install()

    def _maybe_install(self) -> None:
        """All chunks held: assemble, check and install on the worker (the control thread keeps feeding the
        watchdog meanwhile: a large list is ~140 MiB to copy and hash)."""
        d = self.download
        if d is None or d.missing:
            return
        folder = self._dir(d.offer)
        self.download = None
        offer = d.offer
        self._run(lambda: self._assemble_and_install(folder, offer), lambda out: self._assembled(out, d, folder))

    def _assemble_and_install(self, folder: Path, offer: Offer) -> InstallResult | tuple[InstallReason, str]:
        """Worker side: the assembled file installed, or why it was not assembled (touches no sync state)."""
        try:
            digest = assemble(folder, len(offer.chunks))
        except OSError as err:  # a full disk, or a chunk file removed under us: fetched again later
            return (InstallReason.SYNC_FAILED, f"version {offer.version} could not be assembled in {folder}:"
                                               f" {err.strerror or err}")
        if digest != offer.bundle_sha256:
            return (InstallReason.SYNC_MISMATCH, "the assembled bundle does not match the offer")
        return self.store.install_file(folder / ASSEMBLED)

    def _assembled(self, outcome: InstallResult | tuple[InstallReason, str], d: Download, folder: Path) -> None:
        if not isinstance(outcome, tuple):
            self._installed(outcome, d, folder)
            return
        reason, message = outcome
        if reason is InstallReason.SYNC_FAILED:  # set aside, not failed: the disk may have room later
            self.set_aside[d.key] = self.clock() + 10 * self.give_up_after
        else:
            self.failed.add(d.key)
        self._not_installed(folder, reason, message)

    def _not_installed(self, folder: Path, reason: InstallReason, message: str) -> None:
        """A download that never reached the store: its folder removed, the refusal reported, the next best chosen."""
        shutil.rmtree(folder, ignore_errors=True)
        self.stats.rejections += 1
        self.report(reason=reason, message=message)
        self._choose()

    def _installed(self, result: InstallResult, d: Download, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if self.on_result is not None:
            self.on_result(result, d.offer.bundle_sha256)
        if result.ok:
            self.stats.installs += 1
        else:
            self.stats.rejections += 1
            self.failed.add(d.key)
        self.report(reason=None if result.ok else result.reason, message=result.message)
        self._choose()  # newer offers may be waiting; a refused delta falls back to the full version

    def _on_wipe(self, payload: bytes) -> None:
        if self._pending is not None:  # one at a time: wait for the install, then wipe
            self._pending[0].result()
            self._collect()
        self._run(lambda: self.store.wipe(payload), lambda result: self._wiped(result, payload))

    def _wiped(self, result: InstallResult, payload: bytes) -> None:
        if self.on_result is not None:
            self.on_result(result, hashlib.sha256(payload).hexdigest())
        if result.ok:
            self.stats.wipes += 1
            self._cancel()
            self.report()
        elif result.reason is InstallReason.REPLAYED_WIPE:  # a retained old statement, re-sent on every reconnect
            self.stats.last_reason = result.message
        else:
            self.report(reason=result.reason, message=result.message)

    def report(self, reason: InstallReason | None = None, message: str | None = None) -> None:
        """Publish the installed version (and the last rejection) on the retained state topic."""
        state = self.store.state()
        kind = "rejected" if reason else REPORTED[state.state]
        try:
            body = encode_watchlist_state(state.version, kind, reason, message)
        except PayloadError:  # a message quoting hostile input the state schema refuses: report without it
            body = encode_watchlist_state(state.version, kind, reason, None)
        self.transport.publish(self.topics.watchlist_state, body, 1, True)
