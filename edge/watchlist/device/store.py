"""The device's installed watchlist: reading, persisting and swapping around the pure install policy.

`WatchlistStore` opens a bundle (`unseal`: verified and decrypted), asks the policy (`policy.decide_install`: no
rollback, no second content for a version, no expired bundles, the right embedder, a delta only on its base), turns
it into the live object with an injected `loader`, persists the *encrypted* bundle (temp file → fsync → rename →
fsync dir, so a power cut leaves the old or the new file, never a mix) and then swaps the live object under a lock.
After any rejection `installed.bundle` is byte-identical and the previous live object is still served. Plaintext
never touches disk: the only file the store writes is the encrypted bundle; the loader receives the decrypted
payload in memory.

A delta bundle (kind "delta") accepted on its base is applied here: the store re-opens the installed bundle,
rebuilds the full payload (`edge.watchlist.delta`), checks its content hash against the signed manifest, loads it
while the old list keeps serving, and persists it as a *local bundle* (`local`); a missing or different base is
refused with "base_missing", and the sync then fetches the full version. A signed wipe statement (`wipe`) drops the
list from memory and disk.

Versions are monotonic per device, across watchlist ids: one device holds one watchlist. The highest version
accepted survives restarts in `installed.version` (`record`: version + content sha256 from the signed manifest,
HMAC-SHA256 with a key derived from the device key; "wiped" after a wipe): at start, an installed bundle older than
it, different from it at the same version, or without a valid record at all is refused (reason "rollback",
"same_version_different_content", "install_record_invalid" or "install_record_missing") and nothing is served
until the operator sends a current bundle.
"""

from __future__ import annotations

import errno
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar

from edge.durable import atomic_write, move_into_place, private_dir
from edge.install_state import InstalledState, InstallReason, InstallResult, Rejection, Serving
from edge.watchlist.delta import DeltaError, WrongBase, apply_bytes
from edge.watchlist.device.local import seal_local
from edge.watchlist.device.policy import (WIPED, Holding, Offered, Refuse, decide_install, decide_wipe,
                                          embedder_problem, record_conflict)
from edge.watchlist.device.record import RECORD, InstallRecord, RecordError
from edge.watchlist.device.unseal import DeviceKey, open_bundle, open_bundle_file
from edge.watchlist.device.verify import OperatorKeys, verify_wipe
from edge.watchlist.frame import BundleError, OpenedBundle, peek_manifest
from edge.watchlist.manifest import parse_time
from edge.watchlist.payload import MappedPayload, PayloadError, content_sha256

log = logging.getLogger(__name__)

T = TypeVar("T")
INSTALLED = "installed.bundle"


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _release(opened: OpenedBundle) -> None:
    """Close the memory file of a streamed payload (`MappedPayload`) once the install or start is over: the loader
    has mapped what it keeps, and a refused payload must not hold its memory until the process ends."""
    if isinstance(opened.payload, MappedPayload):
        opened.payload.close()


