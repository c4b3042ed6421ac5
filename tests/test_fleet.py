"""The fleet registry and its broker ACL, the `edge fleet` commands, group and delta sealing end to end through the
CLI, and the rollout report built from the devices' retained messages."""

import base64
import contextlib
import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import DATA
from edge import keys
from edge.cli import main
from edge.errors import DataError
from edge.keys import TrustStore, generate_device_key
from edge.messaging.payloads import encode_status, encode_watchlist_state
from edge.operator.fleet import MAX_FLEET_BYTES, Fleet, acl_text, load_fleet, save_fleet
from edge.operator.rollout import render, rollout
from edge.watchlist.device.unseal import open_bundle
from edge.watchlist.operator.build import load_build
from edge.watchlist.payload import content_sha256, unpack
from edge.watchlist.device.store import WatchlistStore

REPO = Path(__file__).resolve().parent.parent
COMMITTED_ACL = REPO / "firmware-config" / "mosquitto" / "acl"


def raw_key():
    return keys.raw_public(generate_device_key().public_key())


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------- the registry


def test_add_remove_groups_and_recipients():
    k1, k2, k3 = raw_key(), raw_key(), raw_key()
    fleet = Fleet()
    fleet.add("cam-01", k1, ["patrol"])
    fleet.add("cam-02", k2, ["patrol", "gate", "patrol"])
    fleet.add("cam-03", k3, [])
    assert fleet.devices["cam-02"] == {"public_key": k2, "groups": ["gate", "patrol"]}  # sorted, deduplicated
    assert fleet.groups() == {"patrol": ["cam-01", "cam-02"], "gate": ["cam-02"]}
    assert fleet.recipients(group="patrol") == {"cam-01": k1, "cam-02": k2}
    assert fleet.recipients(group="gate") == {"cam-02": k2}
    assert fleet.recipients(device_id="cam-03") == {"cam-03": k3}
    fleet.remove("cam-02")
    assert fleet.groups() == {"patrol": ["cam-01"]}
    with pytest.raises(DataError, match="group 'gate' has no members in the fleet file"):
        fleet.recipients(group="gate")
    with pytest.raises(DataError, match="device 'cam-02' is not in the fleet; add it with `edge fleet add`"):
        fleet.recipients(device_id="cam-02")
    with pytest.raises(DataError, match="device 'cam-02' is not in the fleet"):
        fleet.remove("cam-02")


@pytest.mark.parametrize("role", ["operator", "operator-publish"])
def test_the_broker_role_names_are_not_device_ids(role):
    with pytest.raises(DataError):
        Fleet().add(role, raw_key(), ["patrol"])


def test_replace_changes_a_device_and_duplicates_need_it():
    k1, k2 = raw_key(), raw_key()
    fleet = Fleet()
    fleet.add("cam-01", k1, ["patrol"])
    with pytest.raises(DataError, match="device 'cam-01' is already in the fleet; pass --replace to change it"):
        fleet.add("cam-01", k2, ["gate"])
    assert fleet.devices["cam-01"]["public_key"] == k1
    fleet.add("cam-01", k2, ["gate"], replace=True)
    assert fleet.devices["cam-01"] == {"public_key": k2, "groups": ["gate"]}


@pytest.mark.parametrize("device_id, key, groups, message", [
    ("cam/01", 32, [], "device id 'cam/01' is invalid: use 1-64 characters"),
    ("cam+", 32, [], "device id 'cam\\+' is invalid"),
    ("", 32, [], "device id '' is invalid"),
    ("x" * 65, 32, [], "is invalid"),
    ("groups", 32, [], "device id 'groups' is reserved for the group subtree"),
    ("cam-01", 31, [], "an X25519 public key is 32 bytes, got 31"),
    ("cam-01", 33, [], "an X25519 public key is 32 bytes, got 33"),
    ("cam-01", 32, ["pat rol"], "group name 'pat rol' is invalid"),
    ("cam-01", 32, ["a/#"], "group name 'a/#' is invalid"),
    ("cam-01", 32, [f"g{i}" for i in range(33)], "at most 32 groups"),
])
def test_bad_devices_are_refused_with_a_clear_message(device_id, key, groups, message):
    fleet = Fleet()
    with pytest.raises(DataError, match=message):
        fleet.add(device_id, os.urandom(key), groups)
    assert fleet.devices == {}


