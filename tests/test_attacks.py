"""The standing attack suite (issue 11): every hole found by attacking the landed code, as a test that asserts the
message a user sees and that the last good state keeps serving — plus hypothesis-driven hostile offers and events.

Rows refer to the issue's table: 1 huge versions, 2 rollback while stopped, 3 rewritten audit history, 4 YAML alias
bomb, 5 giant PNG, 6 path characters in an offer, 7 deep nesting, 8 one client id for two tools, 9 terminal
escapes, 10 values seal/build wrote unchecked, 11 tracebacks for user errors, 12 names and modes at rest, 13 a
corrupt bundle published.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, FACES
from edge import keys
from edge.audit import AuditLog
from edge.audit_record import make_record
from edge.audit_seal import Sealer, new_keys
from edge.cli import main
from edge.errors import DataError
from edge.messaging.payloads import PayloadError, decode_watchlist_state, make_event
from edge.messaging.offers import offer_messages
from edge.messaging.sync import WatchlistSync
from edge.messaging.topics import Topics, WatchlistTopics
from edge.watchlist.device.store import WatchlistStore
from edge.watchlist.operator.seal import seal
from fakes import FakeStore, FakeTransport

DEVICE = "cam-f"
NOW = datetime.now(timezone.utc)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def no_traceback(code, err):
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.strip().count("\n") == 0, f"more than one line: {err!r}"  # one readable line


# ------------------------------------------------------------------------------------------------ sync

def fake_sync(tmp_path):
    return WatchlistSync(FakeStore(installs_as=7), FakeTransport(), DEVICE, tmp_path / "incoming", window=4)


def valid_offer(version=7, data=b"z" * 300):
    return offer_messages(data, DEVICE, version, chunk_bytes=100)


def last_state(sync):
    topic, body, _ = sync.transport.published[-1]
    assert topic == Topics(DEVICE).watchlist_state
    return decode_watchlist_state(body)


def offer_with(**fields):
    body = {"schema": "edge-wl-offer/2", "audience": f"device:{DEVICE}", "version": 7, "base": None,
            "bundle_sha256": "a" * 64, "bundle_bytes": 100, "chunk_bytes": 100, "chunks": ["b" * 64],
            "recipients": [DEVICE]}
    body.update(fields)
    return json.dumps(body).encode()


# ------------------------------------------------------------------------------ rows 1, 6, 7: hostile offers

@pytest.mark.parametrize("version", [2**63, 10**30, 2**63 - 1 + 1, -1, 0, 1.5, "7", True, None])
def test_row1_offer_with_an_out_of_range_version_is_refused_reported_and_sync_goes_on(tmp_path, version):
    sync = fake_sync(tmp_path)
    sync.handle(Topics(DEVICE).watchlist_manifest, offer_with(version=version))
    assert sync.stats.malformed == 1 and sync.transport.subscribed == []
    state = last_state(sync)
    assert (state.state, state.reason) == ("rejected", "malformed_offer") and "version" in state.message
    for topic, payload in valid_offer()[::-1]:  # a valid newer version still installs
        sync.handle(topic, payload)
    assert sync.store.installed and last_state(sync).state == "installed"


def test_row6_path_characters_in_bundle_sha256_create_nothing_outside_incoming(tmp_path):
    sync = fake_sync(tmp_path)
    sync.handle(Topics(DEVICE).watchlist_manifest, offer_with(bundle_sha256="/../../canary123"))
    assert sync.stats.malformed == 1 and "bundle_sha256" in sync.stats.last_reason
    assert not any("canary" in str(p) for p in tmp_path.rglob("*"))
    assert last_state(sync).reason == "malformed_offer"


def test_a_refusal_quoting_image_like_or_control_text_is_still_reported(tmp_path):
    sync = fake_sync(tmp_path)
    sync.handle(Topics(DEVICE).watchlist_manifest, offer_with(audience="/9j/4AAQ\u001b[2J"))
    state = last_state(sync)
    assert (state.state, state.reason) == ("rejected", "malformed_offer") and sync.stats.malformed == 1


def test_row7_an_offer_nested_200000_deep_is_refused_without_a_traceback(tmp_path, caplog):
    sync = fake_sync(tmp_path)
    sync.handle(Topics(DEVICE).watchlist_manifest, b"[" * 200_000 + b"]" * 200_000)
    assert sync.stats.malformed == 1 and "not valid JSON" in sync.stats.last_reason
    assert "Traceback" not in caplog.text and last_state(sync).state == "rejected"


def _hostile_json(max_leaves=20):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
                        st.sampled_from(["/../../x", "\x1b[2J", "a" * 64, "+/#", "\u202e"]))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                            max_size=4),
                        max_leaves=max_leaves)


def _hostile_offer():
    fields = st.fixed_dictionaries({}, optional={
        "schema": st.sampled_from(["edge-wl-offer/2", "edge-wl-offer/1", ""]),
        "audience": st.sampled_from([f"device:{DEVICE}", "device:x", "group:patrol", DEVICE]),
        "device_id": st.sampled_from([DEVICE, "x"]),  # the format-1 field
        "version": _hostile_json(3), "base": _hostile_json(3), "bundle_sha256": _hostile_json(3),
        "bundle_bytes": _hostile_json(3), "chunk_bytes": _hostile_json(3), "chunks": _hostile_json(5),
        "recipients": _hostile_json(4), "extra": _hostile_json(3)})
    return st.one_of(fields.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200),
                     st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_hostile_offer())
def test_hostile_offers_never_raise_and_never_install(tmp_path, payload):
    sync = fake_sync(tmp_path)
    sync.handle(Topics(DEVICE).watchlist_manifest, payload)
    assert sync.store.installed == [] and len(sync.transport.subscribed) <= 4


@settings(max_examples=200, deadline=None)
@given(subject=st.text(max_size=50), label=st.text(max_size=50))
def test_hostile_event_strings_are_refused_when_they_carry_controls(subject, label):
    fields = dict(device_id="cam-a", captured_at=1.7e9, subject_id=subject or "s", watchlist_id="wl",
                  watchlist_version=1, embedder_id="e", similarity=0.9, threshold=0.8, margin=0.1, track_id=1,
                  chips_used=2, quality={}, label=label or None)
    bad = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069
              for c in (subject or "s") + (label or ""))
    try:
        make_event(**fields)
    except PayloadError as err:
        assert bad or "image" in str(err) or "characters" in str(err)
    else:
        assert not bad


@pytest.mark.slow
@pytest.mark.broker
def test_sync_survives_1000_hostile_offers_on_a_real_broker_then_installs(broker, tmp_path):
    """Done-when: 1,000 hypothesis-generated hostile offers on the device's manifest topic over a real mosquitto,
    then a valid bundle installs and the device reports it."""
    from test_sync import Device, make_bundle, publish

    crypto = (keys.generate_operator_key(), keys.generate_device_key())
    payloads = []

    @settings(max_examples=1000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_hostile_offer())
    def collect(p):
        payloads.append(p)

    collect()
    assert len(payloads) >= 900
    dev = Device(broker, crypto, tmp_path / "state")
    try:
        topic = Topics("cam-a").watchlist_manifest
        publish(broker, [(topic, p[:2 * 1024 * 1024]) for p in payloads[:1000]])
        dev.run_until(lambda d: d.sync.stats.malformed + d.sync.stats.offers >= 1, timeout=20)
        publish(broker, offer_messages(make_bundle(crypto, 3), "cam-a", 3, chunk_bytes=8192))
        dev.run_until(lambda d: d.version() == 3, timeout=30)
        assert dev.store.state().state == "ok"
    finally:
        dev.stop()


# ------------------------------------------------------------------------------ row 2: rollback while stopped

def _watchlist_payload(version):
    """A real (one-subject) watchlist payload, so that `watchlist verify` loads it."""
    from edge.watchlist.operator.build import make_payload
    from edge.watchlist.payload import pack

    subject = {"id": f"v{version}-s0", "label": None, "category": None, "expires": None}
    return pack(make_payload(np.eye(8, dtype=np.float32)[:1], [0], [subject], n_trees=2))


def _bundle(operator, device, version):
    return seal(_watchlist_payload(version), watchlist_id="wl", version=version, device_id=DEVICE,
                device_public=device.public_key(), signing_key=operator, embedder_id="e", embedder_sha256="0" * 64,
                dim=8, n_items=1, n_subjects=1, thresholds={"match": 0.9}, expires=NOW + timedelta(days=1))


def _store(state, operator, device):
    store = WatchlistStore(state, DEVICE, device, {keys.key_id(operator.public_key()): operator.public_key()}, "e",
                           "0" * 64, lambda b: bytes(b.payload))
    store.start()
    return store


@pytest.fixture
def installed_v3(tmp_path):
    operator, device = keys.generate_operator_key(), keys.generate_device_key()
    state = tmp_path / "state"
    store = _store(state, operator, device)
    v2, v3 = _bundle(operator, device, 2), _bundle(operator, device, 3)
    assert store.install(v2).ok and store.install(v3).ok
    return state, operator, device, v2, v3


def test_row2_an_older_bundle_swapped_in_while_stopped_is_refused_at_start(installed_v3):
    state, operator, device, v2, v3 = installed_v3
    (state / "installed.bundle").write_bytes(v2)  # the attacker, while the service is stopped
    store = _store(state, operator, device)
    s = store.state().to_dict()
    assert s["state"] == "none" and s["last_rejection"]["reason"] == "rollback"
    assert "older than v3" in s["last_rejection"]["message"] and store.current() == (None, None)
    assert store.install(v2).reason == "rollback"  # and the floor holds for installs
    assert store.install(v3).ok  # the operator's current bundle repairs it


@pytest.mark.parametrize("tamper, reason", [
    (lambda p: p.unlink(), "install_record_missing"),
    (lambda p: p.write_text(p.read_text().replace('"version":3', '"version":1')), "install_record_invalid"),
])
def test_row2_the_install_record_cannot_be_removed_or_edited_to_allow_a_rollback(installed_v3, tamper, reason):
    state, operator, device, v2, _ = installed_v3
    (state / "installed.bundle").write_bytes(v2)
    tamper(state / "installed.version")
    s = _store(state, operator, device).state().to_dict()
    assert s["state"] == "none" and s["last_rejection"]["reason"] == reason


def test_row2_watchlist_verify_with_the_state_dir_refuses_an_older_version(installed_v3, tmp_path, capsys):
    state, operator, device, v2, v3 = installed_v3
    keys.save_private_key(tmp_path / "device.key", device)
    keys.save_public_key(tmp_path / "operator.pub", operator.public_key())
    (tmp_path / "v2.bundle").write_bytes(v2)
    base = ["watchlist", "verify", tmp_path / "v2.bundle", "--device-key", tmp_path / "device.key", "--operator-key",
            tmp_path / "operator.pub", "--json"]
    code, out, _ = run_cli(capsys, *base)
    assert code == 0 and json.loads(out)["ok"] is True, out  # on its own, v2 is a good bundle
    code, out, _ = run_cli(capsys, *base, "--state-dir", state)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False and result["reason"] == "rollback", out
    assert "older than v3" in result["message"]


# ------------------------------------------------------------------------------- row 3: rewriting the audit log

def _sealed_log(tmp_path):
    new_keys(tmp_path, DEVICE)
    log_path = tmp_path / "audit.log"
    audit, sealer = AuditLog(log_path), Sealer(tmp_path / "audit.seal")
    audit.append("start", {"device_id": DEVICE})
    for i in range(3):
        audit.append("match", {"subject_id": f"s{i}"})
    heads = [sealer.seal(audit)]
    for i in range(3, 5):
        audit.append("match", {"subject_id": f"s{i}"})
    heads.append(sealer.seal(audit))
    audit.close()
    (tmp_path / "heads.jsonl").write_text("".join(json.dumps({"device_id": DEVICE, **h}) + "\n" for h in heads))
    return log_path


def _rewrite(log_path, keep):
    """The attacker's rewrite: keep some records, renumber and re-chain them with fresh hashes."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    out, prev = [], "0" * 64
    for seq, r in enumerate([r for r in records if keep(r)], start=1):
        rec, line = make_record(seq, r["kind"], r["data"], prev, r["at"])
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    log_path.write_bytes(b"".join(line + b"\n" for line in out))


