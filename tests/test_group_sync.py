"""Group watchlists through the real broker with an ACL generated from a fleet file: members read their group's
subtree and nobody else does, members cannot write it; one payload reaches every member; deltas install on their
base and a device that was offline for three versions catches up with the full newest one; a signed group wipe
empties every member; `edge fleet status` reports the rollout."""

import json
import queue
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge import keys
from edge.cli import main
from edge.messaging.mqtt import MqttClient
from edge.messaging.sync import WatchlistSync
from edge.operator.fleet import Fleet, acl_text
from edge.watchlist import delta as D
from edge.watchlist.operator.diff import diff
from edge.watchlist.operator.build import make_payload
from edge.watchlist.operator.seal import seal
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.payload import content_sha256, pack
from edge.watchlist.device.store import WatchlistStore

EMBEDDER = ("test", "0" * 64)
GROUP = "patrol"


@pytest.fixture(scope="module")
def crypto():
    return {"operator": keys.generate_operator_key(),
            **{d: keys.generate_device_key() for d in ("cam-a", "cam-b", "cam-c", "cam-d")}}


def fleet_of(crypto, members=("cam-a", "cam-b", "cam-c")) -> Fleet:
    fleet = Fleet()
    for d in ("cam-a", "cam-b", "cam-c", "cam-d"):
        fleet.add(d, keys.raw_public(crypto[d].public_key()), [GROUP] if d in members else [])
    return fleet


def versions(n_versions: int, n: int = 300, change: int = 20):
    """Full payloads v1..vN (each changes `change` subjects) and the delta of each on the one before."""
    rng = np.random.default_rng(7)

    def vec():
        v = rng.standard_normal(128).astype(np.float32)
        return v / np.linalg.norm(v)

    subjects = {f"s{i}": vec() for i in range(n)}
    fulls, deltas, base, nxt = {}, {}, None, n
    for version in range(1, n_versions + 1):
        if base is not None:
            for sid in list(subjects)[:change]:
                del subjects[sid]
            for _ in range(change):
                subjects[f"s{nxt}"] = vec()
                nxt += 1
        ids = list(subjects)
        new = make_payload(np.stack([subjects[s] for s in ids]), list(range(len(ids))),
                           [{"id": s, "label": None, "category": None, "expires": None} for s in ids], n_trees=2)
        full = new if base is None else D.apply(base, diff(base, new))
        if base is not None:
            deltas[version] = D.pack_delta(diff(base, new))
        fulls[version], base = pack(full), full
    return fulls, deltas


def seal_for_group(crypto, fleet, version, payload, base_full=None, content=None):
    recipients = {d: keys.x25519_public(k) for d, k in fleet.recipients(group=GROUP).items()}
    base = None if base_full is None else {"version": version - 1, "content_sha256": content_sha256(base_full)}
    return seal(payload, watchlist_id="wl", version=version, group=GROUP, recipients=recipients,
                signing_key=crypto["operator"], embedder_id=EMBEDDER[0], embedder_sha256=EMBEDDER[1], dim=128,
                n_items=300, n_subjects=300, thresholds={"match": 0.9}, base=base, content=content,
                expires=datetime.now(timezone.utc) + timedelta(days=1))