def test_save_and_load_round_trip(tmp_path):
    fleet = Fleet()
    fleet.add("cam-02", raw_key(), ["patrol", "gate"])
    fleet.add("cam-01", raw_key(), [])
    path = tmp_path / "sub" / "fleet.json"
    save_fleet(path, fleet)
    assert load_fleet(path) == fleet
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    doc = json.loads(path.read_bytes())
    assert doc["format"] == "edge-fleet/1" and list(doc["devices"]) == ["cam-01", "cam-02"]
    assert base64.b64decode(doc["devices"]["cam-02"]["public_key"]) == fleet.devices["cam-02"]["public_key"]
    assert path.read_bytes() == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # canonical
    save_fleet(path, load_fleet(path))
    assert json.loads(path.read_bytes()) == doc


def test_a_missing_fleet_file(tmp_path):
    assert load_fleet(tmp_path / "none.json") == Fleet()
    with pytest.raises(DataError, match="fleet file .*none.json does not exist; create it with `edge fleet add`"):
        load_fleet(tmp_path / "none.json", missing_ok=False)


def _device(key=None, groups=None):
    return {"public_key": base64.b64encode(key if key is not None else raw_key()).decode(),
            "groups": ["patrol"] if groups is None else groups}


MALFORMED_FILES = {
    "not json": (b"{fleet", "is not a readable fleet file"),
    "not utf-8": (b'{"format": "\xff"}', "is not a readable fleet file"),
    "too deep": (b"[" * 100_000 + b"]" * 100_000, "is not a readable fleet file"),
    "a list": (b"[]", "is not a edge-fleet/1 fleet file"),
    "other format": (json.dumps({"format": "edge-fleet/2", "devices": {}}).encode(), "is not a edge-fleet/1"),
    "devices a list": (json.dumps({"format": "edge-fleet/1", "devices": []}).encode(), "is not a edge-fleet/1"),
    "no key": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": {"groups": []}}}).encode(),
               "device 'cam-01' needs a base64 public_key and a list of groups"),
    "key not base64": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": {"public_key": "!!!!",
                                                                                    "groups": []}}}).encode(),
                       "device 'cam-01' needs a base64 public_key"),
    "key not a string": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": {"public_key": 5,
                                                                                      "groups": []}}}).encode(),
                         "device 'cam-01' needs a base64 public_key"),
    "groups a string": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": _device(groups="patrol")}}
                                   ).encode(), "needs a base64 public_key and a list of groups"),
    "groups not strings": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": _device(groups=[1])}}
                                      ).encode(), "needs a base64 public_key and a list of groups"),
    "entry not an object": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": "key"}}).encode(),
                            "needs a base64 public_key"),
    "short key": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": _device(b"k" * 16)}}).encode(),
                  "an X25519 public key is 32 bytes, got 16"),
    "bad device id": (json.dumps({"format": "edge-fleet/1", "devices": {"cam 01": _device()}}).encode(),
                      "device id 'cam 01' is invalid"),
    "reserved id": (json.dumps({"format": "edge-fleet/1", "devices": {"groups": _device()}}).encode(),
                    "reserved for the group subtree"),
    "bad group": (json.dumps({"format": "edge-fleet/1", "devices": {"cam-01": _device(groups=["+"])}}).encode(),
                  "group name '\\+' is invalid"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_FILES))
def test_a_malformed_fleet_file_is_refused_with_a_clear_message(tmp_path, name):
    data, message = MALFORMED_FILES[name]
    path = tmp_path / "fleet.json"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        load_fleet(path)


def test_an_oversized_fleet_file_is_refused_unread(tmp_path):
    path = tmp_path / "fleet.json"
    with open(path, "wb") as f:
        f.truncate(MAX_FLEET_BYTES + 1)  # sparse: no data to parse, only its size
    with pytest.raises(DataError, match=f"is larger than {MAX_FLEET_BYTES} bytes: not a fleet file"):
        load_fleet(path)


# ------------------------------------------------------------------------------------------- the ACL


def test_the_acl_of_an_empty_fleet_is_the_committed_file():
    assert acl_text(Fleet()).encode() == COMMITTED_ACL.read_bytes()


def _grants(text):
    """The ACL lines after the committed base: [(user, line)] for every non-comment line."""
    base = COMMITTED_ACL.read_text()
    assert text.startswith(base)
    user, out = None, []
    for line in text[len(base):].splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            user = line[len("user "):]
            continue
        out.append((user, line))
    return out