def test_row3_deleting_matches_and_recomputing_the_chain_fails_against_the_seals(tmp_path, capsys):
    log_path = _sealed_log(tmp_path)
    verify_key = tmp_path / "audit-verify.key"
    code, out, _ = run_cli(capsys, "audit", "verify", log_path, "--verify-key", verify_key)
    assert code == 0 and "2 seal(s) verified" in out
    _rewrite(log_path, lambda r: r["kind"] != "match")
    code, out, _ = run_cli(capsys, "audit", "verify", log_path)
    assert code == 0  # the key-less chain alone cannot tell: this is what the seals are for
    code, out, _ = run_cli(capsys, "audit", "verify", log_path, "--verify-key", verify_key)
    assert code == 1 and ("hash the log no longer has" in out or "does not verify" in out)


def test_row3_a_log_cut_and_padded_back_fails_against_the_operators_heads(tmp_path, capsys):
    log_path = _sealed_log(tmp_path)
    lines = log_path.read_bytes().splitlines(keepends=True)
    _rewrite(log_path, lambda r: True)  # identical records, same length: still fine
    code, out, _ = run_cli(capsys, "audit", "verify", log_path, "--verify-key", tmp_path / "audit-verify.key",
                           "--heads", tmp_path / "heads.jsonl")
    assert code == 0, out
    log_path.write_bytes(b"".join(lines[:-3]))  # the last match and seal records cut off
    code, out, _ = run_cli(capsys, "audit", "verify", log_path, "--verify-key", tmp_path / "audit-verify.key",
                           "--heads", tmp_path / "heads.jsonl")
    assert code == 1 and "cut off" in out


