"""Device install policy: every refused bundle leaves `installed.bundle` byte-identical and the old watchlist live;
restarts re-verify; plaintext never reaches the disk."""

import hashlib
import os
import stat
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from edge.keys import TrustStore, generate_device_key, generate_operator_key
from edge.watchlist.operator.seal import seal
from edge.install_state import InstallResult
from edge.watchlist.device.store import WatchlistStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
EXPIRES = NOW + timedelta(days=30)
EMBEDDER = ("dlib_resnet_v1_int8", hashlib.sha256(b"embedder").hexdigest())


@pytest.fixture(scope="module")
def keys():
    return {"operator": generate_operator_key(), "stranger": generate_operator_key(),
            "cam1": generate_device_key(), "cam2": generate_device_key()}


def make(keys, version, payload=None, *, device="cam1", signer="operator", **overrides):
    args = dict(watchlist_id="wl-main", version=version, device_id=device, device_public=keys[device].public_key(),
                signing_key=keys[signer], embedder_id=EMBEDDER[0], embedder_sha256=EMBEDDER[1], dim=128, n_items=3,
                n_subjects=2, thresholds={"match": 0.42}, created=NOW - timedelta(days=1), expires=EXPIRES)
    args.update(overrides)
    return seal(payload if payload is not None else f"watchlist v{version}".encode(), **args)


def loader(opened):
    if opened.payload.startswith(b"BAD"):
        raise ValueError("index file is corrupt")
    return opened.payload


def new_store(keys, state_dir, load=loader):
    return WatchlistStore(state_dir, "cam1", keys["cam1"], TrustStore([keys["operator"].public_key()]),
                          EMBEDDER[0], EMBEDDER[1], load)


@pytest.fixture
def installed(keys, tmp_path):
    """A store with v2 installed: (store, state dir, v2 bytes)."""
    state = tmp_path / "state"
    store = new_store(keys, state)
    store.start(now=NOW)
    v2 = make(keys, 2)
    result = store.install(v2, now=NOW)
    assert result == InstallResult(True, "installed", 2, "installed watchlist wl-main v2 (3 items, expires"
                                                         " 2025-07-01T12:00:00Z)")
    return store, state, v2


