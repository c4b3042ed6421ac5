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
    from edge.device.doctor import Absent, check_thumbnail_key

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
