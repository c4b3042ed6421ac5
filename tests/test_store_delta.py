"""The device store with real watchlists: delta bundles applied on exactly their base and kept as a local bundle,
restarts from it, refused deltas leaving everything as it was, and signed wipe statements (device and group)."""

import hashlib
import os
import stat
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge.canonical import canonical_json
from edge.keys import TrustStore, generate_device_key, generate_operator_key
from edge.watchlist import delta as D
from edge.watchlist.operator.diff import diff
from edge.watchlist.frame import LOCAL_MAGIC, MAGIC
from edge.watchlist.operator.seal import seal, sign_wipe
from edge.watchlist.operator.build import make_payload
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.payload import SUBJECT_FIELDS, content_sha256, pack, unpack
from edge.watchlist.device.store import WatchlistStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
EMBEDDER = ("dlib_resnet_v1_int8", hashlib.sha256(b"embedder").hexdigest())
DIM = 16
CANARY = "Canary Person 51c9"


@pytest.fixture(scope="module")
def keys():
    return {"operator": generate_operator_key(), "stranger": generate_operator_key(),
            "cam1": generate_device_key(), "cam2": generate_device_key()}


def _unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def payload(subjects):
    """subjects: [(id, label, n templates, seed)] → a packed full payload (templates follow from the seed)."""
    vectors, items, cols = [], [], []
    for s, (sid, label, n, seed) in enumerate(subjects):
        vectors.append(_unit(np.random.default_rng(seed), n))
        items += [s] * n
        cols.append({"id": sid, "label": label, "category": "test", "expires": None})
    return pack(make_payload(np.concatenate(vectors), items, cols, n_trees=2, thresholds={"match": 0.9}))


V1 = [("a", CANARY, 2, 1), ("b", "Bee", 1, 2), ("c", "Sea", 2, 3)]
V2 = [("a", CANARY, 2, 1), ("c", "Sea (renamed)", 2, 3), ("d", "Dee", 3, 4)]  # −b, ~c, +d
V3 = [("a", CANARY, 2, 1), ("d", "Dee", 3, 4), ("e", "Eee", 1, 5)]  # −c, +e
V1_OTHER = [("a", CANARY, 2, 1), ("b", "Bee", 1, 2), ("c", "Sea", 2, 33)]  # "v1" with other content


def _seal(keys, version, plaintext, full, group=None, signer="operator", **overrides):
    """A bundle of `version` carrying `plaintext` (the full payload, or a delta whose result is `full`)."""
    p = unpack(full)
    args = dict(watchlist_id="wl", version=version, signing_key=keys[signer], embedder_id=EMBEDDER[0],
                embedder_sha256=EMBEDDER[1], dim=DIM, n_items=len(p.meta["items"]),
                n_subjects=len(p.meta["subjects"]["id"]), thresholds={"match": 0.9, "margin": 0.02},
                created=NOW - timedelta(days=1), expires=NOW + timedelta(days=30))
    if group:
        args.update(group=group, recipients={"cam1": keys["cam1"].public_key(), "cam2": keys["cam2"].public_key()})
    else:
        args.update(device_id="cam1", device_public=keys["cam1"].public_key())
    args.update(overrides)
    return seal(plaintext, **args)


def full_bundle(keys, version, packed, group=None, **overrides):
    return _seal(keys, version, packed, packed, group, **overrides)


def delta_bundle(keys, version, base_version, base_packed, new_packed, group=None, **overrides):
    """(delta bundle, the full packed payload it makes), the way `edge watchlist seal --base` makes them."""
    base = unpack(base_packed)
    delta = diff(base, unpack(new_packed))
    full = pack(D.apply(base, delta))
    overrides = dict(dict(base={"version": base_version, "content_sha256": delta.base_content_sha256},
                          content=content_sha256(full)), **overrides)
    return _seal(keys, version, D.pack_delta(delta), full, group, **overrides), full