class WatchlistStore(Generic[T]):
    """The installed watchlist of one device: persistence under `state_dir`, the live object, and the state the
    install policy (`edge.watchlist.device.policy`) decides on.

    loader: turns a verified bundle into the object matching uses (e.g. an Annoy index); it may raise to refuse.
    Thread-safe: `install` calls are serialized; `current` and `state` never wait for a loader.
    """

    def __init__(
        self,
        state_dir: str | Path,
        device_id: str,
        device_private: DeviceKey,
        trust: OperatorKeys,
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
        self._install_lock = threading.Lock()  # serializes install/start/wipe
        self._live: T | None = None
        self._manifest: dict[str, Any] | None = None
        # What the policy decides on: the rollback floor (the installed version, or, if the installed file no
        # longer verifies, the version it claims) and the content hash at it (WIPED after a wipe).
        self._floor: int | None = None
        self._content: str | None = None
        self._last_rejection: Rejection | None = None

    @property
    def path(self) -> Path:
        """The persisted encrypted bundle."""
        return self.state_dir / INSTALLED

    # ------------------------------------------------------------ public API

    def start(self, now: datetime | None = None) -> None:
        """Load the persisted bundle, if any, re-verifying it; never raises for a bad or missing file.

        An expired bundle is still served and reported "stale"; one that fails verification or loading is reported
        (see `state().last_rejection`) and nothing is served.
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
                self._reject(InstallReason.UNREADABLE, f"cannot read installed watchlist {self.path}:"
                                                       f" {err.strerror or err}", now)
                return
            except BundleError as err:
                self._floor = self._claimed_version(self._head())
                self._reject(err.reason, f"installed watchlist {self.path} no longer verifies: {err}", now)
                return
            try:
                self._start_opened(opened, now)
            finally:
                _release(opened)

    def _start_opened(self, opened: OpenedBundle, now: datetime | None) -> None:
        """`start` for the installed bundle once it verified: embedder, install record, load, swap."""
        embedder = opened.manifest["embedder"]
        problem = embedder_problem(self._holding(), embedder["id"], embedder["sha256"])
        if problem:
            self._floor = opened.version
            self._reject(InstallReason.WRONG_EMBEDDER, f"installed watchlist {self.path}: {problem}", now)
            return
        if not self._matches_record(opened, now):
            return
        try:
            live = self._loader(opened)
        except Exception as err:  # noqa: BLE001 - a loader failure must not crash the device
            self._floor = opened.version
            self._reject(InstallReason.LOAD_FAILED, f"installed watchlist {self.path} could not be loaded: {err}",
                         now)
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
            self._reject(InstallReason.INSTALL_RECORD_INVALID, f"installed watchlist refused: {err}; re-send the"
                                                               " current watchlist", now)
            return False
        if record is None:
            self._floor = opened.version
            self._reject(InstallReason.INSTALL_RECORD_MISSING, f"installed watchlist {self.path} has no install"
                                                               f" record ({self.record_path}): it may have been"
                                                               " swapped for an older one; re-send the current"
                                                               " watchlist", now)
            return False
        version, _ = record
        conflict = record_conflict(record, opened.version, opened.content_sha256)
        if conflict is not None:
            self._floor = version
            self._reject(conflict.reason, conflict.message, now)
            return False
        if opened.version > version:  # a power cut between persisting the bundle and its record
            self._write_record(opened.version, opened.content_sha256)
        return True

    def install(self, data: bytes, now: datetime | None = None) -> InstallResult:
        """Verify `data` (a full or delta bundle), apply the install policy, load, persist and swap."""
        return self._install(lambda at: open_bundle(data, self._device_private, self._trust,
                                                    expected_device_id=self.device_id, now=at),
                             lambda: atomic_write(self.path, data, 0o600), now)

    def install_file(self, path: Path, now: datetime | None = None) -> InstallResult:
        """`install` for a bundle on disk (the sync's assembled download): a full bundle is verified and decrypted
        in chunks (`open_bundle_file`), never held whole in memory, and persisted by moving `path` into place (so
        `path` is gone after it installed); a delta is small and read whole. `path` is the caller's to remove
        otherwise."""
        return self._install(lambda at: open_bundle_file(path, self._device_private, self._trust,
                                                         expected_device_id=self.device_id, now=at),
                             lambda: move_into_place(path, self.path, 0o600), now)

    def _install(self, open_: Callable[[datetime], OpenedBundle], persist_full: Callable[[], None],
                 now: datetime | None) -> InstallResult:
        """open → decide → (apply the delta) → load → persist → swap; every refusal recorded and returned."""
        with self._install_lock:
            at = _now(now)  # one clock reading for the opener's expiry check and the policy's
            try:
                opened = open_(at)
            except BundleError as err:
                return self._reject(err.reason, str(err), now)
            except OSError as err:
                why = "it is a symbolic link" if err.errno == errno.ELOOP else err.strerror or str(err)
                return self._reject(InstallReason.UNREADABLE, f"cannot read the downloaded bundle: {why}", now)
            try:
                return self._install_opened(opened, at, persist_full, now)
            finally:
                _release(opened)  # a refused (or loaded) payload's memory file is not kept

    def _install_opened(self, opened: OpenedBundle, at: datetime, persist_full: Callable[[], None],
                        now: datetime | None) -> InstallResult:
        """decide → (apply the delta) → load → persist → swap, for a verified bundle; under the install lock."""
        version, offered = opened.version, Offered.of(opened.manifest)
        decision = decide_install(self._holding(), offered, at)
        if isinstance(decision, Refuse):
            return self._reject(decision.reason, decision.message, now, version)
        if decision.reason is InstallReason.ALREADY_INSTALLED:
            return InstallResult(True, decision.reason, version, decision.message)
        label = offered.title
        if opened.kind == "delta":
            rebuilt = self._apply_delta(opened, label, now)
            if isinstance(rebuilt, Refuse):
                return self._reject(rebuilt.reason, rebuilt.message, now, version)
            opened = rebuilt
        try:
            live = self._loader(opened)
        except Exception as err:  # noqa: BLE001 - any loader failure is a rejection, the old list stays
            return self._reject(InstallReason.LOAD_FAILED, f"{label} could not be loaded: {err}", now, version)
        try:
            self._persist(persist_full, opened)
        except OSError as err:
            return self._reject(InstallReason.PERSIST_FAILED, f"{label} could not be saved to {self.path}:"
                                                              f" {err.strerror or err}", now, version)
        self._swap(live, opened)
        log.info("installed %s (%d items)", label, opened.manifest["n_items"])
        return InstallResult(True, decision.reason, version, decision.message)

    def _apply_delta(self, opened: OpenedBundle, label: str, now: datetime | None) -> OpenedBundle | Refuse:
        """The full version a verified delta (accepted on the held base) makes of the installed one, its content
        hash checked; or why it cannot be made."""
        def refuse(reason: InstallReason, why: str) -> Refuse:
            return Refuse(reason, f"{label} refused: {why}")

        try:
            base_opened = open_bundle(self.path.read_bytes(), self._device_private, self._trust,
                                      expected_device_id=self.device_id, now=now, allow_expired=True)
            # open_bundle decrypts into bytes (only open_bundle_file maps a full payload), and a delta is bytes
            full = apply_bytes(base_opened.payload_bytes, opened.payload_bytes)
        except (OSError, BundleError) as err:
            return refuse(InstallReason.BASE_MISSING, f"the installed base cannot be used ({err})")
        except (DeltaError, PayloadError) as err:
            return refuse(InstallReason.BASE_MISSING if isinstance(err, WrongBase) else InstallReason.LOAD_FAILED,
                          f"the delta does not apply ({err})")
        except Exception as err:  # noqa: BLE001 - a malformed (even if signed) delta is a refusal, never a crash
            return refuse(InstallReason.LOAD_FAILED, f"the delta is malformed ({type(err).__name__}: {err})")
        del base_opened
        try:
            ok = content_sha256(full) == opened.content_sha256
        except PayloadError:
            ok = False
        if not ok:
            return refuse(InstallReason.CONTENT_MISMATCH, "the delta applied to the installed version does not give"
                                                          " the content its signed manifest names")
        return OpenedBundle(manifest=opened.manifest, manifest_sha256=opened.manifest_sha256,
                            bundle_sha256=opened.bundle_sha256, payload=full, signed_by=opened.signed_by,
                            header=opened.header)

    def wipe(self, data: bytes, now: datetime | None = None) -> InstallResult:
        """Apply a signed wipe statement: drop the installed watchlist from memory and disk when the policy
        (`decide_wipe`) says it applies; refuse unsigned, foreign or replayed statements ("bad_signature",
        "not_for_this_device", "replayed_wipe", …)."""
        with self._install_lock:
            try:
                st = verify_wipe(data, self._trust)
            except BundleError as err:
                return self._reject(err.reason, f"wipe refused: {err}", now)
            decision = decide_wipe(self._holding(), st)
            if isinstance(decision, Refuse):
                return self._reject(decision.reason, decision.message, now)
            try:
                private_dir(self.state_dir)
                self._write_record(decision.floor, WIPED)
                self.path.unlink(missing_ok=True)
            except OSError as err:
                return self._reject(InstallReason.PERSIST_FAILED, f"wipe could not be written:"
                                                                  f" {err.strerror or err}", now)
            with self._lock:
                self._live, self._manifest, self._content, self._floor = None, None, WIPED, decision.floor
            log.warning("watchlist wiped (statement for %s up to v%d)", st["audience"], st["upto_version"])
            return InstallResult(True, InstallReason.WIPED, st["upto_version"], decision.message)

    @property
    def floor(self) -> int | None:
        """The highest version accepted (or wiped): nothing at or below it is installed again."""
        return self._floor

    def current(self) -> tuple[T | None, dict[str, Any] | None]:
        """The live object and its manifest, or (None, None) when nothing is installed."""
        with self._lock:
            return self._live, self._manifest

    def state(self, now: datetime | None = None) -> InstalledState:
        """What is served (ok, stale, none or wiped), the installed version, its size and sealing figures, and the
        last rejection (`InstalledState.to_dict()` is the published form)."""
        with self._lock:
            manifest, rejection, wiped = self._manifest, self._last_rejection, self._content == WIPED
        if manifest is None:
            return InstalledState(Serving.WIPED if wiped else Serving.NONE, last_rejection=rejection)
        given = manifest.get("thresholds")
        thresholds: dict[str, Any] = given if isinstance(given, dict) else {}
        return InstalledState(
            Serving.STALE if self._expired(manifest, now) else Serving.OK, version=manifest["version"],
            watchlist_id=manifest["watchlist_id"], expires=manifest["expires"], last_rejection=rejection,
            n_items=manifest.get("n_items"), n_subjects=manifest.get("n_subjects"),
            sealed_for={k: thresholds[k] for k in ("match", "fpir_target", "predicted_fpir", "calibrated_for_n")
                        if k in thresholds})

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

    def _holding(self) -> Holding:
        """What the policy decides on, read once under the lock."""
        with self._lock:
            manifest = self._manifest or {}
            return Holding(self.device_id, self.embedder_id, self.embedder_sha256, self._floor, self._content,
                           manifest.get("version"), manifest.get("audience"))

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

    def _reject(self, reason: InstallReason, message: str, now: datetime | None,
                version: int | None = None) -> InstallResult:
        log.warning("watchlist rejected (%s): %s", reason, message)
        rejection = Rejection(reason, message, _now(now).strftime("%Y-%m-%dT%H:%M:%SZ"))
        with self._lock:
            self._last_rejection = rejection
        return InstallResult(False, reason, version, message)

    def _swap(self, live: T, opened: OpenedBundle) -> None:
        with self._lock:
            self._live, self._manifest = live, opened.manifest
            self._content, self._floor = opened.content_sha256, opened.version

    def _floor_from_record(self, now: datetime | None) -> None:
        """No installed file: the install record alone still sets the rollback floor (and says if it was wiped)."""
        try:
            record = self.read_record()
        except RecordError as err:
            self._reject(InstallReason.INSTALL_RECORD_INVALID, f"{err}; re-send the current watchlist", now)
            return
        if record is not None:
            self._floor, self._content = record[0], WIPED if record[1] == WIPED else None

    def _persist(self, persist_full: Callable[[], None], opened: OpenedBundle) -> None:
        """Replace `installed.bundle` atomically and durably (`persist_full` for a full bundle, the device's local
        bundle for an applied delta), then its install record; on failure the old file is untouched. Bundle first:
        a power cut between the two leaves a newer bundle than the record, which start accepts (never an older
        one)."""
        private_dir(self.state_dir)
        if opened.kind == "full":
            persist_full()
        else:
            full = opened.payload_bytes  # a delta's result, rebuilt in memory
            atomic_write(self.path, seal_local(opened.header, full, self._device_private), 0o600)
        self._write_record(opened.version, opened.content_sha256)

    def _remove_leftover_temps(self) -> None:
        """Delete temp files a power cut left behind mid-persist (they are never the installed bundle)."""
        if self.state_dir.is_dir():
            for name in (INSTALLED, RECORD):
                for leftover in self.state_dir.glob(f".{name}.*.tmp"):
                    leftover.unlink(missing_ok=True)
