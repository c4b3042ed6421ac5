"""`edge device provision`: key files, modes, the CSR, device.json and the refusal to overwrite."""

import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge import keys
from edge.cli import main
from edge.device.provision import ProvisionError, provision


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_writes_keys_csr_and_device_json(tmp_path, capsys):
    out = tmp_path / "dev"
    assert main(["device", "provision", "--id", "cam-7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _mode(out / "device.key") == 0o600
    assert _mode(out / "tls.key") == 0o600
    private = keys.load_private_key(out / "device.key", "device")
    public = keys.load_public_key(out / "device.pub", "device")
    assert keys.key_id(private.public_key()) == keys.key_id(public)
    csr = x509.load_pem_x509_csr((out / "tls.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-7"
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey) and csr.public_key().curve.name == "secp256r1"
    doc = json.loads((out / "device.json").read_text())
    assert doc["device_id"] == "cam-7" and doc["key_id"] == keys.key_id(public) and doc["csr"] == "tls.csr"
    assert doc["public_key"] == (out / "device.pub").read_text()
    for needed in ("cam-7", doc["key_id"], "BEGIN PUBLIC KEY", str(out / "tls.csr")):
        assert needed in printed


def test_provision_json_output(tmp_path, capsys):
    assert main(["device", "provision", "--id", "cam-8", "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device_id"] == "cam-8" and doc["csr"] == str(tmp_path / "tls.csr") and "PUBLIC KEY" in doc["public_key"]


def test_provision_refuses_to_overwrite_without_force(tmp_path, capsys):
    provision("cam-9", tmp_path)
    before = (tmp_path / "device.key").read_bytes()
    assert main(["device", "provision", "--id", "cam-9", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "device.key") in err and "--force" in err
    assert (tmp_path / "device.key").read_bytes() == before
    assert main(["device", "provision", "--id", "cam-9", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "device.key").read_bytes() != before
    assert _mode(tmp_path / "device.key") == 0o600


@pytest.mark.parametrize("bad", ["", "a b", "cam/1", "x" * 65, "cam+1"])
def test_provision_rejects_bad_ids(tmp_path, bad):
    with pytest.raises(ProvisionError, match="invalid device id"):
        provision(bad, tmp_path)
    assert not any(tmp_path.iterdir())


def test_provision_recommends_lower_case(tmp_path):
    assert any("lower case" in w for w in provision("Cam-1", tmp_path).warnings)
    assert provision("cam-1", tmp_path / "b").warnings == ()


def test_provision_copies_the_operators_evidence_key_and_refuses_a_wrong_one(tmp_path, capsys):
    ops = tmp_path / "ops"
    assert main(["keys", "generate", "evidence", "--out", str(ops), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert _mode(ops / "evidence.key") == 0o600
    out = tmp_path / "dev"
    assert main(["device", "provision", "--id", "cam-5", "--out", str(out), "--evidence-key", str(ops / "evidence.pub"),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["evidence_key_id"] == made["key_id"] and doc["evidence_key"] == str(out / "operator-evidence.pub")
    assert keys.key_id(keys.load_public_key(out / "operator-evidence.pub", "device")) == made["key_id"]
    # an Ed25519 signing key is not an evidence key: one line, nothing written
    assert main(["keys", "generate", "operator", "--out", str(ops)]) == 0
    assert main(["device", "provision", "--id", "cam-6", "--out", str(tmp_path / "d6"), "--evidence-key",
                 str(ops / "operator.pub")]) == 1
    err = capsys.readouterr().err
    assert "operator.pub" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "d6").exists()