def loader(opened):
    """The live object: the watchlist as matching uses it, with the payload it was loaded from."""
    return Watchlist.from_payload(opened.payload, opened.manifest["thresholds"], opened.manifest), opened.payload


def new_store(keys, state):
    return WatchlistStore(state, "cam1", keys["cam1"], TrustStore([keys["operator"].public_key()]), EMBEDDER[0],
                          EMBEDDER[1], loader)


def files(state):
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.is_file()}


def live_payload(store):
    live, _ = store.current()
    return None if live is None else live[1]


@pytest.fixture(scope="module")
def contents():
    v1, v2, v3, v1_other = payload(V1), payload(V2), payload(V3), payload(V1_OTHER)
    return {"v1": v1, "v2": v2, "v3": v3, "v1_other": v1_other}


@pytest.fixture
def on_v1(keys, tmp_path, contents):
    state = tmp_path / "state"
    store = new_store(keys, state)
    store.start(now=NOW)
    result = store.install(full_bundle(keys, 1, contents["v1"]), now=NOW)
    assert (result.ok, result.reason) == (True, "installed")
    return store, state


@pytest.fixture
def on_v2_by_delta(keys, on_v1, contents):
    store, state = on_v1
    data, full_v2 = delta_bundle(keys, 2, 1, contents["v1"], contents["v2"])
    result = store.install(data, now=NOW)
    assert (result.ok, result.reason, result.version) == (True, "installed", 2), result.message
    assert "from a delta on v1" in result.message
    return store, state, data, full_v2


def test_a_delta_on_v1_installs_the_full_v2_content(keys, on_v2_by_delta, contents):
    store, state, delta_data, full_v2 = on_v2_by_delta
    assert live_payload(store) == full_v2
    assert content_sha256(live_payload(store)) == content_sha256(full_v2)
    cols = unpack(live_payload(store)).meta["subjects"]
    assert sorted(cols["id"]) == ["a", "c", "d"] and cols["label"][cols["id"].index("c")] == "Sea (renamed)"
    watchlist, manifest = store.current()[0][0], store.current()[1]
    assert manifest["kind"] == "delta" and manifest["version"] == 2 and manifest["base"]["version"] == 1
    d = unpack(contents["v2"])
    first_d = d.meta["items"].index(d.meta["subjects"]["id"].index("d"))
    q = np.frombuffer(d.templates, np.int8, DIM, offset=first_d * DIM).astype(np.float32)
    assert watchlist.match(q / np.linalg.norm(q)).top.subject_id == "d"
    assert store.state(now=NOW).version == 2 and store.read_record() == (2, content_sha256(full_v2))


def test_the_delta_result_is_kept_as_a_private_local_bundle_without_plaintext(on_v2_by_delta, contents):
    store, state, delta_data, full_v2 = on_v2_by_delta
    on_disk = files(state)
    assert sorted(on_disk) == ["installed.bundle", "installed.version"]
    assert on_disk["installed.bundle"].startswith(LOCAL_MAGIC) and on_disk["installed.bundle"] != delta_data
    assert stat.S_IMODE(os.stat(state / "installed.bundle").st_mode) == 0o600
    templates = unpack(full_v2).templates
    for name, data in on_disk.items():
        assert CANARY.encode() not in data and b"Sea (renamed)" not in data, name
        assert templates[:64] not in data and templates[-64:] not in data, name
        assert full_v2[:200] not in data, name


def test_a_restart_serves_v2_from_the_local_bundle_and_takes_the_next_delta(keys, on_v2_by_delta, contents):
    _, state, _, full_v2 = on_v2_by_delta
    restarted = new_store(keys, state)
    restarted.start(now=NOW)
    assert live_payload(restarted) == full_v2
    assert restarted.state(now=NOW).to_dict() == {"version": 2, "watchlist_id": "wl", "state": "ok",
                                        "expires": "2025-07-01T12:00:00Z", "last_rejection": None,
                                        "n_items": 7, "n_subjects": 3, "sealed_for": {"match": 0.9}}
    data, full_v3 = delta_bundle(keys, 3, 2, full_v2, contents["v3"])  # a delta on the rebuilt v2
    result = restarted.install(data, now=NOW)
    assert (result.ok, result.reason) == (True, "installed"), result.message
    assert live_payload(restarted) == full_v3
    assert sorted(unpack(full_v3).meta["subjects"]["id"]) == ["a", "d", "e"]