def test_row3_the_sealing_key_evolves_and_the_old_one_is_gone(tmp_path):
    new_keys(tmp_path, DEVICE)
    before = (tmp_path / "audit.seal").read_bytes()
    audit = AuditLog(tmp_path / "audit.log")
    Sealer(tmp_path / "audit.seal").seal(audit)
    audit.close()
    after = json.loads((tmp_path / "audit.seal").read_text())
    assert after["epoch"] == 1 and json.loads(before)["key"] not in (tmp_path / "audit.seal").read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "audit.seal").st_mode) == 0o600


def test_row3_an_idle_device_does_not_grow_its_log_and_many_seals_verify(tmp_path, capsys):
    new_keys(tmp_path, DEVICE)
    audit, sealer = AuditLog(tmp_path / "audit.log"), Sealer(tmp_path / "audit.seal")
    audit.append("start", {"device_id": DEVICE})
    first = sealer.seal(audit)
    assert sealer.seal(audit) == first and audit.head()["seq"] == first["seq"]  # nothing new: no new record
    for i in range(300):
        audit.append("match", {"subject_id": f"s{i}"})
        sealer.seal(audit)
    audit.close()
    code, out, _ = run_cli(capsys, "audit", "verify", tmp_path / "audit.log", "--verify-key",
                           tmp_path / "audit-verify.key")
    assert code == 0 and "301 seal(s) verified" in out


# --------------------------------------------------------------------------------- rows 4, 5: memory bombs

# The child's own peak: VmHWM of its address space (ru_maxrss would also count the forking pytest process, since
# Linux keeps it across exec).
RSS_CHILD = ("import sys\nfrom edge.cli import main\nrc = main(sys.argv[1:])\n"
             "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
             "sys.stderr.write('MAXRSS %s\\n' % hwm)\nsys.exit(rc)\n")


