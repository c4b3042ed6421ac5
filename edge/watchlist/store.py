"""Device-side install policy and persistence of the watchlist bundle.

`WatchlistStore` decides whether a verified bundle may replace the installed one (no rollback, no second content
for a version, no expired or foreign bundles, the right embedder), turns it into the live object with an injected
`loader`, persists the *encrypted* bundle (temp file → fsync → rename → fsync dir, so a power cut leaves the old or
the new file, never a mix) and then swaps the live object under a lock. After any rejection `installed.bundle` is
byte-identical and the previous live object is still served. Plaintext never touches disk: the only file the store
writes is the encrypted bundle; the loader receives the decrypted payload in memory.

Versions are monotonic per device, across watchlist ids: one device holds one watchlist. The highest version
accepted survives restarts in `installed.version` (version + bundle sha256, HMAC-SHA256 with a key derived from the
device key): at start, an installed bundle older than it, different from it at the same version, or without a valid
record at all is refused (reason "rollback", "same_version_different_content", "install_record_invalid" or
"install_record_missing") and nothing is served until the operator sends a current bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar, Union

from edge.canonical import canonical_json
from edge.durable import atomic_write, private_dir
from edge.keys import PrivateKey, PublicKey, TrustStore, derive_key
from edge.watchlist.bundle import BundleError, OpenedBundle, open_bundle, parse_time, peek_manifest

log = logging.getLogger(__name__)

T = TypeVar("T")
INSTALLED = "installed.bundle"
#: The install record: the highest version accepted and its bundle's sha256, MAC'd with a key derived from the
#: device key, so a rollback of installed.bundle while the service is stopped is caught at start.
RECORD = "installed.version"
RECORD_FORMAT = "edge-wl-install-record/1"
_RECORD_PURPOSE = b"edge-watchlist-install-record/1"


def record_conflict(record: tuple[int, str], version: int, bundle_sha256: str) -> tuple[str, str] | None:
    """(reason, message) when a bundle of `version` with `bundle_sha256` may not be installed over the install
    record (version, sha256): older ("rollback"), or the same version with other bytes; None when it may."""
    floor, sha = record
    if version < floor:
        return "rollback", (f"installed watchlist v{version} is older than v{floor}, the highest this device accepted"
                            " (rolled back while stopped?)")
    if version == floor and bundle_sha256 != sha:
        return "same_version_different_content", (f"installed watchlist v{floor} is not the bundle this device"
                                                  " accepted as that version")
    return None


class RecordError(Exception):
    """The install record exists but does not verify."""


@dataclass(frozen=True)
class InstallResult:
    """Outcome of `WatchlistStore.install`.

    ok: the bundle is (now or already) the installed one. reason: "installed", "already_installed" or a rejection
    code (a `BundleError.reason`, "wrong_embedder", "rollback", "same_version_different_content", "load_failed",
    "persist_failed"; `start` may also record "unreadable"). version: the offered bundle's version when known.
    message: one line for a person.
    """

    ok: bool
    reason: str
    version: int | None
    message: str


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


class WatchlistStore(Generic[T]):
    """The installed watchlist of one device: policy, persistence under `state_dir`, and the live object.

    loader: turns a verified bundle into the object matching uses (e.g. an Annoy index); it may raise to refuse.
    Thread-safe: `install` calls are serialized; `current` and `state` never wait for a loader.
    """

    def __init__(
        self,
        state_dir: str | Path,
        device_id: str,
        device_private: PrivateKey,  # X25519
        trust: Union[TrustStore, Mapping[str, PublicKey]],
        embedder_id: str,
        embedder_sha256: str,
        loader: Callable[[OpenedBundle], T],
    ) -> None:
        self.state_dir = Path(state_dir)
        self.device_id = device_id
        self._device_private = device_private
        self._trust = trust
        self.embedder_id = embedder_id
        self.embedder_sha256 = embedder_sha256
        self._loader = loader
        self._lock = threading.Lock()  # guards the live state below
        self._install_lock = threading.Lock()  # serializes install/start
        self._live: T | None = None
        self._manifest: dict[str, Any] | None = None
        self._bundle_sha256: str | None = None
        # Rollback floor: the installed version, or (if the installed file no longer verifies) the version it claims.
        self._floor: int | None = None
        self._last_rejection: dict[str, str] | None = None

    @property
    def path(self) -> Path:
        """The persisted encrypted bundle."""
        return self.state_dir / INSTALLED

    # ------------------------------------------------------------ public API

    def start(self, now: datetime | None = None) -> None:
        """Load the persisted bundle, if any, re-verifying it; never raises for a bad or missing file.

        An expired bundle is still served and reported "stale"; one that fails verification or loading is reported
        (see `state()["last_rejection"]`) and nothing is served.
        """
        with self._install_lock:
            self._remove_leftover_temps()
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return
            except OSError as err:
                self._reject("unreadable", f"cannot read installed watchlist {self.path}: {err.strerror or err}",
                             now)
                return
            try:
                opened = open_bundle(data, self._device_private, self._trust, expected_device_id=self.device_id,
                                     now=now, allow_expired=True)
            except BundleError as err:
                self._floor = self._claimed_version(data)
                self._reject(err.reason, f"installed watchlist {self.path} no longer verifies: {err}", now)
                return
            problem = self._embedder_problem(opened)
            if problem:
                self._floor = opened.version
                self._reject("wrong_embedder", f"installed watchlist {self.path}: {problem}", now)
                return
            if not self._matches_record(opened, now):
                return
            try:
                live = self._loader(opened)
            except Exception as err:  # noqa: BLE001 - a loader failure must not crash the device
                self._floor = opened.version
                self._reject("load_failed", f"installed watchlist {self.path} could not be loaded: {err}", now)
                return
            self._swap(live, opened)
            if self._expired(opened.manifest, now):
                log.warning("installed watchlist %s v%d expired at %s: serving it as stale", opened.watchlist_id,
                            opened.version, opened.manifest["expires"])

    def _matches_record(self, opened: OpenedBundle, now: datetime | None) -> bool:
        """At start: the installed bundle against the install record (see the module docstring); False = refused,
        with the floor set so that only a current bundle can repair the device."""
        try:
            record = self.read_record()
        except RecordError as err:
            self._floor = opened.version
            self._reject("install_record_invalid", f"installed watchlist refused: {err}; re-send the current"
                                                   " watchlist", now)
            return False
        if record is None:
            self._floor = opened.version
            self._reject("install_record_missing", f"installed watchlist {self.path} has no install record"
                                                   f" ({self.record_path}): it may have been swapped for an older"
                                                   " one; re-send the current watchlist", now)
            return False
        version, _ = record
        conflict = record_conflict(record, opened.version, opened.bundle_sha256)
        if conflict is not None:
            self._floor = version
            self._reject(*conflict, now)
            return False
        if opened.version > version:  # a power cut between persisting the bundle and its record
            self._write_record(opened.version, opened.bundle_sha256)
        return True

    def install(self, data: bytes, now: datetime | None = None) -> InstallResult:
        """Verify `data`, apply the install policy, load, persist and swap; returns what happened."""
        with self._install_lock:
            try:
                opened = open_bundle(data, self._device_private, self._trust, expected_device_id=self.device_id,
                                     now=now)
            except BundleError as err:
                return self._reject(err.reason, str(err), now)
            version, label = opened.version, f"watchlist {opened.watchlist_id} v{opened.version}"
            problem = self._embedder_problem(opened)
            if problem:
                return self._reject("wrong_embedder", f"{label} refused: {problem}", now, version)
            floor = self._floor
            if floor is not None and version < floor:
                return self._reject("rollback", f"{label} refused: version {version} is older than the installed"
                                                f" version {floor} (rollback)", now, version)
            # With nothing verified installed (the floor came from an unverifiable file), the same version may
            # be re-sent to repair the device.
            if floor is not None and version == floor and self._bundle_sha256 is not None:
                if opened.bundle_sha256 != self._bundle_sha256:
                    return self._reject("same_version_different_content",
                                        f"{label} refused: version {version} is already installed with different"
                                        " content; a changed watchlist needs a new version", now, version)
                return InstallResult(True, "already_installed", version, f"{label} is already installed")
            try:
                live = self._loader(opened)
            except Exception as err:  # noqa: BLE001 - any loader failure is a rejection, the old list stays
                return self._reject("load_failed", f"{label} could not be loaded: {err}", now, version)
            try:
                self._persist(data)
            except OSError as err:
                return self._reject("persist_failed", f"{label} could not be saved to {self.path}:"
                                                      f" {err.strerror or err}", now, version)
            self._swap(live, opened)
            log.info("installed %s (%d items)", label, opened.manifest["n_items"])
            return InstallResult(True, "installed", version,
                                 f"installed {label} ({opened.manifest['n_items']} items,"
                                 f" expires {opened.manifest['expires']})")

    def current(self) -> tuple[T | None, dict[str, Any] | None]:
        """The live object and its manifest, or (None, None) when nothing is installed."""
        with self._lock:
            return self._live, self._manifest

    def state(self, now: datetime | None = None) -> dict[str, Any]:
        """{"version", "watchlist_id", "state": "ok" | "stale" | "none", "expires", "last_rejection"}."""
        with self._lock:
            manifest, rejection = self._manifest, self._last_rejection
        if manifest is None:
            return {"version": None, "watchlist_id": None, "state": "none", "expires": None,
                    "last_rejection": dict(rejection) if rejection else None}
        return {"version": manifest["version"], "watchlist_id": manifest["watchlist_id"],
                "state": "stale" if self._expired(manifest, now) else "ok", "expires": manifest["expires"],
                "last_rejection": dict(rejection) if rejection else None}

    # ------------------------------------------------------------ the install record

    @property
    def record_path(self) -> Path:
        """The authenticated install record (highest accepted version)."""
        return self.state_dir / RECORD

    def _record_mac(self, version: int, bundle_sha256: str) -> str:
        body = canonical_json({"device_id": self.device_id, "version": version, "bundle_sha256": bundle_sha256})
        return hmac.new(derive_key(self._device_private, _RECORD_PURPOSE), body, hashlib.sha256).hexdigest()

    def _write_record(self, version: int, bundle_sha256: str) -> None:
        doc = {"format": RECORD_FORMAT, "device_id": self.device_id, "version": version,
               "bundle_sha256": bundle_sha256, "mac": self._record_mac(version, bundle_sha256)}
        atomic_write(self.record_path, canonical_json(doc), 0o600)

    def read_record(self) -> tuple[int, str] | None:
        """(version, bundle sha256) of a valid install record; None when there is none; RecordError when it
        exists but does not verify (edited, another device's, or not a record)."""
        try:
            raw = self.record_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if len(raw) > 4096:
                raise ValueError("too large")
            doc = json.loads(raw)
            version, sha = doc["version"], doc["bundle_sha256"]
            ok = (doc.get("format") == RECORD_FORMAT and doc.get("device_id") == self.device_id
                  and type(version) is int and isinstance(sha, str)
                  and hmac.compare_digest(str(doc.get("mac", "")), self._record_mac(version, sha)))
        except (ValueError, KeyError, TypeError, RecursionError):
            ok = False
        if not ok:
            raise RecordError(f"{self.record_path} does not verify with this device's key (edited or not ours)")
        return version, sha

    # ------------------------------------------------------------ internals

    def _embedder_problem(self, opened: OpenedBundle) -> str | None:
        embedder = opened.manifest["embedder"]
        if embedder["id"] != self.embedder_id or embedder["sha256"] != self.embedder_sha256:
            return (f"it was built for embedder {embedder['id']} (sha256 {embedder['sha256'][:12]}…), this device"
                    f" runs {self.embedder_id} (sha256 {self.embedder_sha256[:12]}…)")
        return None

    @staticmethod
    def _expired(manifest: Mapping[str, Any], now: datetime | None) -> bool:
        return parse_time(manifest["expires"]) <= _now(now)

    @staticmethod
    def _claimed_version(data: bytes) -> int | None:
        """The version an unverifiable installed file claims: kept as the rollback floor, never trusted otherwise."""
        try:
            version = peek_manifest(data).get("version")
        except BundleError:
            return None
        return version if type(version) is int else None

    def _reject(self, reason: str, message: str, now: datetime | None,
                version: int | None = None) -> InstallResult:
        log.warning("watchlist rejected (%s): %s", reason, message)
        rejection = {"reason": reason, "message": message, "at": _now(now).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            self._last_rejection = rejection
        return InstallResult(False, reason, version, message)

    def _swap(self, live: T, opened: OpenedBundle) -> None:
        with self._lock:
            self._live, self._manifest = live, opened.manifest
            self._bundle_sha256, self._floor = opened.bundle_sha256, opened.version

    def _persist(self, data: bytes) -> None:
        """Replace `installed.bundle` atomically and durably, then its install record; on failure the old file is
        untouched. Bundle first: a power cut between the two leaves a newer bundle than the record, which start
        accepts (never an older one)."""
        private_dir(self.state_dir)
        atomic_write(self.path, data, 0o600)
        self._write_record(int(peek_manifest(data)["version"]), hashlib.sha256(data).hexdigest())

    def _remove_leftover_temps(self) -> None:
        """Delete temp files a power cut left behind mid-persist (they are never the installed bundle)."""
        if self.state_dir.is_dir():
            for name in (INSTALLED, RECORD):
                for leftover in self.state_dir.glob(f".{name}.*.tmp"):
                    leftover.unlink(missing_ok=True)