def test_a_delta_on_another_version_is_base_missing_and_changes_nothing(keys, on_v1, contents):
    store, state = on_v1
    before, live_before = files(state), store.current()
    full_v2 = pack(D.apply(unpack(contents["v1"]), diff(unpack(contents["v1"]), unpack(contents["v2"]))))
    data, _ = delta_bundle(keys, 3, 2, full_v2, contents["v3"])
    result = store.install(data, now=NOW)
    assert (result.ok, result.reason, result.version) == (False, "base_missing", 3)
    assert "it is a delta on v2 and this device holds v1" in result.message
    assert files(state) == before and store.current() == live_before
    assert store.state(now=NOW).last_rejection.reason == "base_missing"
    # The sync's fallback: the full version installs.
    result = store.install(full_bundle(keys, 3, contents["v3"]), now=NOW)
    assert (result.ok, result.reason) == (True, "installed")


def test_a_delta_on_the_same_version_with_other_content_is_base_missing(keys, on_v1, contents):
    store, state = on_v1
    before = files(state)
    data, full_v2 = delta_bundle(keys, 2, 1, contents["v1_other"], contents["v2"])
    result = store.install(data, now=NOW)
    assert (result.ok, result.reason) == (False, "base_missing")
    assert files(state) == before and live_payload(store) == contents["v1"]
    result = store.install(full_bundle(keys, 2, full_v2), now=NOW)
    assert (result.ok, result.reason) == (True, "installed")
    assert live_payload(store) == full_v2


def test_full_and_delta_of_one_version_are_the_same_install(keys, on_v2_by_delta, tmp_path):
    store, state, delta_data, full_v2 = on_v2_by_delta
    before = files(state)
    result = store.install(full_bundle(keys, 2, full_v2), now=NOW)  # what `seal --base` writes as OUT.full.bundle
    assert (result.ok, result.reason) == (True, "already_installed")
    assert store.install(delta_data, now=NOW).reason == "already_installed"
    assert files(state) == before
    # The other way round: the full first, then the delta of the same version.
    other = new_store(keys, tmp_path / "other")
    other.start(now=NOW)
    assert other.install(full_bundle(keys, 2, full_v2), now=NOW).reason == "installed"
    assert other.install(delta_data, now=NOW).reason == "already_installed"


def test_a_delta_whose_result_is_not_the_signed_content_is_refused(keys, on_v1, contents):
    store, state = on_v1
    before = files(state)
    data, _ = delta_bundle(keys, 2, 1, contents["v1"], contents["v2"], content=content_sha256(contents["v3"]))
    result = store.install(data, now=NOW)
    assert (result.ok, result.reason) == (False, "content_mismatch")
    assert files(state) == before and live_payload(store) == contents["v1"]


def test_a_malformed_delta_from_the_operator_is_refused_not_raised(keys, on_v1, contents):
    store, state = on_v1
    before = files(state)
    header = canonical_json({"base_content_sha256": content_sha256(contents["v1"]), "removed": [], "updated": {},
                             "added": {f: 5 for f in SUBJECT_FIELDS}, "added_items": [], "thresholds": {}})
    bad = D.MAGIC + struct.pack(">Q", len(header)) + header + struct.pack(">Q", 0)
    data = _seal(keys, 2, bad, contents["v2"], base={"version": 1, "content_sha256": content_sha256(contents["v1"])},
                 content=content_sha256(contents["v2"]))
    result = store.install(data, now=NOW)
    assert not result.ok and result.reason == "load_failed"
    assert files(state) == before