class Device:
    """A device's store, MQTT client and sync, pumped by `pump`."""

    def __init__(self, broker, crypto, device_id, state_dir):
        self.id = device_id
        self.results = []
        op = crypto["operator"].public_key()
        self.store = WatchlistStore(state_dir, device_id, crypto[device_id], {keys.key_id(op): op}, *EMBEDDER,
                                    lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
        self.store.start()
        self.client = MqttClient(broker.client_settings(device_id))
        self.sync = WatchlistSync(self.store, self.client, device_id, state_dir / "incoming",
                                  on_result=lambda r, _: self.results.append(r))
        self.client.start()
        self.client.wait_connected(5)
        self.sync.start()

    def pump(self) -> None:
        self.sync.tick()
        while True:
            try:
                msg = self.client.inbox.get_nowait()
            except queue.Empty:
                return
            self.sync.handle(msg.topic, msg.payload)

    def version(self):
        _, manifest = self.store.current()
        return manifest["version"] if manifest else None

    def stop(self):
        self.client.stop()


def run_until(devices, done, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in devices:
            d.pump()
        if done():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out: {[(d.id, d.version(), d.sync.stats) for d in devices]}")


def cli(broker, capsys, *argv, cn="operator-publish"):
    pki = broker.pki
    code = main([*argv, "--host", broker.host, "--port", str(broker.port), "--ca", str(pki.ca),
                 "--cert", str(pki.cert(cn)), "--key", str(pki.key(cn)), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def received(client, topic, payload, timeout=5.0):
    """Messages `client` got until (topic, payload) arrived (or the timeout)."""
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = client.inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        got.append((msg.topic, msg.payload))
        if (msg.topic, msg.payload) == (topic, payload):
            break
    return got


def test_group_acl_members_read_nobody_else_and_nobody_but_the_publisher_writes(broker, crypto):
    broker.load_acl(acl_text(fleet_of(crypto, members=("cam-a", "cam-c"))))
    topic = f"edge/groups/{GROUP}/watchlist/manifest"
    clients = {}
    for name in ("cam-a", "cam-b", "cam-c", "operator"):
        clients[name] = MqttClient(broker.client_settings(name), [("edge/groups/+/watchlist/#", 1)])
        clients[name].start()
        clients[name].wait_connected(5)
    publisher = MqttClient(broker.client_settings("operator-publish"))
    publisher.start()
    publisher.wait_connected(5)
    try:
        for name in ("cam-a", "cam-b", "operator"):  # forged offers: members, non-members and the consumer
            assert clients[name].publish(f"edge/groups/{GROUP}/watchlist/chunk/1/0", f"forged by {name}".encode(),
                                         retain=True) is not None
        time.sleep(0.3)
        publisher.publish(topic, b"real offer", retain=True)
        for member in ("cam-a", "cam-c"):
            assert received(clients[member], topic, b"real offer") == [(topic, b"real offer")], member
        # A non-member, and the consumer, get nothing from the group subtree (the retained offer included).
        assert received(clients["cam-b"], topic, b"real offer", timeout=1.0) == []
        assert received(clients["operator"], topic, b"real offer", timeout=0.5) == []
        # A late member subscribing now gets only the publisher's retained message: no forged chunk was stored.
        late = MqttClient(broker.client_settings("cam-c", client_id="cam-c"), [(f"edge/groups/{GROUP}/#", 1)])
        clients["cam-c"].stop()
        late.start()
        late.wait_connected(5)
        clients["cam-c"] = late
        assert received(late, topic, b"real offer") == [(topic, b"real offer")]
    finally:
        publisher.stop()
        for c in clients.values():
            c.stop()


def test_one_group_payload_deltas_catch_up_and_wipe(broker, crypto, tmp_path, capsys):
    fleet = fleet_of(crypto)  # cam-a, cam-b, cam-c in the group; cam-d not
    broker.load_acl(acl_text(fleet))
    op_pub = tmp_path / "operator.pub"
    keys.save_public_key(op_pub, crypto["operator"].public_key())
    fulls, deltas = versions(4)
    files = {}
    for v in fulls:
        files[v] = tmp_path / f"v{v}.bundle"
        files[v].write_bytes(seal_for_group(crypto, fleet, v, fulls[v]))
        if v in deltas:
            files[f"d{v}"] = tmp_path / f"v{v}.delta"
            files[f"d{v}"].write_bytes(seal_for_group(crypto, fleet, v, deltas[v], fulls[v - 1],
                                                      content_sha256(fulls[v])))

    online = [Device(broker, crypto, d, tmp_path / d) for d in ("cam-a", "cam-b", "cam-d")]
    outsider = online[2]
    try:
        report = cli(broker, capsys, "watchlist", "publish", "--bundle", str(files[1]), "--group", GROUP,
                     "--operator-key", str(op_pub), "--chunk-bytes", "65536")
        assert report["audience"] == f"group:{GROUP}" and report["recipients"] == 3
        run_until(online[:2], lambda: all(d.version() == 1 for d in online[:2]))
        assert [r.reason for r in online[0].results] == ["installed"]
        for v in (2, 3):  # each version: its delta for devices on v-1, the full one for the rest
            report = cli(broker, capsys, "watchlist", "publish", "--bundle", str(files[v]), "--delta",
                         str(files[f"d{v}"]), "--group", GROUP, "--operator-key", str(op_pub), "--chunk-bytes", "65536")
            assert report["cleared_chunks"] > 0  # the old version's chunks no longer sit on the broker
            run_until(online[:2], lambda v=v: all(d.version() == v for d in online[:2]))
        for d in online[:2]:
            assert [r.message.split(" (")[0] for r in d.results][1:] == [
                "installed watchlist wl v2 from a delta on v1", "installed watchlist wl v3 from a delta on v2"]
            _, manifest = d.store.current()  # the rebuilt content is v3's, as signed (checked at install)
            assert manifest["content_sha256"] == content_sha256(fulls[3]) and manifest["kind"] == "delta"
        assert outsider.version() is None and outsider.sync.stats.chunks_received == 0  # not a member: nothing
        # cam-c was offline for v1..v3: it comes up and goes straight to the newest, full.
        late = Device(broker, crypto, "cam-c", tmp_path / "cam-c")
        online.append(late)
        run_until([late], lambda: late.version() == 3)
        assert [r.message.split(" (")[0] for r in late.results] == ["installed watchlist wl v3"]
        # The rollout as the operator sees it.
        status = cli(broker, capsys, "fleet", "status", "--fleet", str(save_fleet_file(tmp_path, fleet)),
                     "--wait", "2")
        by_id = {d["device_id"]: d for d in status["devices"]}
        assert {d: by_id[d]["installed_version"] for d in ("cam-a", "cam-b", "cam-c")} == {"cam-a": 3, "cam-b": 3,
                                                                                           "cam-c": 3}
        assert status["versions"]["3"] == 3 and by_id["cam-d"]["state"] == "none"
        # A signed group wipe: every member drops its list; a replay of it later changes nothing.
        signing = tmp_path / "operator.key"
        keys.save_private_key(signing, crypto["operator"])
        cli(broker, capsys, "fleet", "wipe", "--group", GROUP, "--upto", "3", "--signing-key", str(signing))
        members = [d for d in online if d.id != "cam-d"]
        run_until(members, lambda: all(d.store.state().state == "wiped" for d in members))
        for d in members:
            assert not (tmp_path / d.id / "installed.bundle").exists() and d.store.current() == (None, None)
        status = cli(broker, capsys, "fleet", "status", "--fleet", str(tmp_path / "fleet.json"), "--wait", "2")
        assert {d["device_id"]: (d["state"], d["installed_version"]) for d in status["devices"]
                if d["device_id"] != "cam-d"} == {m.id: ("wiped", None) for m in members}  # reported, retained
        # v4 (full) is published: members install it despite the retained wipe, which no longer applies.
        cli(broker, capsys, "watchlist", "publish", "--bundle", str(files[4]), "--group", GROUP, "--operator-key",
            str(op_pub), "--chunk-bytes", "65536")
        run_until(members, lambda: all(d.version() == 4 for d in members))
        restarted = Device(broker, crypto, "cam-a", tmp_path / "cam-a")  # the retained wipe arrives again
        online[0].stop()
        online[0] = restarted
        run_until([restarted], lambda: restarted.sync.stats.offers >= 1)
        time.sleep(0.3)
        restarted.pump()
        assert restarted.version() == 4 and restarted.store.state().last_rejection.reason == "replayed_wipe"
    finally:
        for d in online:
            d.stop()


def save_fleet_file(tmp_path, fleet):
    from edge.operator.fleet import save_fleet

    path = tmp_path / "fleet.json"
    save_fleet(path, fleet)
    return path


def test_a_device_removed_from_the_group_cannot_open_the_next_version(broker, crypto, tmp_path, capsys):
    fleet = fleet_of(crypto)
    broker.load_acl(acl_text(fleet))
    fulls, _ = versions(2)
    op_pub = tmp_path / "operator.pub"
    keys.save_public_key(op_pub, crypto["operator"].public_key())
    v1 = tmp_path / "v1.bundle"
    v1.write_bytes(seal_for_group(crypto, fleet, 1, fulls[1]))
    cam_b = Device(broker, crypto, "cam-b", tmp_path / "cam-b")
    try:
        cli(broker, capsys, "watchlist", "publish", "--bundle", str(v1), "--group", GROUP, "--operator-key",
            str(op_pub))
        run_until([cam_b], lambda: cam_b.version() == 1)
        fleet.remove("cam-b")  # lost device: left out of v2 (its ACL grant stays until the broker reloads)
        v2 = tmp_path / "v2.bundle"
        v2.write_bytes(seal_for_group(crypto, fleet, 2, fulls[2]))
        cli(broker, capsys, "watchlist", "publish", "--bundle", str(v2), "--group", GROUP, "--operator-key",
            str(op_pub))
        run_until([cam_b], lambda: cam_b.sync.stats.offers >= 2)
        assert cam_b.version() == 1 and cam_b.sync.download is None  # the offer does not list it: nothing fetched
        # Even handed the bundle directly, it cannot open it.
        result = cam_b.store.install(v2.read_bytes())
        assert (result.ok, result.reason) == (False, "not_recipient")
    finally:
        cam_b.stop()


def test_bench_sync_reports_designs_keys_from_a_real_run(capsys):
    """`edge watchlist bench-sync` at a small size: device processes, the shipped broker config, real bundles."""
    code = main(["watchlist", "bench-sync", "--devices", "3", "--size", "3000", "--change", "100", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert {"devices", "size", "full_bytes_retained", "full_seconds_all_installed", "delta_bytes",
            "delta_seconds_all_installed"} <= set(report)
    assert (report["devices"], report["size"], report["devices_via_delta"]) == (3, 3000, 3)
    # One payload for the group, not one per device: what the broker retains is the bundle plus its small offer.
    assert report["full_bundle_bytes"] <= report["full_bytes_retained"] < report["full_bundle_bytes"] + 16384
    assert report["delta_bytes"] < 0.1 * report["full_bundle_bytes"]
    assert report["full_seconds_all_installed"] > 0 and report["delta_seconds_all_installed"] > 0
