"""`edge doctor`: each check is {name, ok, detail}; failures name their cause."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from broker import free_port
from conftest import FACES
from edge import keys
from edge.cli import main
from edge.config import load_config
from edge.device.doctor import check_clock, run_doctor
from edge.paths import models_dir

pytestmark = pytest.mark.models  # `edge doctor` checks every model file's checksum


def _by_name(checks):
    return {c["name"]: c for c in checks}


def _device(tmp_path: Path, device_id: str = "cam-a", mqtt: dict | None = None, **vision) -> Path:
    """A config with a replay camera over tests/data/faces, generated keys in the state dir, mqtt as given."""
    state = tmp_path / "state"
    keys.save_private_key(state / "keys" / "device.key", keys.generate_device_key())
    keys.TrustStore([keys.generate_operator_key().public_key()]).save(state / "keys" / "operators.json")
    doc = {"device": {"id": device_id, "state_dir": str(state)},
           "camera": {"source": "replay", "device": str(FACES), "fps": 30, "replay_pace": "fast"},
           "mqtt": mqtt or {"enabled": False}}
    if vision:
        doc["vision"] = {k: str(v) for k, v in vision.items()}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_doctor_without_config(capsys):
    assert main(["doctor", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert [c["name"] for c in checks] == ["runtime", "models", "clock"]
    assert all(c["ok"] and c["detail"] for c in checks)
    assert main(["doctor"]) == 0
    assert "✓ runtime" in capsys.readouterr().out


def test_doctor_with_config(tmp_path, capsys):
    config = _device(tmp_path)
    assert main(["doctor", "--config", str(config), "--json"]) == 1  # no watchlist installed yet
    checks = _by_name(json.loads(capsys.readouterr().out)["checks"])
    for name in ("runtime", "models", "camera", "keys", "broker", "clock", "disk"):
        assert checks[name]["ok"], checks[name]
    assert "read one frame" in checks["camera"]["detail"]
    assert "X25519" in checks["keys"]["detail"] and "operator key" in checks["keys"]["detail"]
    assert "disabled" in checks["broker"]["detail"]
    assert not checks["watchlist"]["ok"] and checks["watchlist"]["detail"].startswith("none")
    assert main(["doctor", "--config", str(config)]) == 1
    assert "✗ watchlist" in capsys.readouterr().out


def test_doctor_names_a_corrupted_model(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(models_dir(), models)
    bad = models / "dlib_resnet_v1_float32.tflite"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    checks = _by_name(run_doctor(load_config(_device(tmp_path, models_dir=models))))
    assert not checks["models"]["ok"]
    assert str(bad) in checks["models"]["detail"] and "checksum" in checks["models"]["detail"]
    assert "blazeface_full_range_int8" not in checks["models"]["detail"]


def test_doctor_refuses_a_readable_private_key(tmp_path):
    config = _device(tmp_path)
    key = tmp_path / "state" / "keys" / "device.key"
    os.chmod(key, 0o644)
    checks = _by_name(run_doctor(load_config(config)))
    assert not checks["keys"]["ok"]
    assert "0644" in checks["keys"]["detail"] and "0600" in checks["keys"]["detail"]


def test_doctor_clock_before_2025_fails():
    from datetime import datetime, timezone

    with pytest.raises(RuntimeError, match="before 2025"):
        check_clock(None, datetime(2020, 1, 1, tzinfo=timezone.utc))


def test_doctor_connects_to_the_broker(broker, tmp_path):
    pki = broker.pki
    config = _device(tmp_path, "cam-a", {"enabled": True, "host": broker.host, "port": broker.port,
                                         "ca_file": str(pki.ca), "cert_file": str(pki.cert("cam-a")),
                                         "key_file": str(pki.key("cam-a"))})
    checks = _by_name(run_doctor(load_config(config)))
    assert checks["broker"]["ok"], checks["broker"]
    assert f"{broker.port}" in checks["broker"]["detail"]


@pytest.mark.slow
def test_doctor_reports_an_unreachable_broker(tls_certs, tmp_path):
    port = free_port()
    config = _device(tmp_path, "cam-a", {"enabled": True, "host": "127.0.0.1", "port": port,
                                         "ca_file": str(tls_certs.ca), "cert_file": str(tls_certs.cert("cam-a")),
                                         "key_file": str(tls_certs.key("cam-a"))})
    checks = _by_name(run_doctor(load_config(config)))
    assert not checks["broker"]["ok"]
    assert f"127.0.0.1:{port}" in checks["broker"]["detail"]


@pytest.mark.slow
def test_doctor_reports_the_brokers_refusal(broker, tmp_path):
    pki = broker.pki  # "rogue": a cam-a certificate from another CA, which the broker refuses
    config = _device(tmp_path, "cam-a", {"enabled": True, "host": broker.host, "port": broker.port,
                                         "ca_file": str(pki.ca), "cert_file": str(pki.cert("rogue")),
                                         "key_file": str(pki.key("rogue"))})
    checks = _by_name(run_doctor(load_config(config)))
    assert not checks["broker"]["ok"]
    assert "refused" in checks["broker"]["detail"] or "closed the connection" in checks["broker"]["detail"]


def test_the_evidence_check_says_whether_faces_leave_and_to_which_key(tmp_path):
    from edge.device.check_kit import Absent
    from edge.device.doctor import check_thumbnail_key

    def config(events: str):
        path = tmp_path / "edge.yaml"
        path.write_text("events:\n" + events)
        return load_config(path)

    pub = tmp_path / "operator-evidence.pub"
    assert "no operator evidence key at" in check_thumbnail_key(config(f"  operator_thumbnail_key: {pub}\n"))
    with pytest.raises(Absent, match="operator-evidence.pub is absent"):  # explicitly on, key missing: a failure
        check_thumbnail_key(config(f"  thumbnails: true\n  operator_thumbnail_key: {pub}\n"))
    key = keys.generate_device_key()
    keys.save_public_key(pub, key.public_key())
    assert check_thumbnail_key(config(f"  operator_thumbnail_key: {pub}\n")) == (
        f"evidence on: face chips sealed to {pub} (X25519 key {keys.key_id(key.public_key())})")
    assert check_thumbnail_key(config(f"  thumbnails: false\n  operator_thumbnail_key: {pub}\n")).startswith(
        "evidence off (events.thumbnails: false)")


# --- the state directory (edge/device/state_checks.py) -----------------------------------------------------------

def _bundle(operator, device, version: int) -> bytes:
    """A real one-subject watchlist bundle sealed for cam-a (embedder "e": these checks do not load it)."""
    from datetime import datetime, timedelta, timezone

    import numpy as np

    from edge.watchlist.operator.build import make_payload
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.payload import pack

    subject = {"id": f"v{version}-s0", "label": None, "category": None, "expires": None}
    payload = pack(make_payload(np.eye(8, dtype=np.float32)[:1], [0], [subject], n_trees=2))
    return seal(payload, watchlist_id="wl", version=version, device_id="cam-a", device_public=device.public_key(),
                signing_key=operator, embedder_id="e", embedder_sha256="0" * 64, dim=8, n_items=1, n_subjects=1,
                thresholds={"match": 0.9}, expires=datetime.now(timezone.utc) + timedelta(days=1))


def _store_with(state: Path, *versions: int):
    """The provisioned device's watchlist store with `versions` installed in turn, trusting a new operator key:
    (store, operator key)."""
    from edge.watchlist.device.store import WatchlistStore

    device, operator = keys.load_private_key(state / "keys" / "device.key", "device"), keys.generate_operator_key()
    keys.TrustStore([operator.public_key()]).save(state / "keys" / "operators.json")
    store = WatchlistStore(state, "cam-a", device, {keys.key_id(operator.public_key()): operator.public_key()}, "e",
                           "0" * 64, lambda bundle: True)
    store.start()
    for version in versions:
        assert store.install(_bundle(operator, device, version)).ok
    return store, operator


def _provisioned(tmp_path: Path) -> tuple[Path, Path]:
    """A device state directory as a running device leaves it: keys, watchlist v2 installed (bundle and install
    record), a sealed audit log (its verification key with the operator) and an outbox of 300 events."""
    from edge.audit import AuditLog
    from edge.audit_seal import Sealer, new_keys
    from edge.messaging.outbox import Outbox
    from edge.messaging.payloads import make_event

    config = _device(tmp_path)
    state = tmp_path / "state"
    _store_with(state, 1, 2)
    seal_path, verify_path = new_keys(state, "cam-a")
    (tmp_path / "operator").mkdir()
    verify_path.rename(tmp_path / "operator" / verify_path.name)
    audit, sealer = AuditLog(state / "audit.log"), Sealer(seal_path)
    audit.append("start", {"device_id": "cam-a"})
    for i in range(3):
        audit.append("match", {"subject_id": f"s{i}"})
    sealer.seal(audit)
    audit.append("match", {"subject_id": "s3"})
    audit.close()
    with Outbox(state / "outbox.db") as outbox:
        for i in range(300):
            outbox.add(make_event(device_id="cam-a", captured_at=1_764_000_000.0 + i, subject_id=f"S-{i:04d}",
                                  watchlist_id="wl", watchlist_version=2, embedder_id="e", similarity=0.7,
                                  threshold=0.6, margin=0.1, track_id=i, chips_used=2, quality={"sharpness": 80.0}))
    return config, state


def test_the_watchlist_check_says_a_wiped_device_serves_nothing(tmp_path):
    """After a signed wipe the device serves nothing until a newer list arrives: a failure naming the version the
    wipe covered (never "ok: watchlist None vNone, expires None")."""
    from edge.device.doctor import check_watchlist, run_check
    from edge.watchlist.operator.seal import sign_wipe

    config = load_config(_device(tmp_path))
    store, operator = _store_with(tmp_path / "state", 2)
    assert store.wipe(sign_wipe(operator, "device:cam-a", 2)).ok
    assert run_check("watchlist", lambda: check_watchlist(config)) == {
        "name": "watchlist", "status": "fail",
        "detail": "wiped: watchlist wiped at v2 (nothing served; versions up to v2 are refused)"}


def _state_checks(config: Path) -> dict:
    from edge.device.doctor import run_check
    from edge.device.state_checks import STATE_CHECKS

    loaded = load_config(config)
    return {name: run_check(name, lambda check=check: check(loaded)) for name, check in STATE_CHECKS}


def test_a_provisioned_state_directory_passes_every_state_check(tmp_path):
    config, state = _provisioned(tmp_path)
    checks = _state_checks(config)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert checks["install_record"]["detail"].endswith(f"v2, matches {state / 'installed.bundle'} (manifest v2)")
    assert checks["audit_log"]["detail"] == f"{state / 'audit.log'}: 6 records, chain intact, head seq 6"
    assert checks["audit_seal"]["detail"].startswith("seal present, not verifiable here")
    assert "1 seal(s), 1 record(s) after the last" in checks["audit_seal"]["detail"]
    assert checks["outbox"]["detail"] == f"{state / 'outbox.db'}: intact, 300 event(s) waiting"


def _edit_audit_record(state: Path) -> None:
    log = state / "audit.log"
    log.write_text(log.read_text().replace('"subject_id":"s1"', '"subject_id":"s9"'))


def _symlink_audit_log(state: Path) -> None:
    elsewhere = state.parent / "elsewhere.log"
    (state / "audit.log").rename(elsewhere)
    (state / "audit.log").symlink_to(elsewhere)


def _corrupt_outbox(state: Path) -> None:
    import random

    path = state / "outbox.db"
    data = bytearray(path.read_bytes())
    middle = (len(data) // 4096 // 2) * 4096
    data[middle:middle + 4096] = random.Random(7).randbytes(4096)
    path.write_bytes(bytes(data))


def _edit_install_record(state: Path) -> None:
    record = state / "installed.version"
    record.write_text(record.read_text().replace('"version":2', '"version":3'))


def _rechain_without_a_match(state: Path) -> None:
    """Drop the first match and recompute the chain (hashes, seqs, links): the chain alone cannot tell."""
    import hashlib

    from edge.audit_record import make_record

    log = state / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    out, prev = [], "0" * 64
    for seq, r in enumerate([r for r in records if r["data"].get("subject_id") != "s0"], start=1):
        _, line = make_record(seq, r["kind"], r["data"], prev, r["at"])
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    log.write_bytes(b"".join(line + b"\n" for line in out))


@pytest.mark.parametrize("fault, failing, expected", [
    (_edit_audit_record, {"audit_log"}, ["{state}/audit.log line 3: record seq 3 was edited (hash mismatch)"]),
    (_symlink_audit_log, {"state_files", "audit_log", "audit_seal"},
     ["{state}/audit.log is a symbolic link (to {state}/../elsewhere.log): refused"]),
    (lambda state: os.chmod(state / "audit.seal", 0o644), {"state_files"},
     ["{state}/audit.seal has mode 0644: keys and personal data must be 0600 (chmod 600 {state}/audit.seal)"]),
    (lambda state: os.chmod(state / "keys", 0o755), {"state_files"},
     ["{state}/keys has mode 0755: a state directory must be 0700"]),
    (_corrupt_outbox, {"outbox"}, ["{state}/outbox.db is corrupt"]),
    (_edit_install_record, {"install_record"},
     ["{state}/installed.version does not verify with the device key"]),
    (lambda state: (state / "installed.version").unlink(), {"install_record"},
     ["{state}/installed.version is missing beside {state}/installed.bundle"]),
    (lambda state: (state / "audit.seal").unlink(), {"audit_seal"},
     ["{state}/audit.seal is missing but {state}/audit.log holds 1 seal(s)"]),
    (_rechain_without_a_match, {"audit_seal"}, ["{state}/audit.log seq 4: seal covers seq 4 with a hash the log no"
                                                " longer has"]),
    (lambda state: (state.parent / "operator" / "audit-verify.key").rename(state / "audit-verify.key"),
     {"audit_seal"}, ["{state}/audit-verify.key is on the device (the seals verify with it)"]),
], ids=["edited-audit-record", "symlinked-audit-log", "0644-key", "0755-dir", "corrupt-outbox",
        "edited-install-record", "missing-install-record", "removed-seal-key", "rechained-log", "verify-key-on-device"])
def test_each_state_fault_is_one_line_naming_its_path(tmp_path, fault, failing, expected):
    config, state = _provisioned(tmp_path)
    fault(state)
    checks = _state_checks(config)
    assert {name for name, c in checks.items() if c["status"] != "ok"} == failing, checks
    details = "\n".join(checks[name]["detail"] for name in failing)
    for line in expected:
        want = line.format(state=state).replace(f"{state}/../", f"{state.parent}/")
        assert any(got.startswith(want) for got in details.splitlines()), (want, details)
    for name in failing:  # every problem line names the path it is about
        assert all(str(state) in got for got in checks[name]["detail"].splitlines()), checks[name]["detail"]


def test_doctor_and_run_check_report_the_state_directory_line_by_line(tmp_path, capsys):
    config, state = _provisioned(tmp_path)
    os.chmod(state / "audit.seal", 0o644)
    _edit_audit_record(state)
    assert main(["run", "--config", str(config), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  state_files: {state}/audit.seal has mode 0644: keys and personal data must be 0600" in out
    assert f"FAIL  audit_log: {state}/audit.log line 3: record seq 3 was edited (hash mismatch)" in out
    assert "ok    outbox:" in out and "ok    install_record:" in out and "Traceback" not in out
    assert "config NOT OK" in out and "state_files, audit_log" in out
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"✗ audit_log       {state}/audit.log line 3: record seq 3 was edited" in out
    assert "✓ audit_seal" in out and "seal present, not verifiable here" in out


def test_state_checks_pass_before_the_state_directory_exists(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"device": {"id": "cam-a", "state_dir": str(tmp_path / "none")}}))
    checks = _state_checks(path)
    assert all(c["status"] == "ok" for c in checks.values()), checks