@pytest.mark.parametrize("where, reason", [("payload", "decrypt_failed"), ("manifest", "bad_signature")])
def test_a_tampered_local_bundle_is_refused_at_start(keys, on_v2_by_delta, where, reason):
    _, state, _, full_v2 = on_v2_by_delta
    data = bytearray((state / "installed.bundle").read_bytes())
    at = len(data) - 20 if where == "payload" else len(LOCAL_MAGIC) + 4 + len(MAGIC) + 4 + 30
    data[at] ^= 0x01
    (state / "installed.bundle").write_bytes(bytes(data))
    restarted = new_store(keys, state)
    restarted.start(now=NOW)
    assert restarted.current() == (None, None)
    assert restarted.state(now=NOW).last_rejection.reason == reason
    assert restarted.floor == 2  # the version it claims stays the rollback floor
    # The operator re-sends v2 (the full bundle): the device is repaired.
    result = restarted.install(full_bundle(keys, 2, full_v2), now=NOW)
    assert (result.ok, result.reason) == (True, "installed")


# ------------------------------------------------------------------------------------------- wipe


def test_a_device_wipe_drops_memory_and_disk_and_sets_the_floor(keys, on_v2_by_delta, contents):
    store, state, delta_data, full_v2 = on_v2_by_delta
    result = store.wipe(sign_wipe(keys["operator"], "device:cam1", 2, issued=NOW), now=NOW)
    assert (result.ok, result.reason, result.version) == (True, "wiped", 2)
    assert store.current() == (None, None)
    assert not (state / "installed.bundle").exists() and sorted(files(state)) == ["installed.version"]
    assert store.state(now=NOW).state == "wiped" and store.read_record() == (2, "wiped")
    assert CANARY.encode() not in (state / "installed.version").read_bytes()
    # Versions up to the wiped one never come back; a newer one installs.
    assert store.install(full_bundle(keys, 1, contents["v1"]), now=NOW).reason == "rollback"
    assert store.install(full_bundle(keys, 2, full_v2), now=NOW).reason == "same_version_different_content"
    assert store.install(delta_data, now=NOW).reason == "same_version_different_content"
    assert store.current() == (None, None) and not (state / "installed.bundle").exists()
    result = store.install(full_bundle(keys, 3, contents["v3"]), now=NOW)
    assert (result.ok, result.reason) == (True, "installed")
    assert live_payload(store) == contents["v3"] and store.state(now=NOW).state == "ok"


def test_a_wipe_beyond_the_installed_version_raises_the_floor(keys, on_v1, contents):
    store, state = on_v1
    assert store.wipe(sign_wipe(keys["operator"], "device:cam1", 5, issued=NOW), now=NOW).reason == "wiped"
    assert store.floor == 5
    assert store.install(full_bundle(keys, 4, contents["v2"]), now=NOW).reason == "rollback"
    assert store.install(full_bundle(keys, 5, contents["v2"]), now=NOW).reason == "same_version_different_content"
    assert store.install(full_bundle(keys, 6, contents["v2"]), now=NOW).reason == "installed"


def test_a_replayed_wipe_after_a_newer_install_changes_nothing(keys, on_v1, contents):
    store, state = on_v1
    wipe = sign_wipe(keys["operator"], "device:cam1", 1, issued=NOW)
    assert store.wipe(wipe, now=NOW).reason == "wiped"
    assert store.install(full_bundle(keys, 2, contents["v2"]), now=NOW).reason == "installed"
    before, live = files(state), store.current()
    result = store.wipe(wipe, now=NOW)
    assert (result.ok, result.reason) == (False, "replayed_wipe")
    assert files(state) == before and store.current() == live and store.state(now=NOW).state == "ok"