def _run_measured(*argv):
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, *map(str, argv)], capture_output=True, text=True,
                         timeout=120)
    rss_kib = int(out.stderr.rsplit("MAXRSS", 1)[1])
    return out.returncode, out.stdout + out.stderr.split("MAXRSS")[0], rss_kib / 1024


@pytest.mark.slow
def test_row4_a_yaml_alias_bomb_is_refused_in_one_line_under_300_mb(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1000
    code, err, rss = _run_measured("run", "--config", bomb, "--check")
    assert code == 1 and "aliases (*name) are not allowed" in err and "Traceback" not in err
    assert rss < 300, rss


def _giant_png(path, width=30000, height=30000):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    rows = b"".join(comp.compress(b"\x00" + bytes(width * 3)) for _ in range(64)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.slow
@pytest.mark.models  # `edge detect` loads them before it reads the image
def test_row5_a_30000x30000_png_is_refused_before_decoding_under_300_mb(tmp_path):
    _giant_png(tmp_path / "giant.png")
    code, err, rss = _run_measured("detect", tmp_path / "giant.png")
    assert code == 1 and "declares 30000×30000 pixels" in err
    assert rss < 300, rss


def test_row5_the_pixel_limit_reads_every_common_header():
    import cv2

    from edge.imageio import declared_size

    for ext in (".jpg", ".png", ".bmp", ".webp"):
        ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert ok and declared_size(buf.tobytes()) == (53, 37), ext


# ------------------------------------------------------------------------------ row 8: one identity, two tools

@pytest.mark.broker
def test_row8_publishing_does_not_knock_the_event_consumer_off(broker, tmp_path, capsys):
    from edge.messaging.mqtt import MqttClient
    from test_sync import make_bundle

    crypto = (keys.generate_operator_key(), keys.generate_device_key())
    consumer = MqttClient(broker.client_settings("operator"), [("edge/+/events", 1)])
    consumer.start()
    consumer.wait_connected(5)
    try:
        (tmp_path / "b.bundle").write_bytes(make_bundle(crypto, 1))
        keys.save_public_key(tmp_path / "operator.pub", crypto[0].public_key())
        pki = broker.pki
        code, out, err = run_cli(capsys, "watchlist", "publish", "--bundle", tmp_path / "b.bundle", "--device", "cam-a",
                                 "--host", broker.host, "--port", broker.port, "--ca", pki.ca,
                                 "--cert", pki.cert("operator-publish"), "--key", pki.key("operator-publish"),
                                 "--operator-key", tmp_path / "operator.pub")
        assert code == 0, err
        time.sleep(0.5)
        assert consumer.connected and consumer.stats.disconnects == 0
    finally:
        consumer.stop()


@pytest.mark.broker
def test_row8b_doctor_beside_the_running_service_does_not_displace_it(broker, tmp_path):
    from types import SimpleNamespace

    from edge.device.doctor import check_broker
    from edge.messaging.mqtt import MqttClient

    device = MqttClient(broker.client_settings("cam-a"))
    device.start()
    device.wait_connected(5)
    try:
        s = broker.client_settings("cam-a")
        config = SimpleNamespace(device=SimpleNamespace(id="cam-a"), mqtt=SimpleNamespace(
            enabled=True, host=s.host, port=s.port, ca_file=s.ca_file, cert_file=s.cert_file, key_file=s.key_file,
            keepalive_s=10))
        assert "TLS handshake" in check_broker(config)
        time.sleep(0.5)
        assert device.connected and device.stats.disconnects == 0
    finally:
        device.stop()


# -------------------------------------------------------------------------------------- row 9: escapes

@pytest.mark.models  # `edge detect` loads them
def test_row9_control_characters_are_refused_in_events_and_escaped_in_output(tmp_path, capsys):
    with pytest.raises(PayloadError, match="control characters"):
        make_event(device_id="cam-a", captured_at=1.7e9, subject_id="\x1b[2J\x1b[31mWANTED", watchlist_id="wl",
                   watchlist_version=1, embedder_id="e", similarity=0.9, threshold=0.8, margin=0.1, track_id=1,
                   chips_used=2, quality={})
    weird = tmp_path / "a\x1b[2Jb.jpg"
    weird.write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "detect", weird)
    assert "\x1b" not in out + err and "\\x1b[2J" in out + err


# ------------------------------------------------------------------------------- row 10: seal and build values

@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "wl"
    csv = out.parent / "gallery.csv"
    csv.write_text("path,identity\nfaces/obama.jpg,obama\n")
    assert main(["watchlist", "build", "--gallery", str(csv), "--root", str(DATA), "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture
def seal_args(build_dir, tmp_path):
    operator, device = keys.generate_operator_key(), keys.generate_device_key()
    keys.save_private_key(tmp_path / "operator.key", operator)
    keys.save_public_key(tmp_path / "device.pub", device.public_key())
    return ["watchlist", "seal", "--in", build_dir, "--signing-key", tmp_path / "operator.key", "--device-key",
            tmp_path / "device.pub", "--version", "1", "--out", tmp_path / "out.bundle"]


@pytest.mark.models
@pytest.mark.parametrize("extra, message", [
    (["--device-id", "cam-a", "--threshold", "1.5"], "--threshold must be a cosine similarity in (0, 1]"),
    (["--device-id", "cam-a", "--threshold", "-5"], "--threshold must be"),
    (["--device-id", "../../x"], "--device-id '../../x' is invalid"),
    (["--device-id", "cam/#"], "--device-id 'cam/#' is invalid"),
    (["--device-id", "cam-a", "--expires-days", "0"], "--expires-days must be in (0, 3650]"),
    (["--device-id", "cam-a", "--expires-days", "1e9"], "--expires-days must be in (0, 3650]"),
])
def test_row10_seal_refuses_values_it_would_write_wrong(seal_args, capsys, extra, message):
    code, _, err = run_cli(capsys, *seal_args, *extra)
    no_traceback(code, err)
    assert message in err


@pytest.mark.models
def test_row10_seal_refuses_a_corrupt_index_and_an_existing_out(build_dir, seal_args, tmp_path, capsys):
    code, _, err = run_cli(capsys, *seal_args, "--device-id", "cam-a")
    assert code == 0, err
    code, _, err = run_cli(capsys, *seal_args, "--device-id", "cam-a")
    no_traceback(code, err)
    assert "exists; pass --force" in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in build_dir.iterdir():
        if f.is_file():  # references/ (the enrolled faces) is not part of what seal reads
            (corrupt / f.name).write_bytes(f.read_bytes())
    index = bytearray((corrupt / "index.ann").read_bytes())
    index[len(index) // 2] ^= 0xFF
    (corrupt / "index.ann").write_bytes(bytes(index))
    args = [a if a != build_dir else corrupt for a in seal_args]
    code, _, err = run_cli(capsys, *args, "--device-id", "cam-a", "--force")
    no_traceback(code, err)
    assert "does not match the checksum" in err


@pytest.mark.parametrize("expires, message", [("not-a-date", "is not a date"), ("2001-01-01", "is in the past")])
def test_row10_build_refuses_gallery_expiry_that_is_not_a_future_date(tmp_path, expires, message):
    from edge.watchlist.operator.build import read_gallery

    (tmp_path / "g.csv").write_text(f"path,identity,expires\nfaces/obama.jpg,obama,{expires}\n")
    with pytest.raises(DataError, match=message):
        read_gallery(tmp_path / "g.csv", DATA)


# -------------------------------------------------------------------- row 11: user errors, never a traceback

@pytest.mark.models
def test_row11_user_errors_are_one_line_never_a_traceback(tmp_path, capsys, build_dir):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    broken = tmp_path / "broken-build"
    broken.mkdir()
    for name in ("index.ann", "templates.bin"):
        (broken / name).write_bytes((build_dir / name).read_bytes())
    (broken / "meta.json").write_text("{not json")
    operator = keys.generate_operator_key()
    keys.save_private_key(tmp_path / "op.key", operator)
    keys.save_public_key(tmp_path / "dev.pub", keys.generate_device_key().public_key())
    cases = [
        ["keys", "generate", "operator", "--out", a_file / "sub"],  # --out under a regular file
        ["keys", "generate", "device", "--out", "/proc/edge-keys"],  # a read-only (special) file system
        ["keys", "rotate", "--signing-key", tmp_path / "op.key", "--new-public", tmp_path / "dev.pub", "--out",
         "/dev/full"],
        ["detect", FACES / "obama.jpg", "--annotate", "/dev/null"],
        ["watchlist", "build", "--gallery", tmp_path, "--root", DATA, "--out", tmp_path / "b"],  # a directory
        ["watchlist", "seal", "--in", broken, "--signing-key", tmp_path / "op.key", "--device-key",
         tmp_path / "dev.pub", "--device-id", "cam-a", "--version", "1", "--out", tmp_path / "x.bundle"],
        ["audit", "verify", tmp_path],
        ["run", "--config", tmp_path],
        ["eval", "openset", "--gallery", a_file, "--probes", a_file, "--root", DATA],
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        no_traceback(code, err)


# ------------------------------------------------------------------------------- row 12: nothing named at rest

def test_row12_an_event_on_the_devices_disk_carries_no_name(tmp_path):
    from edge.device.event_writer import EventWriter
    from edge.messaging.outbox import Outbox
    from edge.types import Decision, Frame

    outbox = Outbox(tmp_path / "outbox.db")
    writer = EventWriter("cam-a", outbox, None, "e")
    decision = Decision(track_id=1, subject_id="s-0001", label="Barack Obama", category="wanted", similarity=0.9,
                        similarities=[0.9], threshold=0.8, margin_required=0.02, margin=0.1, chips_used=2,
                        first_seen=0.0, decided_at=1.0)
    event = writer(decision, Frame(np.zeros((2, 2, 3), np.uint8), 0, 1.7e9, 0.0),
                   type("W", (), {"manifest": {"watchlist_id": "wl", "version": 1}})())
    outbox.close()
    assert "label" not in event and "category" not in event
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"Obama" not in on_disk and b"wanted" not in on_disk and b"s-0001" in on_disk


def test_row12_keys_builds_and_event_stores_are_private_under_umask_000(tmp_path, capsys):
    from edge.operator.event_store import EventStore

    old = os.umask(0)
    try:
        code, _, err = run_cli(capsys, "keys", "generate", "device", "--out", tmp_path / "new" / "keys")
        assert code == 0, err
        store = EventStore(tmp_path / "ops" / "events.db")
        store.close()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "new") == 0o700 and mode(tmp_path / "new" / "keys") == 0o700
    assert mode(tmp_path / "new" / "keys" / "device.key") == 0o600
    assert mode(tmp_path / "ops") == 0o700 and mode(tmp_path / "ops" / "events.db") == 0o600


@pytest.mark.models
def test_row12_a_build_directory_is_0700_with_0600_files(build_dir):
    assert stat.S_IMODE(os.stat(build_dir).st_mode) == 0o700
    files = [f for f in build_dir.rglob("*") if f.is_file()]
    assert any(f.parent.name == "references" for f in files)  # the enrolled faces: private like the rest
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    assert all(stat.S_IMODE(os.stat(d).st_mode) == 0o700 for d in build_dir.rglob("*") if d.is_dir())


# ------------------------------------------------------------------------- row 13: publishing a bad bundle

@pytest.mark.parametrize("damage", [lambda b: b[:-10], lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:],
                                    lambda b: b[:-1] + bytes([b[-1] ^ 1])])
def test_row13_publish_refuses_a_truncated_or_flipped_bundle_before_connecting(tmp_path, capsys, damage):
    operator, device = keys.generate_operator_key(), keys.generate_device_key()
    bundle = seal(b"p" * 500, watchlist_id="wl", version=2, device_id="cam-a", device_public=device.public_key(),
                  signing_key=operator, embedder_id="e", embedder_sha256="0" * 64, dim=8, n_items=1, n_subjects=1,
                  thresholds={"match": 0.9}, expires=NOW + timedelta(days=1))
    (tmp_path / "b.bundle").write_bytes(damage(bundle))
    keys.save_public_key(tmp_path / "operator.pub", operator.public_key())
    code, _, err = run_cli(capsys, "watchlist", "publish", "--bundle", tmp_path / "b.bundle", "--device", "cam-a",
                           "--host", "127.0.0.1", "--port", "1", "--operator-key", tmp_path / "operator.pub")
    no_traceback(code, err)
    assert "was not published" in err


def test_csv_fields_rows_and_directories_are_bounded(tmp_path):
    from edge.tables import MAX_CSV_FIELD, read_csv

    (tmp_path / "long.csv").write_text("path,identity\n" + "x" * (MAX_CSV_FIELD + 1) + ",a\n")
    with pytest.raises(DataError, match="line 2: a field is longer than"):
        read_csv(tmp_path / "long.csv", ("path", "identity"))
    with pytest.raises(DataError, match="is a directory"):
        read_csv(tmp_path, ("path",))
    (tmp_path / "huge-field.csv").write_text('path,identity\n"' + "y" * 200_000 + '",a\n')  # past csv's own limit
    with pytest.raises(DataError):
        read_csv(tmp_path / "huge-field.csv", ("path", "identity"))


# --- round 3 (issue 22) -------------------------------------------------------------------------------------------


def test_a_status_string_with_nul_is_refused_and_one_bad_report_never_stops_the_consumer(tmp_path):
    """Row 1: a retained status whose health.reported_at held U+0000 made every PostgreSQL consumer exit 70 at every
    restart. The status schema now refuses control characters anywhere in it, and whatever a report's callback
    cannot take (here: the database refusing it) is counted and skipped — the next event is still stored."""
    import queue
    from types import SimpleNamespace

    from edge.messaging.delivery import EventConsumer
    from edge.messaging.payloads import decode_status, encode_event
    from edge.operator.event_store import EventStore

    nul = json.dumps({"schema": "edge-status/1", "state": "online", "health": {"reported_at": "2026\u0000"}}).encode()
    with pytest.raises(PayloadError, match="control characters"):
        decode_status(nul)
    nested = {"schema": "edge-status/1", "state": "online", "health": {"gauges": {"x\u001b[2J": 1}}}
    with pytest.raises(PayloadError, match="control characters"):
        decode_status(json.dumps(nested).encode())

    store = EventStore(tmp_path / "events.db")
    inbox = queue.Queue()
    acks = []
    client = SimpleNamespace(inbox=inbox, publish=lambda *a, **k: acks.append(a))

    def refusing(device_id, status):  # the database refuses this report (as PostgreSQL refused the NUL)
        raise ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes")

    consumer = EventConsumer(client, store, on_status=refusing, on_watchlist=refusing)
    ok_status = json.dumps({"schema": "edge-status/1", "state": "online", "health": {"fps": 3}}).encode()
    event = make_event(seq=1, device_id="cam-a", captured_at=time.time(), subject_id="s1", watchlist_id="wl",
                       watchlist_version=1, embedder_id="mobilefacenet", similarity=0.9, threshold=0.8, margin=0.1,
                       track_id=1, chips_used=2, quality={})
    for topic, payload in (("edge/cam-a/status", nul), ("edge/cam-a/status", ok_status),
                           ("edge/cam-a/events", encode_event(event, 1))):
        inbox.put(SimpleNamespace(topic=topic, payload=payload))
    assert consumer.poll(0.2) == 1  # no exception escaped; the event behind the bad reports is stored
    assert consumer.stats.rejected == 2 and "not stored: ValueError" in consumer.stats.last_rejection
    assert store.seqs("cam-a") == [1] and len(acks) == 1  # stored, then acknowledged
    store.close()


def test_a_symlinked_audit_log_is_refused_not_followed(tmp_path):
    """Row 6a: `audit.log` replaced by a symlink to a 0640 file elsewhere was followed, appended to and chmodded
    0600. Now it is refused with one line and the target is untouched."""
    from edge.audit import AuditError

    target = tmp_path / "elsewhere.txt"
    target.write_text("someone else's file\n")
    os.chmod(target, 0o640)
    state = tmp_path / "state"
    state.mkdir()
    (state / "audit.log").symlink_to(target)
    with pytest.raises(AuditError, match="is a symbolic link: refused"):
        AuditLog(state / "audit.log")
    assert target.read_text() == "someone else's file\n" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_symlinked_incoming_folder_is_refused_and_nothing_behind_it_is_touched(tmp_path):
    """Row 6b: `incoming/` replaced by a symlink to another folder, then a new version arrives: the other folder's
    subfolders were deleted and it was made 0700. Now the download is refused (reported on the state topic) and
    the other folder is untouched; a private file that is a symlink is refused too."""
    from edge.durable import private_dir, private_file

    other = tmp_path / "other"
    (other / "keep-me").mkdir(parents=True)
    os.chmod(other, 0o755)
    (tmp_path / "incoming").symlink_to(other)
    sync = fake_sync(tmp_path)
    for topic, payload in valid_offer():
        sync.handle(topic, payload)
    assert (other / "keep-me").is_dir() and stat.S_IMODE(other.stat().st_mode) == 0o755
    assert not sync.store.installed and "symbolic link" in sync.stats.last_reason
    state = last_state(sync)
    assert state.reason == "incoming_refused" and "symbolic link" in state.message
    with pytest.raises(DataError, match="symbolic link"):
        private_dir(tmp_path / "incoming")
    (tmp_path / "events.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(DataError, match="symbolic link"):
        private_file(tmp_path / "events.jsonl")
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_chunk_lengths_are_checked_against_the_offer_and_offers_are_capped(tmp_path):
    """Row 3: an offer declaring bundle_bytes 40 and chunk_bytes 1 whose 40 chunks (correct digests) were 2 MB each
    had all 80 MB written to incoming/ before `bad_magic`. Now a chunk of the wrong length is refused before it is
    hashed or written, and an offer over the device's limit (watchlist.max_bundle_mb) is refused unread."""
    import hashlib as h

    from edge.messaging.payloads import encode_offer

    big = [b"%02d" % n + b"x" * 2_000_000 for n in range(40)]
    offer = encode_offer(f"device:{DEVICE}", 9, h.sha256(b"".join(big)).hexdigest(), 40, 1,
                         [h.sha256(c).hexdigest() for c in big])
    sync = fake_sync(tmp_path)
    topics = Topics(DEVICE)
    sync.handle(topics.watchlist_manifest, offer)
    assert sync.download is not None
    for n, chunk in enumerate(big):
        sync.handle(sync.download.topic(n), chunk)
    assert sync.stats.chunks_rejected == 40 and "has 2000002 bytes; the offer says 1" in sync.stats.last_reason
    written = sum(f.stat().st_size for f in (tmp_path / "incoming").rglob("*") if f.is_file())
    assert written == 0 and not sync.store.installed
    small = WatchlistSync(FakeStore(installs_as=7), FakeTransport(), DEVICE, tmp_path / "incoming2",
                          max_bundle_bytes=1000)
    for topic, payload in offer_messages(b"y" * 5000, DEVICE, 3, chunk_bytes=1000):
        small.handle(topic, payload)
    assert small.download is None and "over this device's limit of 1000 bytes" in small.stats.last_reason
    assert last_state(small).reason == "malformed_offer"


def test_the_sign_in_limiter_stays_bounded_under_rotated_names_and_addresses():
    """Issue 22: the limiter kept an entry per failed name and address, dropped only when that key was tried again;
    with rotated names and addresses it grew without bound. 100,000 rotations now keep at most MAX_TRACKED keys,
    a key that keeps failing is still limited, and looking a key up never adds it."""
    from edge.operator.accounts import MAX_FAILURES, MAX_TRACKED, FailureLimiter

    now = [1000.0]
    lim = FailureLimiter(MAX_FAILURES, 300.0, clock=lambda: now[0])
    for i in range(100_000):
        lim.fail(f"u:user{i}", f"a:10.0.{i // 256 % 256}.{i % 256}")
        if i % 97 == 0:
            lim.fail("u:alice")  # the account under attack keeps failing in between
    assert len(lim) <= MAX_TRACKED and lim.limited("u:alice")
    assert not lim.limited("u:never-seen") and len(lim) <= MAX_TRACKED
    now[0] += 301  # the window passes: alice may try again, and an expired key is dropped when looked at
    assert not lim.limited("u:alice")


def test_an_offer_whose_chunks_never_come_is_given_up_for_the_next_best(tmp_path):
    """Row 2: a retained offer for version 50 with made-up chunk digests kept a device on v4 forever while its group
    peer installed v5, and clearing the fake offer did not free it. Now a download without a new chunk for
    GIVE_UP_AFTER seconds is given up (reported as sync_timeout) and the best completable offer installed; clearing
    an offer cancels its download at once."""
    import hashlib as h

    from edge.messaging.payloads import encode_offer
    from edge.messaging.sync import GIVE_UP_AFTER

    now = [0.0]
    sync = WatchlistSync(FakeStore(installs_as=7), FakeTransport(), DEVICE, tmp_path / "incoming", window=4,
                         clock=lambda: now[0])
    topics = Topics(DEVICE)
    forged = encode_offer(f"device:{DEVICE}", 50, "0" * 64, 4096 * 100, 100,
                          [h.sha256(b"%d" % n).hexdigest() for n in range(4096)])
    sync.handle(topics.watchlist_manifest, forged)
    assert sync.download is not None and sync.download.offer.version == 50
    group = WatchlistTopics.for_group("patrol")  # the operator's real v5, on the group subtree the device reads
    for topic, payload in offer_messages(b"z" * 300, group, 5, chunk_bytes=100):
        sync.handle(topic, payload)
    assert sync.download.offer.version == 50 and not sync.store.installed  # the higher version is tried first
    now[0] += GIVE_UP_AFTER - 1
    sync.tick()
    assert sync.download.offer.version == 50  # not yet
    now[0] += 2
    sync.tick()  # given up: the v5 download starts; its chunks arrive (the broker re-sends retained copies)
    states = [decode_watchlist_state(b) for t, b, _ in sync.transport.published if t == topics.watchlist_state]
    assert any(st_.reason == "sync_timeout" for st_ in states) and sync.download.offer.version == 5
    for topic, payload in offer_messages(b"z" * 300, group, 5, chunk_bytes=100)[:-1]:
        sync.handle(topic, payload)
    assert len(sync.store.installed) == 1 and sync.store.version == 7  # the fake store reports 7 for any install
    # clearing a running download's offer cancels it at once
    sync2 = fake_sync(tmp_path / "b")
    sync2.handle(topics.watchlist_manifest, forged)
    assert sync2.download is not None
    sync2.handle(topics.watchlist_manifest, b"")
    assert sync2.download is None  # nothing left to fetch
    # ... and an offer set aside is tried again later (a real one may only have been held up by a broker outage)
    now[0] += 10 * GIVE_UP_AFTER + 1
    sync.tick()
    assert sync.download is not None and sync.download.offer.version == 50


_LYING_OFFER = r'''
import hashlib, json, random, resource, sys
from pathlib import Path
from edge.keys import TrustStore, generate_device_key, generate_operator_key
from edge.messaging.payloads import encode_offer
from edge.messaging.sync import WatchlistSync
from edge.messaging.topics import Topics
from edge.watchlist.device.store import WatchlistStore

state, mib = Path(sys.argv[1]), int(sys.argv[2])
class Transport:
    def subscribe(self, topic, qos=1): pass
    def unsubscribe(self, topic): pass
    def publish(self, topic, payload, qos=1, retain=False): self.last = payload
def chunk(n):
    return random.Random(n).randbytes(1 << 20)
device, operator = generate_device_key(), generate_operator_key()
store = WatchlistStore(state, "cam-1", device, TrustStore([operator.public_key()]), "e", "0" * 64, lambda o: o)
store.start()
sync = WatchlistSync(store, Transport(), "cam-1", state / "incoming", max_bundle_bytes=mib << 20)
whole, digests = hashlib.sha256(), []
for n in range(mib):
    c = chunk(n)
    whole.update(c)
    digests.append(hashlib.sha256(c).hexdigest())
offer = encode_offer("device:cam-1", 9, whole.hexdigest(), mib << 20, 1 << 20, digests)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sync.handle(Topics("cam-1").watchlist_manifest, offer)
disk = 0
for n in range(mib):
    sync.handle(sync.download.topic(n), chunk(n))
    disk = max(disk, sum(f.stat().st_size for f in (state / "incoming").rglob("*") if f.is_file()))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_before_kib": before, "rss_after_kib": after, "disk_peak": disk,
                  "reason": json.loads(sync.transport.last)["reason"],
                  "left": [str(p) for p in (state / "incoming").rglob("*")]}))
'''


def test_a_lying_offer_costs_its_declared_size_on_disk_and_little_memory(tmp_path):
    """Issue 22, row 3: chunks were joined in memory before the store saw them (RSS 66 → 234 MiB for 80 MB). Now
    they are assembled on disk, streamed, and the store verifies the file in chunks: a 64 MiB offer of junk with
    correct digests raises peak RSS by a few MiB, never by its size, and its disk use never exceeds its declared
    size plus one chunk. Measured in a child process (peak RSS is per process)."""
    import json
    import subprocess
    import sys

    mib = 64
    out = subprocess.run([sys.executable, "-c", _LYING_OFFER, str(tmp_path / "state"), str(mib)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    grew_mib = (got["rss_after_kib"] - got["rss_before_kib"]) / 1024
    print(f"lying {mib} MiB offer: peak RSS {got['rss_before_kib'] / 1024:.0f} → {got['rss_after_kib'] / 1024:.0f} MiB"
          f" (+{grew_mib:.1f}), disk peak {got['disk_peak'] / 2**20:.1f} MiB")
    assert got["reason"] == "bad_magic" and got["left"] == []
    assert grew_mib < 16, got
    assert got["disk_peak"] <= (mib + 1) << 20