def test_install_persists_encrypted_bundle_with_mode_0600(installed):
    store, state, v2 = installed
    assert (state / "installed.bundle").read_bytes() == v2
    assert stat.S_IMODE(os.stat(state / "installed.bundle").st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["installed.bundle", "installed.version"]  # no temp files left
    live, manifest = store.current()
    assert live == b"watchlist v2" and manifest["version"] == 2
    assert store.state(now=NOW).to_dict() == {"version": 2, "watchlist_id": "wl-main", "state": "ok",
                                    "expires": "2025-07-01T12:00:00Z", "last_rejection": None,
                                    "n_items": 3, "n_subjects": 2, "sealed_for": {"match": 0.42}}


def test_same_bytes_again_is_already_installed(installed):
    store, state, v2 = installed
    result = store.install(v2, now=NOW)
    assert (result.ok, result.reason, result.message) == (True, "already_installed",
                                                          "watchlist wl-main v2 is already installed")


ATTACKS = {
    "rollback": (lambda k: make(k, 1), "rollback",
                 "watchlist wl-main v1 refused: version 1 is older than the installed version 2 (rollback)"),
    "same_version_different_content": (
        lambda k: make(k, 2, b"other content"), "same_version_different_content",
        "watchlist wl-main v2 refused: version 2 is already installed with different content; a changed watchlist"
        " needs a new version"),
    "expired": (lambda k: make(k, 3, expires=NOW - timedelta(seconds=1)), "expired",
                "bundle wl-main v3 expired at 2025-06-01T11:59:59Z: the watchlist is stale; ask the operator for a"
                " fresh bundle"),
    "wrong_device": (lambda k: make(k, 3, device="cam2"), "not_recipient",
                     "bundle wl-main v3 is for device:cam2 and does not list this device ('cam1') as a recipient"),
    "wrong_device_key": (lambda k: make(k, 3, device_public=k["cam2"].public_key()), "unwrap_failed",
                         "cannot unwrap the content key: bundle wl-main v3's wrap for device cam1 was not made for"
                         " this device's key (or was altered)"),
    "wrong_embedder": (
        lambda k: make(k, 3, embedder_id="facenet", embedder_sha256="ab" * 32), "wrong_embedder",
        f"watchlist wl-main v3 refused: it was built for embedder facenet (sha256 abababababab…), this device runs"
        f" dlib_resnet_v1_int8 (sha256 {EMBEDDER[1][:12]}…)"),
    "unknown_signer": (lambda k: make(k, 3, signer="stranger"), "unknown_key", "which this device does not trust"),
    "corrupted": (lambda k: (lambda b: b[:-5] + bytes([b[-5] ^ 0x10]) + b[-4:])(make(k, 3)), "payload_mismatch",
                  "bundle wl-main v3: the payload does not match the manifest's sha256 (corrupted or replaced)"),
    "truncated": (lambda k: make(k, 3)[:-10], "truncated", "bundle wl-main v3 is truncated: the payload has"),
    "garbage": (lambda k: b"not a bundle at all", "bad_magic", "not a watchlist bundle"),
    "loader_raises": (lambda k: make(k, 3, b"BAD index"), "load_failed",
                      "watchlist wl-main v3 could not be loaded: index file is corrupt"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_rejection_keeps_the_installed_watchlist(keys, installed, attack):
    store, state, v2 = installed
    build, reason, message = ATTACKS[attack]
    result = store.install(build(keys), now=NOW)
    assert not result.ok
    assert result.reason == reason
    assert message in result.message
    assert (state / "installed.bundle").read_bytes() == v2
    assert sorted(p.name for p in state.iterdir()) == ["installed.bundle", "installed.version"]
    assert store.current()[0] == b"watchlist v2"
    st = store.state(now=NOW).to_dict()
    assert (st["version"], st["state"]) == (2, "ok")
    assert st["last_rejection"] == {"reason": reason, "message": result.message, "at": "2025-06-01T12:00:00Z"}


def test_persist_failure_keeps_the_installed_watchlist(keys, installed, monkeypatch):
    store, state, v2 = installed

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    result = store.install(make(keys, 3), now=NOW)
    assert (result.ok, result.reason) == (False, "persist_failed")
    assert "No space left on device" in result.message
    monkeypatch.undo()
    assert (state / "installed.bundle").read_bytes() == v2
    assert sorted(p.name for p in state.iterdir()) == ["installed.bundle", "installed.version"]
    assert store.current()[0] == b"watchlist v2"


def test_newer_version_swaps_and_survives_a_restart(keys, installed):
    store, state, _ = installed
    v3 = make(keys, 3)
    assert store.install(v3, now=NOW).reason == "installed"
    assert store.current()[0] == b"watchlist v3"
    assert (state / "installed.bundle").read_bytes() == v3

    restarted = new_store(keys, state)
    assert restarted.current() == (None, None) and restarted.state().state == "none"
    restarted.start(now=NOW)
    live, manifest = restarted.current()
    assert live == b"watchlist v3" and manifest["version"] == 3
    assert restarted.state(now=NOW).state == "ok"
    # The restarted store still refuses rollbacks.
    assert restarted.install(make(keys, 2), now=NOW).reason == "rollback"


def test_expired_on_restart_is_served_as_stale(keys, installed):
    store, state, v2 = installed
    later = EXPIRES + timedelta(hours=1)
    restarted = new_store(keys, state)
    restarted.start(now=later)
    assert restarted.current()[0] == b"watchlist v2"
    st = restarted.state(now=later)
    assert (st.version, st.state, st.last_rejection) == (2, "stale", None)
    # The running store notices expiry too.
    assert store.state(now=later).state == "stale"


def test_start_with_nothing_installed(keys, tmp_path):
    store = new_store(keys, tmp_path / "absent")
    store.start(now=NOW)
    assert store.current() == (None, None)
    assert store.state(now=NOW).to_dict() == {"version": None, "watchlist_id": None, "state": "none", "expires": None,
                                    "last_rejection": None}


def test_corrupted_installed_file_serves_nothing_but_keeps_the_rollback_floor(keys, installed):
    store, state, v2 = installed
    path = state / "installed.bundle"
    path.write_bytes(v2[:-1] + bytes([v2[-1] ^ 1]))
    (state / ".installed.bundle.abc123.tmp").write_bytes(b"half-written")  # a power cut mid-persist

    restarted = new_store(keys, state)
    restarted.start(now=NOW)  # must not raise
    assert restarted.current() == (None, None)
    st = restarted.state(now=NOW).to_dict()
    assert st["state"] == "none"
    assert st["last_rejection"]["reason"] == "payload_mismatch"
    assert st["last_rejection"]["message"].startswith(f"installed watchlist {path} no longer verifies: bundle wl-main")
    assert not (state / ".installed.bundle.abc123.tmp").exists()
    assert restarted.install(make(keys, 1), now=NOW).reason == "rollback"
    # The operator can repair the device by re-sending the same version.
    assert restarted.install(v2, now=NOW).reason == "installed"
    assert restarted.current()[0] == b"watchlist v2"


def test_loader_failure_on_restart_serves_nothing(keys, installed):
    _, state, _ = installed

    def broken(opened):
        raise RuntimeError("annoy: cannot map index")

    restarted = new_store(keys, state, load=broken)
    restarted.start(now=NOW)
    assert restarted.current() == (None, None)
    rejection = restarted.state(now=NOW).last_rejection
    assert rejection.reason == "load_failed"
    assert "could not be loaded: annoy: cannot map index" in rejection.message


def test_current_is_not_blocked_by_a_slow_loader(keys, installed):
    store, _, _ = installed
    entered, release = threading.Event(), threading.Event()

    def slow(opened):
        entered.set()
        release.wait(5)
        return opened.payload

    store._loader = slow
    worker = threading.Thread(target=store.install, args=(make(keys, 3),), kwargs={"now": NOW})
    worker.start()
    assert entered.wait(5)
    assert store.current()[0] == b"watchlist v2"  # old list served while the new one loads
    release.set()
    worker.join(5)
    assert store.current()[0] == b"watchlist v3"


def test_plaintext_never_touches_disk(keys, tmp_path):
    started = time.time() - 1
    canary = f"CANARY-{uuid.uuid4().hex}".encode()
    state = tmp_path / "state"
    store = new_store(keys, state)
    store.start(now=NOW)
    assert store.install(make(keys, 1, b"subject: " + canary), now=NOW).ok
    assert not store.install(make(keys, 2, b"BAD " + canary), now=NOW).ok  # loader refuses it
    assert store.install(make(keys, 3, b"subject v3: " + canary), now=NOW).ok
    restarted = new_store(keys, state)
    restarted.start(now=NOW)
    assert canary in restarted.current()[0]

    roots = [tmp_path, tempfile.gettempdir()]
    scanned = 0
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(dirpath, d))]  # e.g. a chroot's /proc
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.getmtime(path) < started or not os.path.isfile(path):
                        continue
                    with open(path, "rb") as f:
                        content = f.read()
                except OSError:
                    continue
                scanned += 1
                assert canary not in content, path
    assert scanned >= 1


def test_install_file_moves_a_verified_download_into_place(keys, installed, tmp_path):
    """The sync's path: the assembled download is verified in chunks from disk and renamed into place."""
    store, state, v2 = installed
    incoming = state / "incoming"
    incoming.mkdir()
    (incoming / "bundle").write_bytes(make(keys, 3))
    v3 = (incoming / "bundle").read_bytes()
    result = store.install_file(incoming / "bundle", now=NOW)
    assert (result.ok, result.reason, result.version) == (True, "installed", 3)
    assert (state / "installed.bundle").read_bytes() == v3 and not (incoming / "bundle").exists()
    assert stat.S_IMODE(os.stat(state / "installed.bundle").st_mode) == 0o600
    assert store.current()[1]["version"] == 3
    assert new_store(keys, state).install_file(incoming / "missing", now=NOW).reason == "unreadable"


def test_install_file_refusals_keep_the_installed_watchlist_and_the_link_target(keys, installed, tmp_path):
    store, state, v2 = installed
    (tmp_path / "old.bundle").write_bytes(make(keys, 1))
    result = store.install_file(tmp_path / "old.bundle", now=NOW)
    assert (result.ok, result.reason) == (False, "rollback") and (tmp_path / "old.bundle").exists()
    target = tmp_path / "elsewhere.bundle"
    target.write_bytes(make(keys, 4))
    (tmp_path / "link.bundle").symlink_to(target)
    result = store.install_file(tmp_path / "link.bundle", now=NOW)
    assert (result.ok, result.reason) == (False, "unreadable") and "symbolic link" in result.message
    assert target.exists() and (tmp_path / "link.bundle").is_symlink()
    assert (state / "installed.bundle").read_bytes() == v2 and store.current()[1]["version"] == 2
