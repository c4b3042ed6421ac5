"""Key files and operator-key rotation: modes, refusals and the messages a user sees."""

import base64
import json
import os
import stat

import pytest

from edge.errors import EdgeError
from edge.keys import (
    KeyFileError,
    RotationError,
    TrustStore,
    generate_device_key,
    generate_operator_key,
    key_id,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    sign_rotation,
)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_key_is_0600_and_round_trips(tmp_path):
    key = generate_operator_key()
    path = tmp_path / "keys" / "operator.key"  # parent is created
    save_private_key(path, key)
    assert _mode(path) == 0o600
    loaded = load_private_key(path, "operator")
    assert key_id(loaded.public_key()) == key_id(key.public_key())


def test_private_key_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "device.key", generate_device_key())
        save_private_key(tmp_path / "device.key", generate_device_key(), force=True)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "device.key") == 0o600


def test_public_key_is_0644_and_round_trips(tmp_path):
    key = generate_device_key()
    save_public_key(tmp_path / "device.pub", key.public_key())
    assert _mode(tmp_path / "device.pub") == 0o644
    assert key_id(load_public_key(tmp_path / "device.pub", "device")) == key_id(key.public_key())


def test_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "operator.key"
    first = generate_operator_key()
    save_private_key(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match=r"operator\.key already exists; use --force to replace it"):
        save_private_key(path, generate_operator_key())
    assert path.read_bytes() == before
    second = generate_operator_key()
    save_private_key(path, second, force=True)
    assert _mode(path) == 0o600
    assert key_id(load_private_key(path, "operator").public_key()) == key_id(second.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["operator.key"]  # no temp file left


def test_key_file_error_is_an_edge_error():
    assert issubclass(KeyFileError, EdgeError) and issubclass(RotationError, EdgeError)


def test_group_readable_private_key_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "operator.key"
    save_private_key(path, generate_operator_key())
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as err:
        load_private_key(path, "operator")
    assert str(err.value) == (f"key file {path} has permissions 0644; private keys must be 0600 (chmod 600 {path})")


def test_wrong_key_type_names_both_types(tmp_path):
    save_private_key(tmp_path / "device.key", generate_device_key())
    with pytest.raises(KeyFileError, match=r"device\.key is an X25519 key; an Ed25519 operator key is needed"):
        load_private_key(tmp_path / "device.key", "operator")
    save_public_key(tmp_path / "operator.pub", generate_operator_key().public_key())
    with pytest.raises(KeyFileError, match=r"operator\.pub is an Ed25519 key; an X25519 device key is needed"):
        load_public_key(tmp_path / "operator.pub", "device")


def test_missing_and_non_pem_files(tmp_path):
    with pytest.raises(KeyFileError, match=r"key file not found: .*nothing\.key"):
        load_private_key(tmp_path / "nothing.key", "device")
    with pytest.raises(KeyFileError, match=r"key file not found: .*nothing\.pub"):
        load_public_key(tmp_path / "nothing.pub", "device")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"hello")
    os.chmod(junk, 0o600)
    with pytest.raises(KeyFileError, match=r"junk\.key is not a PEM file"):
        load_private_key(junk, "device")
    broken = tmp_path / "broken.key"
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(broken, 0o600)
    with pytest.raises(KeyFileError, match=r"broken\.key is not a valid PEM private key"):
        load_private_key(broken, "device")


def test_public_and_private_files_swapped(tmp_path):
    key = generate_operator_key()
    save_private_key(tmp_path / "op.key", key)
    save_public_key(tmp_path / "op.pub", key.public_key())
    os.chmod(tmp_path / "op.pub", 0o600)
    with pytest.raises(KeyFileError, match=r"op\.pub holds a public key; the Ed25519 operator private key is needed"):
        load_private_key(tmp_path / "op.pub", "operator")
    with pytest.raises(KeyFileError, match=r"op\.key holds a private key; give the public key file"):
        load_public_key(tmp_path / "op.key", "operator")