def test_the_acl_grants_members_read_access_to_their_groups_and_nothing_else():
    fleet = Fleet()
    fleet.add("cam-02", raw_key(), ["patrol", "gate"])
    fleet.add("cam-01", raw_key(), ["patrol"])
    fleet.add("cam-03", raw_key(), [])  # no group: no block
    text = acl_text(fleet)
    assert sorted(_grants(text)) == [("cam-01", "topic read edge/groups/patrol/watchlist/#"),
                                     ("cam-02", "topic read edge/groups/gate/watchlist/#"),
                                     ("cam-02", "topic read edge/groups/patrol/watchlist/#")]
    assert "user cam-03" not in text and text.endswith("\n") and not text.endswith("\n\n")
    assert text.count("user cam-01\n") == 1 and text.count("user cam-02\n") == 1


def test_the_acl_follows_the_topic_prefix():
    fleet = Fleet()
    fleet.add("cam-01", raw_key(), ["patrol"])
    text = acl_text(fleet, "site/edge")
    assert "topic read site/edge/groups/patrol/watchlist/#" in text.splitlines()
    assert "pattern write site/edge/%u/events" in text.splitlines()
    assert " edge/" not in text.replace("site/edge/", "")


# ------------------------------------------------------------------------------------------- `edge fleet`


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Operator key and device keys made with `edge keys generate`."""
    tmp = tmp_path_factory.mktemp("fleet")
    assert main(["keys", "generate", "operator", "--out", str(tmp / "op")]) == 0
    for name in ("cam-01", "cam-02", "cam-03", "outsider"):
        assert main(["keys", "generate", "device", "--out", str(tmp / "dev"), "--name", name]) == 0
    return tmp


def test_fleet_add_list_remove_and_acl(pki, tmp_path, capsys):
    capsys.readouterr()
    dev, fleet = pki / "dev", tmp_path / "fleet.json"
    code, out, _ = run(capsys, "fleet", "add", "cam-01", "--key", dev / "cam-01.pub", "--group", "patrol",
                       "--fleet", fleet)
    kid = keys.key_id(keys.load_public_key(dev / "cam-01.pub", "device"))
    assert code == 0 and f"device cam-01 (key {kid}, patrol)" in out
    assert run(capsys, "fleet", "add", "cam-02", "--key", dev / "cam-02.pub", "--group", "patrol", "--group", "gate",
               "--fleet", fleet)[0] == 0
    assert run(capsys, "fleet", "add", "cam-03", "--key", dev / "cam-03.pub", "--fleet", fleet)[0] == 0

    code, _, err = run(capsys, "fleet", "add", "cam-01", "--key", dev / "cam-02.pub", "--fleet", fleet)
    assert code == 1 and "device 'cam-01' is already in the fleet; pass --replace to change it" in err
    code, _, err = run(capsys, "fleet", "add", "groups", "--key", dev / "cam-02.pub", "--fleet", fleet)
    assert code == 1 and "reserved for the group subtree" in err
    code, _, err = run(capsys, "fleet", "add", "cam-09", "--key", pki / "op" / "operator.pub", "--fleet", fleet)
    assert code == 1 and "an X25519 device key is needed" in err
    code, _, err = run(capsys, "fleet", "add", "cam-09", "--key", dev / "cam-09.pub", "--fleet", fleet)
    assert code == 1 and "key file not found" in err
    assert run(capsys, "fleet", "add", "cam-03", "--key", dev / "cam-03.pub", "--group", "gate", "--replace",
               "--fleet", fleet)[0] == 0

    code, out, _ = run(capsys, "fleet", "list", "--json", "--fleet", fleet)
    listed = json.loads(out)
    ids = {n: keys.key_id(keys.load_public_key(dev / f"{n}.pub", "device")) for n in ("cam-01", "cam-02", "cam-03")}
    assert code == 0 and listed == {
        "devices": [{"device_id": "cam-01", "key_id": ids["cam-01"], "groups": ["patrol"]},
                    {"device_id": "cam-02", "key_id": ids["cam-02"], "groups": ["gate", "patrol"]},
                    {"device_id": "cam-03", "key_id": ids["cam-03"], "groups": ["gate"]}],
        "groups": {"patrol": ["cam-01", "cam-02"], "gate": ["cam-02", "cam-03"]}}
    code, out, _ = run(capsys, "fleet", "list", "--fleet", fleet)
    assert code == 0 and "3 device(s); groups: " in out and f"cam-02  {ids['cam-02']}  gate, patrol" in out

    acl = tmp_path / "acl"
    code, out, _ = run(capsys, "fleet", "acl", "--out", acl, "--fleet", fleet)
    assert code == 0 and f"wrote {acl}" in out
    assert acl.read_text() == acl_text(load_fleet(fleet))
    assert stat.S_IMODE(os.stat(acl).st_mode) == 0o644
    assert sorted(_grants(acl.read_text())) == [("cam-01", "topic read edge/groups/patrol/watchlist/#"),
                                                ("cam-02", "topic read edge/groups/gate/watchlist/#"),
                                                ("cam-02", "topic read edge/groups/patrol/watchlist/#"),
                                                ("cam-03", "topic read edge/groups/gate/watchlist/#")]

    code, out, _ = run(capsys, "fleet", "remove", "cam-02", "--fleet", fleet)
    assert code == 0 and "removed cam-02" in out
    assert sorted(load_fleet(fleet).devices) == ["cam-01", "cam-03"]
    code, _, err = run(capsys, "fleet", "remove", "cam-02", "--fleet", fleet)
    assert code == 1 and "device 'cam-02' is not in the fleet" in err
    code, out, _ = run(capsys, "fleet", "acl", "--fleet", fleet)  # printed
    assert code == 0 and out == acl_text(load_fleet(fleet)) and "user cam-02" not in out
    code, _, err = run(capsys, "fleet", "list", "--fleet", tmp_path / "nope.json")
    assert code == 1 and "does not exist" in err


def test_fleet_acl_of_an_empty_fleet_file_is_the_committed_acl(tmp_path, capsys):
    save_fleet(tmp_path / "fleet.json", Fleet())
    code, out, _ = run(capsys, "fleet", "acl", "--fleet", tmp_path / "fleet.json")
    assert code == 0 and out.encode() == COMMITTED_ACL.read_bytes()


# ------------------------------------------------------------------------------------------- sealing for a group


@pytest.fixture(scope="module")
def sealed(pki, tmp_path_factory):
    """Two builds of the bundled photos (v2: +1 subject, 1 relabelled), a fleet, v1 sealed for group patrol and v2
    sealed as a delta on v1 (with its full bundle), all through the CLI."""
    tmp = tmp_path_factory.mktemp("sealed")
    (tmp / "g1.csv").write_text("path,identity,label,category\nfaces/obama.jpg,obama,Barack Obama,test\n"
                                "faces/biden.jpg,biden,Joe Biden,test\n")
    (tmp / "g2.csv").write_text("path,identity,label,category\nfaces/obama.jpg,obama,Barack Obama,test\n"
                                "faces/biden.jpg,biden,Joseph Biden,test\n"
                                "faces/astronaut.jpg,collins,Eileen Collins,test\n")
    for n in ("1", "2"):
        assert main(["watchlist", "build", "--gallery", str(tmp / f"g{n}.csv"), "--root", str(DATA), "--out",
                     str(tmp / f"b{n}"), "--json"]) == 0
    fleet = tmp / "fleet.json"
    for device, groups in (("cam-01", ["patrol"]), ("cam-02", ["patrol", "gate"]), ("cam-03", ["gate"])):
        argv = ["fleet", "add", device, "--key", str(pki / "dev" / f"{device}.pub"), "--fleet", str(fleet)]
        assert main(argv + [a for g in groups for a in ("--group", g)]) == 0
    return tmp


def quiet(*argv):
    """(exit code, stdout, stderr) of `main(argv)` outside a test's capsys (module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def seal_cli(pki, *extra):
    code, out, err = quiet("watchlist", "seal", "--signing-key", pki / "op" / "operator.key", "--threshold", 0.5,
                           "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def verify_cli(pki, bundle, device):
    code, out, _ = quiet("watchlist", "verify", bundle, "--device-key", pki / "dev" / f"{device}.key",
                         "--operator-key", pki / "op" / "operator.pub", "--json")
    return code, json.loads(out)


@pytest.fixture(scope="module")
def group_versions(pki, sealed):
    """v1 (full) and v2 (a delta on v1, with its full bundle) sealed for group patrol: the seal JSON of each."""
    tmp, fleet, releases = sealed, sealed / "fleet.json", sealed / "releases"
    v1 = seal_cli(pki, "--in", tmp / "b1", "--group", "patrol", "--fleet", fleet, "--version", 1,
                  "--out", tmp / "out" / "v1.bundle", "--releases", releases)
    v2 = seal_cli(pki, "--in", tmp / "b2", "--group", "patrol", "--fleet", fleet, "--version", 2,
                  "--base", 1, "--out", tmp / "out" / "v2.bundle", "--releases", releases)
    return v1, v2


@pytest.mark.models
def test_seal_for_a_group_then_a_delta_for_it(pki, sealed, group_versions):
    tmp, releases = sealed, sealed / "releases"
    v1, v2 = group_versions
    assert (v1["kind"], v1["version"], v1["audience"], v1["recipients"]) == ("full", 1, "group:patrol",
                                                                             ["cam-01", "cam-02"])
    assert "base" not in v1 and "full" not in v1 and v1["device_id"] is None
    assert v1["sha256"] == hashlib.sha256((tmp / "out" / "v1.bundle").read_bytes()).hexdigest()
    assert v1["content_sha256"] == content_sha256((releases / "default" / "v1.payload").read_bytes())

    full_path = tmp / "out" / "v2.full.bundle"
    assert (v2["kind"], v2["version"], v2["base"], v2["audience"], v2["recipients"]) == \
        ("delta", 2, 1, "group:patrol", ["cam-01", "cam-02"])
    assert (v2["added"], v2["removed"], v2["updated"], v2["n_subjects"], v2["n_items"]) == (1, 0, 1, 3, 3)
    assert v2["full"] == {"path": str(full_path), "sha256": hashlib.sha256(full_path.read_bytes()).hexdigest(),
                          "bytes": full_path.stat().st_size}
    assert v2["bytes"] == (tmp / "out" / "v2.bundle").stat().st_size < v2["full"]["bytes"]
    assert v2["content_sha256"] == content_sha256((releases / "default" / "v2.payload").read_bytes())

    for device in ("cam-01", "cam-02"):  # every member opens the delta, the full bundle and v1
        code, r = verify_cli(pki, tmp / "out" / "v2.bundle", device)
        assert code == 0 and r["ok"] and (r["kind"], r["base"], r["device_id"], r["audience"]) == \
            ("delta", 1, device, "group:patrol")
        code, r = verify_cli(pki, full_path, device)
        assert code == 0 and r["ok"] and (r["kind"], r["version"], r["n_subjects"], r["n_items"]) == \
            ("full", 2, 3, 3)
        code, r = verify_cli(pki, tmp / "out" / "v1.bundle", device)
        assert code == 0 and (r["kind"], r["n_subjects"]) == ("full", 2)
    for stranger in ("cam-03", "outsider"):  # in another group, or in no fleet at all
        for bundle in ("v1.bundle", "v2.bundle", "v2.full.bundle"):
            code, r = verify_cli(pki, tmp / "out" / bundle, stranger)
            assert code == 1 and (r["ok"], r["reason"]) == (False, "not_recipient")


@pytest.mark.models
def test_a_member_device_installs_v1_then_the_delta_and_holds_the_full_v2(pki, sealed, group_versions, tmp_path):
    tmp = sealed
    _, embedder = load_build(tmp / "b2")
    operator = keys.load_public_key(pki / "op" / "operator.pub", "operator")
    device = keys.load_private_key(pki / "dev" / "cam-02.key", "device")
    store = WatchlistStore(tmp_path / "state", "cam-02", device, TrustStore([operator]), embedder["id"],
                           embedder["sha256"], lambda opened: opened.payload)
    store.start()
    assert store.install((tmp / "out" / "v1.bundle").read_bytes()).reason == "installed"
    result = store.install((tmp / "out" / "v2.bundle").read_bytes())
    assert (result.ok, result.reason) == (True, "installed") and "from a delta on v1" in result.message
    full = open_bundle((tmp / "out" / "v2.full.bundle").read_bytes(), device, TrustStore([operator]),
                       expected_device_id="cam-02")
    assert store.current()[0] == full.payload
    assert sorted(unpack(full.payload).meta["subjects"]["label"]) == ["Barack Obama", "Eileen Collins",
                                                                      "Joseph Biden"]
    assert store.install((tmp / "out" / "v2.full.bundle").read_bytes()).reason == "already_installed"


@pytest.mark.models
def test_a_device_removed_from_the_fleet_is_left_out_of_the_next_version(pki, sealed, capsys, tmp_path):
    fleet = tmp_path / "fleet.json"
    fleet.write_bytes((sealed / "fleet.json").read_bytes())
    assert run(capsys, "fleet", "remove", "cam-01", "--fleet", fleet)[0] == 0
    r = seal_cli(pki, "--in", sealed / "b1", "--group", "patrol", "--fleet", fleet, "--version", 5,
                 "--out", tmp_path / "v5.bundle", "--releases", tmp_path / "releases")
    assert r["recipients"] == ["cam-02"]
    assert verify_cli(pki, tmp_path / "v5.bundle", "cam-02")[1]["ok"]
    assert verify_cli(pki, tmp_path / "v5.bundle", "cam-01")[1]["reason"] == "not_recipient"
    # One device of the fleet, by id.
    r = seal_cli(pki, "--in", sealed / "b1", "--device-id", "cam-03", "--fleet", fleet, "--version",
                 6, "--out", tmp_path / "v6.bundle", "--releases", tmp_path / "releases")
    assert (r["audience"], r["recipients"]) == ("device:cam-03", ["cam-03"])
    assert verify_cli(pki, tmp_path / "v6.bundle", "cam-03")[1]["ok"]
    assert verify_cli(pki, tmp_path / "v6.bundle", "cam-02")[1]["reason"] == "not_recipient"


def _tiny_build(out):
    """A build directory of two random templates (no models needed): what `edge watchlist build` writes."""
    import numpy as np

    from edge.canonical import canonical_json
    from edge.watchlist.operator.build import make_payload

    v = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    p = make_payload(v / np.linalg.norm(v, axis=1, keepdims=True), [0, 1],
                     [{"id": s, "label": s, "category": "", "expires": None} for s in ("a", "b")], n_trees=2)
    out.mkdir()
    (out / "index.ann").write_bytes(p.index)
    (out / "templates.bin").write_bytes(p.templates)
    (out / "meta.json").write_bytes(canonical_json(dict(p.meta, embedder={"id": "e", "sha256": "0" * 64})))


@pytest.mark.parametrize("extra, message", [
    (["--group", "patrol"], "--group needs --fleet FILE"),
    (["--group", "nobody", "--fleet", "{fleet}"], "group 'nobody' has no members in the fleet file"),
    (["--group", "patrol", "--device-id", "cam-01", "--fleet", "{fleet}"], "seal for one device"),
    (["--group", "pat/rol", "--fleet", "{fleet}"], "--group 'pat/rol' is invalid"),
    (["--device-id", "cam-09", "--fleet", "{fleet}"], "device 'cam-09' is not in the fleet"),
    (["--group", "patrol", "--fleet", "{fleet}", "--base", "2"], "--base must be an older version than --version 2"),
])
def test_seal_refuses_bad_audiences_with_a_clear_message(pki, tmp_path, capsys, extra, message):
    fleet = tmp_path / "fleet.json"
    f = Fleet()
    f.add("cam-01", keys.raw_public(keys.load_public_key(pki / "dev" / "cam-01.pub", "device")), ["patrol"])
    save_fleet(fleet, f)
    _tiny_build(tmp_path / "build")
    code, _, err = run(capsys, "watchlist", "seal", "--in", tmp_path / "build", "--signing-key",
                       pki / "op" / "operator.key", "--version", 2, "--out", tmp_path / "v.bundle", "--threshold",
                       0.5, *[a.format(fleet=fleet) for a in extra])
    assert code == 1 and message in err
    assert not (tmp_path / "v.bundle").exists()
    # The same build, key and fleet with a valid audience seal (the refusal above is the audience's).
    code, out, err = run(capsys, "watchlist", "seal", "--in", tmp_path / "build", "--signing-key",
                         pki / "op" / "operator.key", "--version", 2, "--out", tmp_path / "v.bundle", "--threshold",
                         0.5, "--group", "patrol", "--fleet", fleet, "--json")
    assert code == 0 and json.loads(out)["recipients"] == ["cam-01"], err


# ------------------------------------------------------------------------------------------- rollout


def _messages():
    return [
        ("edge/cam-01/watchlist/state", encode_watchlist_state(3, "installed")),
        ("edge/cam-01/status", encode_status("online", {"reported_at": "2025-06-01T12:00:00Z", "fps": 9.5})),
        ("edge/cam-02/watchlist/state", encode_watchlist_state(2, "rejected", "base_missing", "need the full v3")),
        ("edge/cam-02/status", encode_status("offline")),
        ("edge/cam-04/watchlist/state", encode_watchlist_state(3, "installed")),  # not in the fleet
        ("edge/cam-05/watchlist/state", encode_watchlist_state(None, "wiped")),
        ("edge/cam-05/status", encode_status("online", {"reported_at": "x" * 33})),  # too long: not shown
        ("edge/cam-06/status", encode_status("online", {"reported_at": 1717243200})),  # not a string
        ("edge/cam-01/events", b"{}"),  # not a rollout topic: ignored, not malformed
        # malformed:
        ("edge/cam-07/watchlist/state", b"{not json"),
        ("edge/cam-07/status", json.dumps({"schema": "edge-status/1", "state": "asleep", "health": {}}).encode()),
        ("edge/cam-08/watchlist/state", json.dumps({"schema": "edge-watchlist-state/1", "installed_version": None,
                                                    "state": "installed", "reason": None,
                                                    "message": None}).encode()),
        ("other/cam-01/status", encode_status("online")),
        ("edge/cam 01/status", encode_status("online")),
        ("edge/groups/patrol/watchlist/state", encode_watchlist_state(3, "installed")),
    ]


def test_rollout_reports_devices_versions_and_malformed_messages():
    report = rollout(_messages(), {"cam-01": {}, "cam-02": {}, "cam-03": {}, "cam-05": {}, "cam-06": {}})
    by_id = {d["device_id"]: d for d in report["devices"]}
    assert [d["device_id"] for d in report["devices"]] == ["cam-01", "cam-02", "cam-04", "cam-05", "cam-06"]
    assert by_id["cam-01"] == {"device_id": "cam-01", "in_fleet": True, "online": True,
                               "last_seen": "2025-06-01T12:00:00Z", "installed_version": 3, "state": "installed",
                               "reason": None, "message": None}
    assert by_id["cam-02"] == {"device_id": "cam-02", "in_fleet": True, "online": False, "last_seen": None,
                               "installed_version": 2, "state": "rejected", "reason": "base_missing",
                               "message": "need the full v3"}
    assert by_id["cam-04"]["in_fleet"] is False and by_id["cam-04"]["online"] is None
    assert (by_id["cam-05"]["state"], by_id["cam-05"]["installed_version"], by_id["cam-05"]["last_seen"]) == \
        ("wiped", None, None)
    assert by_id["cam-06"]["last_seen"] is None and by_id["cam-06"]["online"] is True
    assert report["versions"] == {"3": 2, "2": 1} and list(report["versions"]) == ["3", "2"]
    assert report["not_reporting"] == ["cam-03"]
    assert report["malformed"] == 6
    assert json.loads(json.dumps(report)) == report


def test_rollout_of_nothing():
    assert rollout([], ["cam-02", "cam-01"]) == {"devices": [], "versions": {}, "not_reporting": ["cam-01", "cam-02"],
                                                 "malformed": 0}


def test_versions_sort_numerically():
    msgs = [(f"edge/cam-{v}/watchlist/state", encode_watchlist_state(v, "installed")) for v in (9, 10, 100, 9)]
    assert list(rollout(msgs)["versions"]) == ["100", "10", "9"]


def test_render_shows_the_table_rows_and_the_summary():
    text = render(rollout(_messages(), ["cam-01", "cam-02", "cam-03", "cam-05", "cam-06"]))
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["DEVICE", "ONLINE", "LAST", "SEEN", "VERSION", "STATE", "REASON"]
    assert ["cam-01", "yes", "2025-06-01T12:00:00Z", "3", "installed"] in rows
    assert ["cam-02", "no", "-", "2", "rejected", "base_missing"] in rows
    assert ["cam-04", "(not", "in", "fleet)", "-", "-", "3", "installed"] in rows
    assert ["cam-05", "yes", "-", "-", "wiped"] in rows
    lines = text.splitlines()
    assert "versions: v3: 2 devices, v2: 1 device" in lines
    assert "in the fleet but never reported: cam-03" in lines
    assert "6 malformed retained message(s) ignored" in lines
    assert render(rollout([])) == "DEVICE  ONLINE  LAST SEEN  VERSION  STATE  REASON\nversions: none installed"
