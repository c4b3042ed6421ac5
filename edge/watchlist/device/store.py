"""Device-side install policy and persistence of the watchlist bundle.

`WatchlistStore` decides whether a verified bundle may replace the installed one (no rollback, no second content
for a version, no expired or foreign bundles, the right embedder), turns it into the live object with an injected
`loader`, persists the *encrypted* bundle (temp file → fsync → rename → fsync dir, so a power cut leaves the old or
the new file, never a mix) and then swaps the live object under a lock. After any rejection `installed.bundle` is
byte-identical and the previous live object is still served. Plaintext never touches disk: the only file the store
writes is the encrypted bundle; the loader receives the decrypted payload in memory.

A delta bundle (kind "delta") is applied only on top of exactly its base version and content: the store re-opens
the installed bundle, rebuilds the full payload (`edge.watchlist.delta`), checks its content hash against the
signed manifest, loads it while the old list keeps serving, and persists it as a *local bundle* (the signed header
+ the rebuilt payload under a device-derived key); a missing or different base is refused with "base_missing", and
the sync then fetches the full version. A signed wipe statement (`wipe`) drops the list from memory and disk.

Versions are monotonic per device, across watchlist ids: one device holds one watchlist. The highest version
accepted survives restarts in `installed.version` (version + content sha256 from the signed manifest, HMAC-SHA256
with a key derived from the device key; "wiped" after a wipe): at start, an installed bundle older than it, different from it at the same version, or without a valid
record at all is refused (reason "rollback", "same_version_different_content", "install_record_invalid" or
"install_record_missing") and nothing is served until the operator sends a current bundle.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar, Union

from edge.durable import atomic_write, move_into_place, private_dir
from edge.keys import PrivateKey, PublicKey, TrustStore
from edge.watchlist.device.local import seal_local
from edge.watchlist.device.unseal import open_bundle, open_bundle_file
from edge.watchlist.device.verify import verify_wipe
from edge.watchlist.frame import BundleError, OpenedBundle, peek_manifest
from edge.watchlist.manifest import parse_time
from edge.watchlist.delta import DeltaError, WrongBase, apply_bytes
from edge.watchlist.payload import PayloadError, content_sha256
from edge.watchlist.device.record import RECORD, WIPED, InstallRecord, RecordError, record_conflict  # noqa: F401

log = logging.getLogger(__name__)

T = TypeVar("T")
INSTALLED = "installed.bundle"
class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InstallResult:
    """Outcome of `WatchlistStore.install`.

    ok: the bundle is (now or already) the installed one. reason: "installed", "already_installed" or a rejection
    code (a `BundleError.reason`, "wrong_embedder", "rollback", "same_version_different_content", "base_missing",
    "load_failed", "persist_failed"; `start` may also record "unreadable"); `wipe` gives "wiped" or a refusal. version: the offered bundle's version when known.
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
        self._record = InstallRecord(self.state_dir / RECORD, device_id, device_private)
        self._lock = threading.Lock()  # guards the live state below
        self._install_lock = threading.Lock()  # serializes install/start
        self._live: T | None = None
        self._manifest: dict[str, Any] | None = None
        self._content: str | None = None
        self._wiped = False
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
            try:  # streamed from the file straight into memfds: never the whole bundle or plaintext in memory
                opened = open_bundle_file(self.path, self._device_private, self._trust,
                                          expected_device_id=self.device_id, now=now, allow_expired=True)
            except FileNotFoundError:
                self._floor_from_record(now)
                return
            except OSError as err:
                self._reject("unreadable", f"cannot read installed watchlist {self.path}: {err.strerror or err}",
                             now)
                return
            except BundleError as err:
                self._floor = self._claimed_version(self._head())
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
        conflict = record_conflict(record, opened.version, opened.content_sha256)
        if conflict is not None:
            self._floor = version
            self._reject(*conflict, now)
            return False
        if opened.version > version:  # a power cut between persisting the bundle and its record
            self._write_record(opened.version, opened.content_sha256)
        return True

    def install(self, data: bytes, now: datetime | None = None) -> InstallResult:
        """Verify `data` (a full or delta bundle), apply the install policy, load, persist and swap."""
        return self._install(lambda: open_bundle(data, self._device_private, self._trust,
                                                 expected_device_id=self.device_id, now=now),
                             lambda: atomic_write(self.path, data, 0o600), now)

    def install_file(self, path: Path, now: datetime | None = None) -> InstallResult:
        """`install` for a bundle on disk (the sync's assembled download): a full bundle is verified and decrypted
        in chunks (`open_bundle_file`), never held whole in memory, and persisted by moving `path` into place (so
        `path` is gone after it installed); a delta is small and read whole. `path` is the caller's to remove
        otherwise."""
        return self._install(lambda: open_bundle_file(path, self._device_private, self._trust,
                                                      expected_device_id=self.device_id, now=now),
                             lambda: move_into_place(path, self.path, 0o600), now)

    def _install(self, open_: Callable[[], OpenedBundle], persist_full: Callable[[], None],
                 now: datetime | None) -> InstallResult:
        with self._install_lock:
            try:
                opened = open_()
            except BundleError as err:
                return self._reject(err.reason, str(err), now)
            except OSError as err:
                why = "it is a symbolic link" if err.errno == errno.ELOOP else err.strerror or str(err)
                return self._reject("unreadable", f"cannot read the downloaded bundle: {why}", now)
            version, label = opened.version, f"watchlist {opened.watchlist_id} v{opened.version}"
            problem = self._embedder_problem(opened)
            if problem:
                return self._reject("wrong_embedder", f"{label} refused: {problem}", now, version)
            floor = self._floor
            if floor is not None and version < floor:
                return self._reject("rollback", f"{label} refused: version {version} is older than the installed"
                                                f" version {floor} (rollback)", now, version)
            # With nothing verified installed (the floor came from an unverifiable file), the same version may
            # be re-sent to repair the device; after a wipe it may not.
            if floor is not None and version == floor and (self._content is not None or self._wiped):
                if opened.content_sha256 != self._content:
                    return self._reject("same_version_different_content",
                                        f"{label} refused: version {version} "
                                        + ("was wiped" if self._wiped else "is already installed with different"
                                           " content") + "; a changed watchlist needs a new version", now, version)
                return InstallResult(True, "already_installed", version, f"{label} is already installed")
            if opened.kind == "delta":
                try:
                    opened = self._apply_delta(opened, now)
                except _Refused as refused:
                    return self._reject(refused.reason, f"{label} refused: {refused}", now, version)
            try:
                live = self._loader(opened)
            except Exception as err:  # noqa: BLE001 - any loader failure is a rejection, the old list stays
                return self._reject("load_failed", f"{label} could not be loaded: {err}", now, version)
            try:
                self._persist(persist_full, opened)
            except OSError as err:
                return self._reject("persist_failed", f"{label} could not be saved to {self.path}:"
                                                      f" {err.strerror or err}", now, version)
            self._swap(live, opened)
            log.info("installed %s (%d items)", label, opened.manifest["n_items"])
            how = f" from a delta on v{opened.manifest['base']['version']}" if opened.kind == "delta" else ""
            return InstallResult(True, "installed", version,
                                 f"installed {label}{how} ({opened.manifest['n_items']} items,"
                                 f" expires {opened.manifest['expires']})")

    def _apply_delta(self, opened: OpenedBundle, now: datetime | None) -> OpenedBundle:
        """The full version a verified delta makes of the installed one (its content hash checked), or _Refused."""
        base = opened.manifest["base"]
        with self._lock:
            installed, content = (self._manifest or {}).get("version"), self._content
        if installed != base["version"] or content != base["content_sha256"]:
            have = f"v{installed}" if installed is not None else "nothing"
            raise _Refused("base_missing", f"it is a delta on v{base['version']} and this device holds {have}"
                                           " (or other content): the full version is needed")
        try:
            base_opened = open_bundle(self.path.read_bytes(), self._device_private, self._trust,
                                      expected_device_id=self.device_id, now=now, allow_expired=True)
            full = apply_bytes(base_opened.payload, opened.payload)
        except (OSError, BundleError) as err:
            raise _Refused("base_missing", f"the installed base cannot be used ({err})") from None
        except (DeltaError, PayloadError) as err:
            raise _Refused("base_missing" if isinstance(err, WrongBase) else "load_failed",
                           f"the delta does not apply ({err})") from None
        except Exception as err:  # noqa: BLE001 - a malformed (even if signed) delta is a refusal, never a crash
            raise _Refused("load_failed", f"the delta is malformed ({type(err).__name__}: {err})") from None
        del base_opened
        try:
            ok = content_sha256(full) == opened.content_sha256
        except PayloadError:
            ok = False
        if not ok:
            raise _Refused("content_mismatch", "the delta applied to the installed version does not give the content"
                                               " its signed manifest names")
        return OpenedBundle(manifest=opened.manifest, manifest_sha256=opened.manifest_sha256,
                            bundle_sha256=opened.bundle_sha256, payload=full, signed_by=opened.signed_by,
                            header=opened.header)

    def wipe(self, data: bytes, now: datetime | None = None) -> InstallResult:
        """Apply a signed wipe statement: drop the installed watchlist from memory and disk when the statement is
        for this device (or for the group it got its list from) and covers the installed version; refuse unsigned,
        foreign or replayed statements ("bad_signature", "not_for_this_device", "replayed_wipe", …)."""
        with self._install_lock:
            try:
                st = verify_wipe(data, self._trust)
            except BundleError as err:
                return self._reject(err.reason, f"wipe refused: {err}", now)
            upto = st["upto_version"]
            with self._lock:
                manifest = self._manifest
            mine = st["audience"] == f"device:{self.device_id}"
            if manifest is None:
                if self._floor is not None and upto <= self._floor and (self._wiped or not mine):
                    return self._reject("replayed_wipe", f"wipe up to v{upto} refused: nothing is installed and"
                                                         f" versions up to v{self._floor} are already refused", now)
                if not mine:
                    return self._reject("not_for_this_device", f"wipe for {st['audience']} refused: nothing is"
                                                               " installed from it", now)
            elif not mine and st["audience"] != manifest["audience"]:
                return self._reject("not_for_this_device", f"wipe for {st['audience']} refused: this device holds"
                                                           f" a watchlist for {manifest['audience']}", now)
            elif manifest["version"] > upto:
                return self._reject("replayed_wipe", f"wipe up to v{upto} refused: v{manifest['version']} is newer"
                                                     " (an old or replayed statement)", now)
            floor = max(upto, self._floor or 0)
            try:
                private_dir(self.state_dir)
                self._write_record(floor, WIPED)
                self.path.unlink(missing_ok=True)
            except OSError as err:
                return self._reject("persist_failed", f"wipe could not be written: {err.strerror or err}", now)
            with self._lock:
                self._live, self._manifest, self._content = None, None, WIPED
                self._floor, self._wiped = floor, True
            log.warning("watchlist wiped (statement for %s up to v%d)", st["audience"], upto)
            return InstallResult(True, "wiped", upto, f"watchlist wiped: versions up to v{floor} are refused from"
                                                      " now on")

    @property
    def floor(self) -> int | None:
        """The highest version accepted (or wiped): nothing at or below it is installed again."""
        return self._floor

    def current(self) -> tuple[T | None, dict[str, Any] | None]:
        """The live object and its manifest, or (None, None) when nothing is installed."""
        with self._lock:
            return self._live, self._manifest

    def state(self, now: datetime | None = None) -> dict[str, Any]:
        """{"version", "watchlist_id", "state": "ok" | "stale" | "none" | "wiped", "expires", "last_rejection"}, and
        for an installed list its size ("n_items" templates, "n_subjects") and what it was sealed for ("sealed_for":
        the match threshold, the FPIR target and the predicted FPIR, when the operator's seal recorded them) — the
        operator's alert budget reads them from the status heartbeat."""
        with self._lock:
            manifest, rejection, wiped = self._manifest, self._last_rejection, self._wiped
        if manifest is None:
            return {"version": None, "watchlist_id": None, "state": "wiped" if wiped else "none", "expires": None,
                    "last_rejection": dict(rejection) if rejection else None}
        thresholds = manifest.get("thresholds") if isinstance(manifest.get("thresholds"), dict) else {}
        return {"version": manifest["version"], "watchlist_id": manifest["watchlist_id"],
                "state": "stale" if self._expired(manifest, now) else "ok", "expires": manifest["expires"],
                "last_rejection": dict(rejection) if rejection else None,
                "n_items": manifest.get("n_items"), "n_subjects": manifest.get("n_subjects"),
                "sealed_for": {k: thresholds[k] for k in ("match", "fpir_target", "predicted_fpir", "calibrated_for_n")
                               if k in thresholds}}

    # ------------------------------------------------------------ the install record

    @property
    def record_path(self) -> Path:
        """The authenticated install record (highest accepted version)."""
        return self._record.path

    def _write_record(self, version: int, content: str) -> None:
        self._record.write(version, content)

    def read_record(self) -> tuple[int, str] | None:
        """`InstallRecord.read`: (version, content sha256 or "wiped"), None, or RecordError."""
        return self._record.read()

    # ------------------------------------------------------------ internals

    def _embedder_problem(self, opened: OpenedBundle) -> str | None:
        embedder = opened.manifest["embedder"]
        if embedder["id"] != self.embedder_id or embedder["sha256"] != self.embedder_sha256:
            return (f"it was built for embedder {embedder['id']} (sha256 {embedder['sha256'][:12]}…), this device"
                    f" runs {self.embedder_id} (sha256 {self.embedder_sha256[:12]}…): re-enroll the gallery in this"
                    " device's embedding space with `edge watchlist build --gallery CSV` (its --embedder) and seal it"
                    " again, or set the device's vision.embedder to the list's")
        return None

    @staticmethod
    def _expired(manifest: Mapping[str, Any], now: datetime | None) -> bool:
        return parse_time(manifest["expires"]) <= _now(now)

    def _head(self) -> bytes:
        """The first bytes of the installed file (enough for its manifest), b"" if unreadable."""
        try:
            with open(self.path, "rb") as f:
                return f.read(2 * 1024 * 1024)
        except OSError:
            return b""

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
            self._content, self._floor, self._wiped = opened.content_sha256, opened.version, False

    def _floor_from_record(self, now: datetime | None) -> None:
        """No installed file: the install record alone still sets the rollback floor (and says if it was wiped)."""
        try:
            record = self.read_record()
        except RecordError as err:
            self._reject("install_record_invalid", f"{err}; re-send the current watchlist", now)
            return
        if record is not None:
            self._floor, self._wiped = record[0], record[1] == WIPED
            self._content = WIPED if self._wiped else None

    def _persist(self, persist_full: Callable[[], None], opened: OpenedBundle) -> None:
        """Replace `installed.bundle` atomically and durably (`persist_full` for a full bundle, the device's local
        bundle for an applied delta), then its install record; on failure the old file is untouched. Bundle first:
        a power cut between the two leaves a newer bundle than the record, which start accepts (never an older
        one)."""
        private_dir(self.state_dir)
        if opened.kind == "full":
            persist_full()
        else:
            atomic_write(self.path, seal_local(opened.header, opened.payload, self._device_private), 0o600)
        self._write_record(opened.version, opened.content_sha256)

    def _remove_leftover_temps(self) -> None:
        """Delete temp files a power cut left behind mid-persist (they are never the installed bundle)."""
        if self.state_dir.is_dir():
            for name in (INSTALLED, RECORD):
                for leftover in self.state_dir.glob(f".{name}.*.tmp"):
                    leftover.unlink(missing_ok=True)