def test_key_id_is_16_hex_of_the_raw_key():
    key = generate_operator_key().public_key()
    kid = key_id(key)
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert kid != key_id(generate_operator_key().public_key())


# ---------------------------------------------------------------- rotation


def test_rotation_chain_is_accepted_link_by_link(tmp_path):
    old, new, newer = generate_operator_key(), generate_operator_key(), generate_operator_key()
    store = TrustStore([old.public_key()])
    store.save(tmp_path / "trust.json")
    assert store.accept_rotation(sign_rotation(old, new.public_key())) == key_id(new.public_key())
    assert store.accept_rotation(sign_rotation(new, newer.public_key())) == key_id(newer.public_key())
    expected = {key_id(k.public_key()) for k in (old, new, newer)}
    assert set(store.keys()) == expected
    # Each accepted rotation was persisted: a restart trusts the whole chain.
    assert set(TrustStore.load(tmp_path / "trust.json").keys()) == expected
    store.remove(key_id(old.public_key()))
    assert key_id(old.public_key()) not in TrustStore.load(tmp_path / "trust.json")


def test_rotation_signed_by_an_unknown_key_is_refused():
    pinned, stranger, new = generate_operator_key(), generate_operator_key(), generate_operator_key()
    store = TrustStore([pinned.public_key()])
    with pytest.raises(RotationError) as err:
        store.accept_rotation(sign_rotation(stranger, new.public_key()))
    assert err.value.reason == "unknown_key"
    assert str(err.value) == (f"rotation statement is signed by operator key {key_id(stranger.public_key())}, which"
                              f" this device does not trust (pinned: {key_id(pinned.public_key())})")
    assert set(store.keys()) == {key_id(pinned.public_key())}


def test_rotation_skipping_a_link_is_refused():
    old, new, newer = generate_operator_key(), generate_operator_key(), generate_operator_key()
    store = TrustStore([old.public_key()])
    with pytest.raises(RotationError, match="which this device does not trust") as err:
        store.accept_rotation(sign_rotation(new, newer.public_key()))
    assert err.value.reason == "unknown_key"


def test_tampered_rotation_statement_is_refused():
    old, new, attacker = generate_operator_key(), generate_operator_key(), generate_operator_key()
    store = TrustStore([old.public_key()])
    doc = json.loads(sign_rotation(old, new.public_key()))
    doc["statement"]["new_key"] = base64.b64encode(attacker.public_key().public_bytes_raw()).decode()
    doc["statement"]["new_key_id"] = key_id(attacker.public_key())
    with pytest.raises(RotationError) as err:
        store.accept_rotation(json.dumps(doc).encode())
    assert err.value.reason == "bad_signature"
    assert str(err.value) == (f"rotation statement signature does not verify with pinned key"
                              f" {key_id(old.public_key())}: the statement was altered or forged")
    assert len(store) == 1


def test_rotation_with_a_mismatched_key_id_or_garbage_is_malformed():
    old, new = generate_operator_key(), generate_operator_key()
    store = TrustStore([old.public_key()])
    doc = json.loads(sign_rotation(old, new.public_key()))
    doc["statement"]["new_key_id"] = "0" * 16
    with pytest.raises(RotationError, match="new_key_id 0000000000000000 does not match the new key") as err:
        store.accept_rotation(json.dumps(doc).encode())
    assert err.value.reason == "malformed"
    for junk in (b"", b"{}", b"[1]", b'{"statement": {}, "signature": "x"}'):
        with pytest.raises(RotationError, match="rotation statement is malformed") as err:
            store.accept_rotation(junk)
        assert err.value.reason == "malformed"
    assert len(store) == 1


def test_trust_store_file_with_a_mislabelled_key_is_refused(tmp_path):
    key = generate_operator_key().public_key()
    path = tmp_path / "trust.json"
    TrustStore([key]).save(path)
    doc = json.loads(path.read_text())
    doc["keys"] = {"0123456789abcdef": next(iter(doc["keys"].values()))}
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=f"entry 0123456789abcdef holds key {key_id(key)}"):
        TrustStore.load(path)