def test_a_replayed_wipe_while_wiped_is_refused(keys, on_v1):
    store, state = on_v1
    wipe = sign_wipe(keys["operator"], "device:cam1", 1, issued=NOW)
    assert store.wipe(wipe, now=NOW).reason == "wiped"
    before = files(state)
    assert store.wipe(wipe, now=NOW).reason == "replayed_wipe"
    assert files(state) == before


def _forged(keys):
    good = sign_wipe(keys["operator"], "device:cam1", 9, issued=NOW)
    return {
        "stranger": (sign_wipe(keys["stranger"], "device:cam1", 9, issued=NOW), "unknown_key"),
        "unsigned": (b'{"statement": "{}", "signature": ""}', "bad_signature"),
        "not json": (b"wipe everything", "bad_wipe"),
        "edited": (good.replace(b'\\"upto_version\\":9', b'\\"upto_version\\":99'), "bad_signature"),
    }


@pytest.mark.parametrize("kind", ["stranger", "unsigned", "not json", "edited"])
def test_an_unsigned_or_foreign_wipe_is_refused_and_changes_nothing(keys, on_v2_by_delta, kind):
    store, state, _, full_v2 = on_v2_by_delta
    data, reason = _forged(keys)[kind]
    assert data != sign_wipe(keys["operator"], "device:cam1", 9, issued=NOW)
    before = files(state)
    result = store.wipe(data, now=NOW)
    assert (result.ok, result.reason) == (False, reason)
    assert files(state) == before and live_payload(store) == full_v2
    assert store.state(now=NOW).state == "ok" and store.floor == 2


def test_a_group_wipe_applies_only_to_a_list_from_that_group(keys, tmp_path, contents):
    state = tmp_path / "g"
    store = new_store(keys, state)
    store.start(now=NOW)
    assert store.install(full_bundle(keys, 1, contents["v1"], group="patrol"), now=NOW).reason == "installed"
    before = files(state)
    result = store.wipe(sign_wipe(keys["operator"], "group:gate", 1, issued=NOW), now=NOW)
    assert (result.ok, result.reason) == (False, "not_for_this_device")
    assert files(state) == before and live_payload(store) == contents["v1"]
    assert store.wipe(sign_wipe(keys["operator"], "device:cam2", 1, issued=NOW), now=NOW).reason == \
        "not_for_this_device"
    result = store.wipe(sign_wipe(keys["operator"], "group:patrol", 1, issued=NOW), now=NOW)
    assert (result.ok, result.reason) == (True, "wiped")
    assert store.current() == (None, None) and not (state / "installed.bundle").exists()


def test_a_group_wipe_does_not_touch_a_list_sealed_for_the_device(keys, on_v1, contents):
    store, state = on_v1
    before = files(state)
    result = store.wipe(sign_wipe(keys["operator"], "group:patrol", 1, issued=NOW), now=NOW)
    assert (result.ok, result.reason) == (False, "not_for_this_device")
    assert files(state) == before and live_payload(store) == contents["v1"]


def test_the_floor_survives_a_restart_after_a_wipe(keys, on_v2_by_delta, contents):
    store, state, _, full_v2 = on_v2_by_delta
    assert store.wipe(sign_wipe(keys["operator"], "device:cam1", 2, issued=NOW), now=NOW).reason == "wiped"
    restarted = new_store(keys, state)
    restarted.start(now=NOW)
    assert not (state / "installed.bundle").exists() and restarted.read_record() == (2, "wiped")
    assert restarted.current() == (None, None) and restarted.floor == 2
    assert restarted.state(now=NOW).state == "wiped"
    assert restarted.install(full_bundle(keys, 1, contents["v1"]), now=NOW).reason == "rollback"
    assert restarted.install(full_bundle(keys, 2, full_v2), now=NOW).reason == "same_version_different_content"
    assert restarted.wipe(sign_wipe(keys["operator"], "device:cam1", 2, issued=NOW), now=NOW).reason == \
        "replayed_wipe"
    assert restarted.install(full_bundle(keys, 3, contents["v3"]), now=NOW).reason == "installed"
