"""Bundle attack suite, after python-tuf's updater tests and Uptane's test plan: every tampering is refused with a
stable `reason` and a message a user can act on, and never with anything but a BundleError.

Format 2: one signed manifest per version for an audience (a device or a group), the payload encrypted once and its
content key wrapped to each recipient; local bundles (a device's own copy of a version it rebuilt from a delta) and
signed wipe statements are attacked here too."""

import base64
import hashlib
import json
import os
import random
import struct
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import EdgeError
from edge.canonical import canonical_json
from edge.keys import TrustStore, generate_device_key, generate_operator_key, key_id
from edge.watchlist import frame as F
from edge.watchlist import wipe as W
from edge.watchlist.device import unseal as U
from edge.watchlist.device import verify as V
from edge.watchlist.operator import seal as S
from edge.watchlist import manifest as M
from edge.watchlist.device.local import open_local, seal_local
from edge.watchlist.device.unseal import open_bundle
from edge.watchlist.device.verify import verify_wipe
from edge.watchlist.frame import BundleError, peek_manifest
from edge.watchlist.operator.seal import seal, sign_wipe
from edge.watchlist.payload import Payload, content_sha256, pack

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
EMBEDDER_SHA = hashlib.sha256(b"embedder").hexdigest()
PAYLOAD = b"annoy-index-bytes" * 200 + b"subject: CANARY-label"
#: v2 as a delta on v1 and the full result a device rebuilds from it (opaque bytes: this layer does not apply deltas).
DELTA_V2 = b"delta: +1 subject"
FULL_V2 = PAYLOAD + b", subject: CANARY-2"
BASE_V1 = {"version": 1, "content_sha256": F.content_of(PAYLOAD)}


@pytest.fixture(scope="module")
def keys():
    return {"operator": generate_operator_key(), "stranger": generate_operator_key(),
            "cam1": generate_device_key(), "cam2": generate_device_key(), "cam3": generate_device_key()}


@pytest.fixture(scope="module")
def pinned(keys):
    return {key_id(keys["operator"].public_key()): keys["operator"].public_key()}


def _args(keys, version, signer):
    return dict(watchlist_id="wl-main", version=version, signing_key=keys[signer], embedder_id="dlib_resnet_v1_int8",
                embedder_sha256=EMBEDDER_SHA, dim=128, n_items=3, n_subjects=2,
                thresholds={"match": 0.42, "margin": 0.05}, created=NOW - timedelta(days=1),
                expires=NOW + timedelta(days=30))


def make(keys, *, payload=PAYLOAD, device="cam1", version=1, signer="operator", **overrides):
    """A bundle for one device (audience device:<device>)."""
    args = dict(_args(keys, version, signer), device_id=device, device_public=keys[device].public_key())
    args.update(overrides)
    return seal(payload, **args)


def make_group(keys, *, payload=PAYLOAD, members=("cam1", "cam2"), group="patrol", version=1, signer="operator",
               **overrides):
    """A bundle for a group (audience group:<group>), its key wrapped to each member's key."""
    args = dict(_args(keys, version, signer), group=group, recipients={m: keys[m].public_key() for m in members})
    args.update(overrides)
    return seal(payload, **args)


def parts(data):
    """(manifest bytes, signature, payload ciphertext) of a well-formed bundle."""
    (n,) = struct.unpack(">I", data[8:12])
    return data[12:12 + n], data[14 + n:78 + n], data[78 + n:]


def frame(manifest_raw, signature, payload, sig_len=None):
    sig_len = len(signature) if sig_len is None else sig_len
    return F.MAGIC + struct.pack(">I", len(manifest_raw)) + manifest_raw + struct.pack(">H", sig_len) + signature \
        + payload


def refused(data, keys, pinned, device="cam1", **kwargs):
    """The BundleError `device` (its key, and by default its id) gets opening `data`."""
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("expected_device_id", device)
    with pytest.raises(BundleError) as err:
        open_bundle(data, keys[device], pinned, **kwargs)
    assert isinstance(err.value, EdgeError)
    return err.value


@pytest.fixture(scope="module")
def good(keys):
    return make(keys)


def test_round_trip(keys, pinned, good):
    opened = open_bundle(good, keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    assert opened.payload == PAYLOAD
    assert opened.version == 1 and opened.watchlist_id == "wl-main"
    assert opened.signed_by == key_id(keys["operator"].public_key())
    assert opened.bundle_sha256 == hashlib.sha256(good).hexdigest()
    manifest_raw, _, ciphertext = parts(good)
    assert opened.manifest_sha256 == hashlib.sha256(manifest_raw).hexdigest()
    assert opened.header == good[:len(good) - len(ciphertext)]
    m = opened.manifest
    assert m["format"] == "edge-watchlist/2" and m["audience"] == "device:cam1" and m["metric"] == "angular"
    assert "device_id" not in m and "key_wrap" not in m
    assert m["kind"] == opened.kind == "full" and m["base"] is None
    assert m["content_sha256"] == opened.content_sha256 == F.content_of(PAYLOAD)
    assert m["embedder"] == {"id": "dlib_resnet_v1_int8", "sha256": EMBEDDER_SHA}
    assert m["created"] == "2025-05-31T12:00:00Z" and m["expires"] == "2025-07-01T12:00:00Z"
    assert m["payload"]["length"] == len(ciphertext) == len(PAYLOAD) + 16
    assert m["key_wrap_alg"] == "X25519-HKDF-SHA256/AES-256-GCM"
    assert set(m["recipients"]) == {"cam1"}
    assert set(m["recipients"]["cam1"]) == {"ephemeral_public", "nonce", "wrapped_key"}
    assert m["signing"] == {"alg": "Ed25519", "key_id": opened.signed_by}
    assert b"CANARY" not in good  # the payload is encrypted


def test_a_watchlist_payloads_content_hash_is_its_content_sha256(keys, pinned):
    packed = pack(Payload(b"annoy-index", {"dim": 4, "metric": "angular", "items": [], "subjects": {}}, b""))
    opened = open_bundle(make(keys, payload=packed), keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    assert opened.payload == packed and opened.content_sha256 == content_sha256(packed)
    assert F.content_of(PAYLOAD) != hashlib.sha256(PAYLOAD).hexdigest()  # opaque bytes: domain-separated


def test_without_a_device_id_the_recipient_whose_wrap_the_key_opens_is_used(keys, pinned, good):
    # Operator tools and benches pass no device id; a device always does (the tests above and below).
    group = make_group(keys)
    assert open_bundle(good, keys["cam1"], pinned, now=NOW).payload == PAYLOAD
    assert open_bundle(group, keys["cam2"], pinned, now=NOW).payload == PAYLOAD
    assert U.find_recipient(json.loads(parts(group)[0]), keys["cam2"]) == "cam2"
    for data, audience in ((good, "device:cam1"), (group, "group:patrol")):
        err = refused(data, keys, pinned, device="cam3", expected_device_id=None)
        assert err.reason == "not_recipient"
        assert str(err) == f"bundle wl-main v1 for {audience} has no key wrap this device key opens (not a recipient)"


def test_a_trust_store_works_as_the_pinned_keys(keys, good):
    store = TrustStore([keys["stranger"].public_key(), keys["operator"].public_key()])
    assert open_bundle(good, keys["cam1"], store, expected_device_id="cam1", now=NOW).payload == PAYLOAD
    # Mapping labels are not trusted: the id is computed from the key itself.
    assert open_bundle(good, keys["cam1"], {"whatever": keys["operator"].public_key()}, expected_device_id="cam1",
                       now=NOW).payload == PAYLOAD


def test_each_seal_uses_a_fresh_content_key(keys):
    a, b = make(keys), make(keys)
    assert parts(a)[2] != parts(b)[2]
    assert json.loads(parts(a)[0])["recipients"] != json.loads(parts(b)[0])["recipients"]
    ka = U.unwrap_content_key(json.loads(parts(a)[0]), "cam1", keys["cam1"])
    kb = U.unwrap_content_key(json.loads(parts(b)[0]), "cam1", keys["cam1"])
    assert len(ka) == len(kb) == 32 and ka != kb


# ---------------------------------------------------------------- signatures and keys


def test_garbage_signature(keys, pinned, good):
    manifest_raw, _, payload = parts(good)
    err = refused(frame(manifest_raw, bytes(64), payload), keys, pinned)
    assert err.reason == "bad_signature"
    assert str(err) == (f"bundle signature does not verify with any pinned operator key ({next(iter(pinned))}):"
                        " the manifest was altered after signing or the signature is forged")


def test_unsigned_bundle(keys, pinned, good):
    manifest_raw, _, payload = parts(good)
    err = refused(frame(manifest_raw, b"", payload), keys, pinned)
    assert err.reason == "bad_signature"
    assert str(err) == "bundle signature length field says 0 bytes; Ed25519 signatures are 64"


def test_signed_by_an_unpinned_key(keys, pinned):
    data = make(keys, signer="stranger")
    err = refused(data, keys, pinned)
    assert err.reason == "unknown_key"
    assert str(err) == (f"bundle is signed by operator key {key_id(keys['stranger'].public_key())}, which this"
                        f" device does not trust (pinned: {next(iter(pinned))}); pin it or accept a key-rotation"
                        " statement")


def test_no_pinned_keys(keys, good):
    err = refused(good, keys, {})
    assert err.reason == "unknown_key"
    assert str(err) == "no operator keys are pinned on this device, so no bundle can be trusted"


@pytest.mark.parametrize("edit", [
    lambda m: m.update(version=99),
    lambda m: m.update(audience="device:cam2"),
    lambda m: m.update(audience="group:patrol"),
    lambda m: m.update(content_sha256="0" * 64),
    lambda m: m.update(expires="2099-01-01T00:00:00Z"),
    lambda m: m["thresholds"].update(match=0.99),
])
def test_manifest_edited_after_signing(keys, pinned, good, edit):
    manifest_raw, signature, payload = parts(good)
    manifest = json.loads(manifest_raw)
    edit(manifest)
    err = refused(frame(canonical_json(manifest), signature, payload), keys, pinned)
    assert err.reason == "bad_signature"
    assert "the manifest was altered after signing" in str(err)


def test_manifest_naming_another_key_than_the_one_that_signed(keys, good):
    manifest = json.loads(parts(good)[0])
    manifest["signing"]["key_id"] = key_id(keys["stranger"].public_key())
    data = S.assemble(manifest, keys["operator"], parts(good)[2])
    both = {"a": keys["operator"].public_key(), "b": keys["stranger"].public_key()}
    err = refused(data, keys, both)
    assert err.reason == "bad_signature"
    assert str(err) == (f"bundle wl-main v1 names signing key {key_id(keys['stranger'].public_key())} but was"
                        f" signed by pinned key {key_id(keys['operator'].public_key())}")


# ---------------------------------------------------------------- framing


def test_bad_magic(keys, pinned, good):
    err = refused(b"PK\x03\x04" + good[4:], keys, pinned)
    assert err.reason == "bad_magic"
    assert str(err).startswith("not a watchlist bundle: the file starts with b'PK\\x03\\x04")


def test_a_format_1_file_is_unsupported_and_says_to_reseal(keys, pinned, good):
    assert F.OLD_MAGIC == b"EDGEWL1\n"
    # A format-1 file as it was laid out (one device_id and key_wrap, the old signature domain), and any other bytes
    # after the old magic however short: the magic alone decides, before any length or signature is read.
    old_manifest = {k: v for k, v in json.loads(parts(good)[0]).items() if k not in ("recipients", "key_wrap_alg",
                                                                                        "audience", "kind", "base",
                                                                                        "content_sha256")}
    old_manifest.update(format="edge-watchlist/1", device_id="cam1", key_wrap={"alg": "X25519-HKDF-SHA256/AES-256-GCM"})
    raw = canonical_json(old_manifest)
    format_1 = (F.OLD_MAGIC + struct.pack(">I", len(raw)) + raw + struct.pack(">H", 64)
                + keys["operator"].sign(b"edge-watchlist-manifest/1\x00" + raw) + parts(good)[2])
    message = ("bundle format 1 (sealed for one device) is no longer accepted: re-seal the watchlist with this"
               " version's `edge watchlist seal` (format 2)")
    for data in (format_1, F.OLD_MAGIC + good[8:], F.OLD_MAGIC, F.OLD_MAGIC + b"\xff" * 3):
        err = refused(data, keys, pinned)
        assert (err.reason, str(err)) == ("unsupported_format", message)
        with pytest.raises(BundleError) as verr:
            V.verify_bundle(data, pinned, expected_device_id="cam1", now=NOW)
        assert verr.value.reason == "unsupported_format" and "re-seal" in str(verr.value)
        with pytest.raises(BundleError) as perr:  # not even displayed as if it were a format-2 manifest
            peek_manifest(data)
        assert perr.value.reason == "unsupported_format"


def test_truncated_at_every_offset_of_the_header_manifest_and_signature(keys, pinned, good):
    manifest_raw, _, _ = parts(good)
    header_end = 8 + 4 + len(manifest_raw) + 2 + 64
    for cut in range(header_end + 1):
        err = refused(good[:cut], keys, pinned)
        assert err.reason == "truncated", (cut, err.reason, str(err))
        assert "truncated" in str(err)
    assert str(refused(b"", keys, pinned)) == "bundle is truncated: the file is empty"
    assert str(refused(good[:20], keys, pinned)) == (
        f"bundle is truncated: 20 bytes, it ends inside the manifest ({len(manifest_raw)} bytes declared)")
    assert str(refused(good[:header_end - 1], keys, pinned)) == (
        f"bundle is truncated: {header_end - 1} bytes, it ends inside the signature")


def test_truncated_at_random_offsets_of_the_payload(keys, pinned, good):
    manifest_raw, _, payload = parts(good)
    header_end = len(good) - len(payload)
    rng = random.Random(1)
    for cut in rng.sample(range(header_end, len(good)), 200):
        err = refused(good[:cut], keys, pinned)
        assert err.reason == "truncated"
        assert str(err) == (f"bundle wl-main v1 is truncated: the payload has {cut - header_end} of {len(payload)}"
                            " bytes")


def test_trailing_bytes(keys, pinned, good):
    err = refused(good + b"\x00", keys, pinned)
    assert err.reason == "payload_mismatch"
    assert str(err) == f"bundle wl-main v1 has 1 unexpected bytes after its {len(parts(good)[2])}-byte payload"


def test_oversized_manifest_length_field(keys, pinned, good):
    data = good[:8] + struct.pack(">I", F.MAX_MANIFEST_BYTES + 1) + good[12:]
    err = refused(data, keys, pinned)
    assert err.reason == "oversized"
    assert F.MAX_MANIFEST_BYTES == 1024 * 1024
    assert str(err) == "bundle manifest length field says 1048577 bytes; the limit is 1048576 bytes"
    err = refused(good[:8] + b"\xff\xff\xff\xff" + good[12:], keys, pinned)
    assert err.reason == "oversized"


def test_oversized_bundle(keys, pinned, good, monkeypatch):
    monkeypatch.setattr(F, "MAX_BUNDLE_BYTES", len(good) - 1)
    err = refused(good, keys, pinned)
    assert err.reason == "oversized"
    assert str(err) == f"bundle is {len(good)} bytes; the limit is {len(good) - 1} bytes"


FLIP_REASONS = {"bad_magic", "truncated", "oversized", "bad_signature", "unknown_key", "payload_mismatch"}


def test_random_bit_flips_over_300_positions(keys, pinned, good):
    manifest_raw, _, payload = parts(good)
    header_end = len(good) - len(payload)
    rng = random.Random(7)
    # Every byte of the framing and signature, and a sample of the manifest and payload.
    positions = list(range(12)) + list(range(header_end - 66, header_end))
    positions += rng.sample(range(12, header_end - 66), 150) + rng.sample(range(header_end, len(good)), 150)
    assert len(positions) >= 300
    seen = set()
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 1 << rng.randrange(8)
        err = refused(bytes(data), keys, pinned)
        assert err.reason in FLIP_REASONS, (pos, err.reason)
        seen.add(err.reason)
    assert {"bad_magic", "bad_signature", "payload_mismatch"} <= seen


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_bit_flip_is_refused(keys, pinned, good, data):
    pos = data.draw(st.integers(0, len(good) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(good)
    flipped[pos] ^= 1 << bit
    with pytest.raises(BundleError) as err:
        open_bundle(bytes(flipped), keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    assert err.value.reason in FLIP_REASONS


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_bundle_error(junk):
    device, op = generate_device_key(), generate_operator_key()
    for data in (junk, F.MAGIC + junk):
        with pytest.raises(BundleError):
            open_bundle(data, device, {"k": op.public_key()}, expected_device_id="cam1", now=NOW)


# ---------------------------------------------------------------- policy: time and device


def test_expired(keys, pinned, good):
    later = NOW + timedelta(days=31)
    err = refused(good, keys, pinned, now=later)
    assert err.reason == "expired"
    assert str(err) == ("bundle wl-main v1 expired at 2025-07-01T12:00:00Z: the watchlist is stale; ask the operator"
                        " for a fresh bundle")
    exactly = datetime(2025, 7, 1, 12, 0, tzinfo=timezone.utc)
    assert refused(good, keys, pinned, now=exactly).reason == "expired"
    assert open_bundle(good, keys["cam1"], pinned, expected_device_id="cam1", now=later,
                       allow_expired=True).payload == PAYLOAD


def test_wrong_device_id(keys, pinned, good):
    err = refused(good, keys, pinned, expected_device_id="cam2")
    assert err.reason == "not_recipient"
    assert str(err) == ("bundle wl-main v1 is for device:cam1 and does not list this device ('cam2') as a"
                        " recipient")
    # verify_bundle (no device key: publish, verify) applies the same rule
    with pytest.raises(BundleError) as verr:
        V.verify_bundle(good, pinned, expected_device_id="cam2", now=NOW)
    assert (verr.value.reason, str(verr.value)) == (err.reason, str(err))


def test_wrong_device_key(keys, pinned, good):
    err = refused(good, keys, pinned, device="cam2", expected_device_id="cam1")
    assert err.reason == "unwrap_failed"
    assert str(err) == ("cannot unwrap the content key: bundle wl-main v1's wrap for device cam1 was not made for"
                        " this device's key (or was altered)")


def test_sealed_for_cam2_but_labelled_cam1(keys, pinned):
    # The audience says cam1 (passes expected_device_id) but the key was wrapped to cam2's public key.
    data = make(keys, device="cam1", device_public=keys["cam2"].public_key())
    err = refused(data, keys, pinned, expected_device_id="cam1")
    assert err.reason == "unwrap_failed"
    assert "was not made for this device's key" in str(err)
    # and cam2, whose key it was wrapped to, is not its recipient
    assert refused(data, keys, pinned, device="cam2").reason == "not_recipient"


# ---------------------------------------------------------------- transplants (AAD / key-wrap binding)


def test_payload_from_another_devices_bundle(keys, pinned, good):
    other = make(keys, device="cam2")
    manifest_raw, signature, _ = parts(good)
    err = refused(frame(manifest_raw, signature, parts(other)[2]), keys, pinned)
    assert err.reason == "payload_mismatch"
    assert str(err) == "bundle wl-main v1: the payload does not match the manifest's sha256 (corrupted or replaced)"


def _resigned(keys, source, **changes):
    """A manifest the operator signed (e.g. a build-tool bug) that reuses `source`'s ciphertext and key wrap."""
    manifest = json.loads(parts(source)[0])
    manifest.update(changes)
    return manifest


def test_key_wrap_from_another_version_does_not_unwrap(keys, pinned, good):
    manifest = _resigned(keys, good, version=2)
    err = refused(S.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned)
    assert err.reason == "unwrap_failed"
    assert "bundle wl-main v2's wrap for device cam1 was not made for this device's key" in str(err)


def test_ciphertext_from_another_version_fails_authentication(keys, pinned, good):
    # Even with the right content key re-wrapped for v2, v1's ciphertext is bound to v1 by its AAD.
    v1 = json.loads(parts(good)[0])
    content_key = U.unwrap_content_key(v1, "cam1", keys["cam1"])
    manifest = _resigned(keys, good, version=2)
    manifest["recipients"] = {"cam1": S.wrap_content_key(content_key, keys["cam1"].public_key(), "cam1", 2,
                                                         F.binding_hash(manifest))}
    err = refused(S.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned)
    assert err.reason == "decrypt_failed"
    assert str(err) == ("bundle wl-main v2: payload authentication failed: the encrypted payload does not belong to"
                        " this manifest (version, audience or model differ)")


@pytest.mark.parametrize("change", [{"audience": "device:cam2"}, {"audience": "group:patrol"},
                                    {"embedder": {"id": "other", "sha256": "0" * 64}}, {"n_items": 4},
                                    {"content_sha256": "0" * 64},
                                    {"thresholds": {"match": 0.9, "margin": 0.05}}])
def test_ciphertext_moved_under_another_binding_fails_authentication(keys, pinned, good, change):
    v1 = json.loads(parts(good)[0])
    content_key = U.unwrap_content_key(v1, "cam1", keys["cam1"])
    manifest = _resigned(keys, good, **change)
    device = "cam2" if manifest["audience"] == "device:cam2" else "cam1"
    manifest["recipients"] = {device: S.wrap_content_key(content_key, keys[device].public_key(), device, 1,
                                                         F.binding_hash(manifest))}
    err = refused(S.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned, device=device)
    assert err.reason == "decrypt_failed"
    assert "payload authentication failed" in str(err)


def test_a_full_payload_that_does_not_match_its_content_hash_is_refused(keys, pinned):
    # seal refuses to sign a content hash that is not the payload's ...
    with pytest.raises(BundleError) as err:
        make(keys, content="0" * 64)
    assert (err.value.reason, str(err.value)) == ("malformed_manifest", "cannot seal watchlist bundle: the content"
                                                  " hash given does not match the full payload")
    # ... and a bundle whose signed content hash names other content (sealed by hand) is refused on opening.
    manifest = json.loads(parts(make(keys))[0])
    manifest["content_sha256"] = "0" * 64
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, PAYLOAD, F.binding_hash(manifest))
    manifest["payload"] = {**manifest["payload"], "length": len(ciphertext), "nonce": base64.b64encode(nonce).decode(),
                           "sha256": hashlib.sha256(ciphertext).hexdigest()}
    manifest["recipients"] = {"cam1": S.wrap_content_key(key, keys["cam1"].public_key(), "cam1", 1,
                                                         F.binding_hash(manifest))}
    err = refused(S.assemble(manifest, keys["operator"], ciphertext), keys, pinned)
    assert err.reason == "content_mismatch"
    assert str(err) == ("bundle wl-main v1: the decrypted watchlist does not match the content hash in its signed"
                        " manifest")


# ---------------------------------------------------------------- recipients: groups, moved, replayed and edited wraps


@pytest.fixture(scope="module")
def group(keys):
    return make_group(keys)


def test_a_group_bundle_opens_for_each_member_and_for_no_one_else(keys, pinned, group):
    manifest = json.loads(parts(group)[0])
    assert manifest["audience"] == "group:patrol" and set(manifest["recipients"]) == {"cam1", "cam2"}
    for member in ("cam1", "cam2"):
        opened = open_bundle(group, keys[member], pinned, expected_device_id=member, now=NOW)
        assert opened.payload == PAYLOAD and opened.manifest == manifest
    # encrypted once: one ciphertext, one content key wrapped twice
    assert len(parts(group)[2]) == len(PAYLOAD) + 16
    assert U.unwrap_content_key(manifest, "cam1", keys["cam1"]) == U.unwrap_content_key(manifest, "cam2",
                                                                                        keys["cam2"])
    err = refused(group, keys, pinned, device="cam3")
    assert err.reason == "not_recipient"
    assert str(err) == "bundle wl-main v1 is for group:patrol and does not list this device ('cam3') as a recipient"
    with pytest.raises(BundleError) as uerr:
        U.unwrap_content_key(manifest, "cam3", keys["cam3"])
    assert uerr.value.reason == "not_recipient"
    assert str(uerr.value) == ("bundle wl-main v1 for group:patrol does not list device 'cam3' as a recipient"
                               " (removed from the fleet or group?)")
    # a non-member claiming a member's id has the wrong key for that member's wrap
    assert refused(group, keys, pinned, device="cam3", expected_device_id="cam1").reason == "unwrap_failed"


def test_a_device_removed_from_the_group_cannot_open_the_next_version(keys, pinned):
    v2 = make_group(keys, members=("cam1",), version=2)
    assert open_bundle(v2, keys["cam1"], pinned, expected_device_id="cam1", now=NOW).version == 2
    err = refused(v2, keys, pinned, device="cam2")
    assert err.reason == "not_recipient"
    assert "bundle wl-main v2 is for group:patrol and does not list this device ('cam2')" in str(err)


@pytest.mark.parametrize("listed", [("cam2",), ("cam1", "cam2")], ids=["another", "an-extra"])
def test_a_device_bundle_whose_recipients_name_another_or_an_extra_device_is_malformed(keys, pinned, good, group,
                                                                                      listed):
    # Validly signed (a build-tool bug), with real wraps; refused for every device before any key is used.
    wraps = {"cam1": json.loads(parts(good)[0])["recipients"]["cam1"],
             "cam2": json.loads(parts(group)[0])["recipients"]["cam2"]}
    manifest = json.loads(parts(good)[0])
    manifest["recipients"] = {d: wraps[d] for d in listed}
    data = S.assemble(manifest, keys["operator"], parts(good)[2])
    for device in ("cam1", "cam2"):
        err = refused(data, keys, pinned, device=device)
        assert err.reason == "malformed_manifest"
        assert str(err) == ("bundle manifest is malformed: a bundle for device:cam1 must list exactly that device as"
                            " its recipient")


def test_a_wrap_moved_to_another_device_id_does_not_unwrap(keys, pinned, group):
    # Re-signed by the operator, so the signature is valid: only the key wrap's binding to the device id can catch it.
    manifest = json.loads(parts(group)[0])
    w1, w2 = manifest["recipients"]["cam1"], manifest["recipients"]["cam2"]
    message = ("cannot unwrap the content key: bundle wl-main v1's wrap for device {} was not made for this device's"
               " key (or was altered)")

    copied = S.assemble(dict(manifest, recipients={"cam1": w1, "cam2": w1}), keys["operator"], parts(group)[2])
    err = refused(copied, keys, pinned, device="cam2")
    assert (err.reason, str(err)) == ("unwrap_failed", message.format("cam2"))
    assert open_bundle(copied, keys["cam1"], pinned, expected_device_id="cam1", now=NOW).payload == PAYLOAD

    swapped = S.assemble(dict(manifest, recipients={"cam1": w2, "cam2": w1}), keys["operator"], parts(group)[2])
    for device in ("cam1", "cam2"):
        err = refused(swapped, keys, pinned, device=device)
        assert (err.reason, str(err)) == ("unwrap_failed", message.format(device))

    # cam1's wrap re-addressed to id cam9: even cam1's own key does not open it under that id (the device id is in
    # the key-wrap KDF info, not only the public key it was made for)
    renamed = S.assemble(dict(manifest, recipients={"cam9": w1, "cam2": w2}), keys["operator"], parts(group)[2])
    err = refused(renamed, keys, pinned, device="cam1", expected_device_id="cam9")
    assert (err.reason, str(err)) == ("unwrap_failed", message.format("cam9"))
    assert refused(renamed, keys, pinned, device="cam1").reason == "not_recipient"
    assert open_bundle(renamed, keys["cam2"], pinned, expected_device_id="cam2", now=NOW).payload == PAYLOAD


@pytest.mark.parametrize("edit", [
    lambda r: r.update(cam3=r["cam2"]),  # a recipient added (with a copied wrap)
    lambda r: r.pop("cam2"),  # a recipient removed
    lambda r: r.update(cam3=r.pop("cam2")),  # a recipient renamed
    lambda r: r.update(cam1=r["cam2"], cam2=r["cam1"]),  # wraps swapped
    lambda r: r["cam1"].update(wrapped_key=r["cam2"]["wrapped_key"]),  # one field of a wrap replaced
], ids=["added", "removed", "renamed", "swapped", "field-replaced"])
def test_recipients_edited_after_signing_fail_at_the_signature(keys, pinned, group, edit):
    manifest_raw, signature, payload = parts(group)
    manifest = json.loads(manifest_raw)
    edit(manifest["recipients"])
    data = frame(canonical_json(manifest), signature, payload)
    for device in ("cam1", "cam2", "cam3"):
        err = refused(data, keys, pinned, device=device)
        assert err.reason == "bad_signature"
        assert "the manifest was altered after signing" in str(err)
    with pytest.raises(BundleError) as err:  # and publish/verify, which hold no device key, see it too
        V.verify_bundle(data, pinned, now=NOW)
    assert err.value.reason == "bad_signature"


def test_a_wrap_from_an_older_version_replayed_into_a_newer_manifest_does_not_unwrap(keys, pinned):
    v1, v2 = make(keys, version=1), make(keys, version=2)
    m1, m2 = json.loads(parts(v1)[0]), json.loads(parts(v2)[0])
    m2["recipients"] = {"cam1": m1["recipients"]["cam1"]}
    err = refused(S.assemble(m2, keys["operator"], parts(v2)[2]), keys, pinned)
    assert err.reason == "unwrap_failed"
    assert str(err) == ("cannot unwrap the content key: bundle wl-main v2's wrap for device cam1 was not made for"
                        " this device's key (or was altered)")
    # the same for one member's wrap in a group's next version, the other member unaffected
    g1, g2 = make_group(keys, version=1), make_group(keys, version=2)
    mg1, mg2 = json.loads(parts(g1)[0]), json.loads(parts(g2)[0])
    mg2["recipients"]["cam2"] = mg1["recipients"]["cam2"]
    data = S.assemble(mg2, keys["operator"], parts(g2)[2])
    assert refused(data, keys, pinned, device="cam2").reason == "unwrap_failed"
    assert open_bundle(data, keys["cam1"], pinned, expected_device_id="cam1", now=NOW).version == 2


def test_a_wrap_of_the_full_bundle_replayed_into_the_delta_of_the_same_version_does_not_unwrap(keys, pinned):
    full = make(keys, version=2, payload=FULL_V2)
    delta = make(keys, version=2, payload=DELTA_V2, base=BASE_V1, content=F.content_of(FULL_V2))
    md = json.loads(parts(delta)[0])
    assert md["content_sha256"] == json.loads(parts(full)[0])["content_sha256"]  # same version, same content
    md["recipients"] = json.loads(parts(full)[0])["recipients"]
    err = refused(S.assemble(md, keys["operator"], parts(delta)[2]), keys, pinned)
    assert err.reason == "unwrap_failed"
    assert "bundle wl-main v2 (delta on v1)'s wrap for device cam1 was not made for this device's key" in str(err)


def test_a_group_bundle_can_list_the_most_recipients_with_the_longest_ids_within_the_manifest_limit(keys, pinned):
    ids = [f"d{i:063d}" for i in range(M.MAX_RECIPIENTS)]
    shared = keys["cam3"].public_key()  # one key for all: the wraps still differ (fresh ephemeral key, id in info)
    data = make_group(keys, recipients={d: shared for d in ids})
    (manifest_len,) = struct.unpack(">I", data[8:12])
    assert manifest_len <= F.MAX_MANIFEST_BYTES
    assert open_bundle(data, keys["cam3"], pinned, expected_device_id=ids[-1], now=NOW).payload == PAYLOAD
    with pytest.raises(BundleError) as err:
        make_group(keys, recipients={d: shared for d in ids + ["one-too-many"]})
    assert err.value.reason == "malformed_manifest"
    assert "recipients must be an object of 1-4096 device ids" in str(err.value)


# ---------------------------------------------------------------- schema (validly signed, badly formed)


def _signed_raw(keys, raw, payload=b"\x00" * 32):
    return frame(raw, keys["operator"].sign(F.SIGNATURE_DOMAIN + raw), payload)


def test_unknown_format_is_unsupported(keys, pinned, good):
    manifest = json.loads(parts(good)[0])
    manifest["format"] = "edge-watchlist/3"
    err = refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned)
    assert err.reason == "unsupported_format"
    assert str(err) == ("unsupported bundle: bundle format 'edge-watchlist/3' is not supported (this device supports"
                        " 'edge-watchlist/2'); update the device software")
    manifest["format"] = "edge-watchlist/1"  # a format-1 manifest in a format-2 frame is not accepted either
    assert refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned).reason == "unsupported_format"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("dim"), "missing field(s) dim"),
    (lambda m: m.update(extra=1), "unknown field(s) extra"),
    (lambda m: m.update(version="1"), "version must be an integer ≥ 1, got '1'"),
    (lambda m: m.update(version=0), "version must be an integer ≥ 1, got 0"),
    (lambda m: m.update(dim=True), "dim must be an integer ≥ 1, got True"),
    (lambda m: m.update(expires="tomorrow"), "expires must be an ISO-8601 UTC time like 2025-01-31T12:00:00Z"),
    (lambda m: m.update(created="2030-01-01T00:00:00Z"), "created 2030-01-01T00:00:00Z is after expires"),
    (lambda m: m["thresholds"].update(match="high"), "thresholds.match must be a finite number, got 'high'"),
    (lambda m: m["embedder"].update(sha256="XYZ"), "embedder.sha256 must be 64 lowercase hex digits"),
    (lambda m: m["recipients"]["cam1"].update(nonce="AAAA"), "recipients.cam1.nonce must be base64 of 12 bytes"),
    (lambda m: m["recipients"]["cam1"].update(alg="X25519"), "recipients.cam1 must be an object with exactly"
                                                              " ephemeral_public, nonce, wrapped_key"),
    (lambda m: m["recipients"]["cam1"].update(wrapped_key="AAAA"), "recipients.cam1.wrapped_key must be base64 of"
                                                                   " 48 bytes"),
    (lambda m: m.update(recipients={}), "recipients must be an object of 1-4096 device ids"),
    (lambda m: m.update(recipients=[]), "recipients must be an object of 1-4096 device ids"),
    (lambda m: m.update(device_id="cam1"), "unknown field(s) device_id"),  # the format-1 field
    (lambda m: m.pop("key_wrap_alg"), "missing field(s) key_wrap_alg"),
    (lambda m: m.update(audience="cam1"), "audience must be 'device:<id>' or 'group:<name>', got 'cam1'"),
    (lambda m: m.update(audience="group:a/b"), "audience must be 'device:<id>' or 'group:<name>'"),
    (lambda m: m.update(kind="patch"), "kind must be one of full, delta, got 'patch'"),
    (lambda m: m.update(base={"version": 1, "content_sha256": "0" * 64}), "a full bundle has base null"),
    (lambda m: m.update(kind="delta"), "base must be an object with exactly the fields content_sha256, version"),
    (lambda m: m.update(kind="delta", base={"version": 1, "content_sha256": "0" * 64}),
     "delta v1 must build on an older version, not v1"),
    (lambda m: m.update(content_sha256="abc"), "content_sha256 must be 64 lowercase hex digits"),
    (lambda m: m["payload"].pop("nonce"), "payload must be an object with exactly the fields cipher, length, nonce,"
                                          " sha256"),
])
def test_malformed_but_signed_manifest(keys, pinned, good, edit, message):
    manifest = json.loads(parts(good)[0])
    edit(manifest)
    err = refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned)
    assert err.reason == "malformed_manifest"
    assert str(err).startswith("bundle manifest is malformed: " + message)


def test_non_canonical_or_non_json_manifest(keys, pinned, good):
    manifest = json.loads(parts(good)[0])
    err = refused(_signed_raw(keys, json.dumps(manifest, indent=1).encode()), keys, pinned)
    assert (err.reason, str(err)) == ("malformed_manifest", "bundle manifest is malformed: not canonical JSON")
    err = refused(_signed_raw(keys, b"\xff not json"), keys, pinned)
    assert err.reason == "malformed_manifest" and str(err).startswith("bundle manifest is malformed: not JSON")
    err = refused(_signed_raw(keys, b"[" * 5000 + b"]" * 5000), keys, pinned)
    assert err.reason == "malformed_manifest"
    err = refused(_signed_raw(keys, b'{"format":NaN}'), keys, pinned)
    assert err.reason == "malformed_manifest"


def test_unsupported_cipher(keys, pinned, good):
    manifest = json.loads(parts(good)[0])
    manifest["payload"]["cipher"] = "ChaCha20-Poly1305"
    err = refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned)
    assert err.reason == "unsupported_format"
    assert "payload cipher 'ChaCha20-Poly1305' is not supported" in str(err)
    manifest = json.loads(parts(good)[0])
    manifest["key_wrap_alg"] = "RSA-OAEP"
    err = refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned)
    assert err.reason == "unsupported_format"
    assert "key_wrap_alg 'RSA-OAEP' is not supported" in str(err)


# ---------------------------------------------------------------- seal inputs and peek


def test_seal_refuses_bad_inputs_by_name(keys):
    with pytest.raises(BundleError, match=r"cannot seal watchlist bundle: embedder\.sha256 must be 64 lowercase hex"):
        make(keys, embedder_sha256="abc")
    with pytest.raises(BundleError, match="cannot seal watchlist bundle: times must be timezone-aware"):
        make(keys, expires=datetime(2030, 1, 1))
    with pytest.raises(BundleError, match="cannot seal watchlist bundle: thresholds.match must be a finite number"):
        make(keys, thresholds={"match": float("nan")})
    with pytest.raises(BundleError, match="cannot seal watchlist bundle: version must be an integer ≥ 1, got 0"):
        make(keys, version=0)
    with pytest.raises(BundleError, match="cannot seal watchlist bundle: a bundle needs at least one recipient"):
        make(keys, device_id=None, device_public=None)
    with pytest.raises(BundleError, match="cannot seal watchlist bundle: a bundle needs at least one recipient"):
        make_group(keys, members=())
    with pytest.raises(BundleError, match="sealed for one device or one group: give exactly one"):
        make_group(keys, device_id="cam1")
    with pytest.raises(BundleError, match="audience 'group:north/east' is invalid"):
        make_group(keys, group="north/east")
    with pytest.raises(BundleError, match=r"recipient '\.\./x' is not a valid device id"):
        make_group(keys, recipients={"../x": keys["cam1"].public_key()})
    with pytest.raises(BundleError, match="delta v2 must build on an older version, not v3"):
        make(keys, version=2, base={"version": 3, "content_sha256": "0" * 64}, content="1" * 64)
    with pytest.raises(BundleError) as err:
        make(keys, recipients={"cam2": keys["cam2"].public_key()})  # device audience, another recipient
    assert err.value.reason == "malformed_manifest"
    assert str(err.value) == ("cannot seal watchlist bundle: a bundle for device:cam1 must list exactly that device as"
                              " its recipient")


def test_seal_accepts_time_strings(keys, pinned):
    data = make(keys, created="2025-05-01T00:00:00Z", expires="2025-08-01T00:00:00Z")
    assert open_bundle(data, keys["cam1"], pinned, expected_device_id="cam1",
                       now=NOW).manifest["expires"] == "2025-08-01T00:00:00Z"


def test_peek_manifest_reads_without_verifying(keys, good):
    assert peek_manifest(good)["version"] == 1
    assert peek_manifest(make(keys, signer="stranger"))["audience"] == "device:cam1"  # untrusted, but readable
    with pytest.raises(BundleError) as err:
        peek_manifest(b"nope")
    assert err.value.reason == "bad_magic"


# ---------------------------------------------------------------- local bundles (a device's copy of a rebuilt version)


@pytest.fixture(scope="module")
def delta_v2(keys):
    return make(keys, version=2, payload=DELTA_V2, base=BASE_V1, content=F.content_of(FULL_V2))


@pytest.fixture(scope="module")
def local_v2(keys, pinned, delta_v2):
    """What cam1 keeps after applying delta v2 to v1: v2's signed header and the full result under cam1's key."""
    opened = open_bundle(delta_v2, keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    return seal_local(opened.header, FULL_V2, keys["cam1"])


def _header(data):
    return data[:len(data) - len(parts(data)[2])]


def _local_open(data, keys, pinned, device="cam1", **kwargs):
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("expected_device_id", device)
    with pytest.raises(BundleError) as err:
        open_local(data, keys[device], pinned, **kwargs)
    return err.value


def test_a_delta_opens_to_the_delta_and_its_local_bundle_to_the_full_result(keys, pinned, delta_v2, local_v2):
    opened = open_bundle(delta_v2, keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    assert opened.kind == "delta" and opened.payload == DELTA_V2 and opened.manifest["base"] == BASE_V1
    assert opened.content_sha256 == F.content_of(FULL_V2)  # the content of the full result, checked on rebuild
    assert local_v2.startswith(F.LOCAL_MAGIC) and b"CANARY" not in local_v2
    for opener in (open_local, open_bundle):  # open_bundle recognises a local bundle
        back = opener(local_v2, keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
        assert back.payload == FULL_V2 and back.version == 2 and back.header == opened.header
        assert back.manifest == opened.manifest and back.signed_by == opened.signed_by
    assert peek_manifest(local_v2)["version"] == 2


def test_every_bit_flip_in_a_local_bundle_after_its_magic_is_refused(keys, pinned, local_v2):
    (n_header,) = struct.unpack(">I", local_v2[8:12])
    body_at = 12 + n_header
    rng = random.Random(3)
    seen = {"length": set(), "header": set(), "body": set()}
    for pos in range(len(F.LOCAL_MAGIC), len(local_v2)):
        data = bytearray(local_v2)
        data[pos] ^= 1 << rng.randrange(8)
        err = _local_open(bytes(data), keys, pinned)
        seen["length" if pos < 12 else "header" if pos < body_at else "body"].add(err.reason)
        if pos >= body_at:
            assert str(err) == ("local bundle wl-main v2 (delta on v1) does not decrypt with this device's key"
                                " (altered, or another device's)")
    assert seen["length"] <= {"truncated", "malformed_manifest", "oversized"}, seen
    assert seen["header"] <= {"bad_magic", "truncated", "oversized", "bad_signature", "unknown_key"}, seen
    assert "bad_signature" in seen["header"]
    assert seen["body"] == {"decrypt_failed"}


def test_a_local_bundle_with_a_flipped_magic_is_refused_through_open_bundle(keys, pinned, local_v2):
    for pos in range(len(F.LOCAL_MAGIC)):
        data = bytearray(local_v2)
        data[pos] ^= 0x10
        assert refused(bytes(data), keys, pinned).reason == "bad_magic"


def test_open_local_itself_refuses_a_flipped_magic(keys, pinned, local_v2):
    for pos in range(len(F.LOCAL_MAGIC)):
        data = bytearray(local_v2)
        data[pos] ^= 0x10
        assert _local_open(bytes(data), keys, pinned).reason == "bad_magic"


def test_a_truncated_local_bundle_is_refused(keys, pinned, local_v2):
    (n_header,) = struct.unpack(">I", local_v2[8:12])
    for cut in (0, 5, 11, 12, 100, 12 + n_header - 1, 12 + n_header + 12 + 15):
        assert _local_open(local_v2[:cut], keys, pinned).reason == "truncated", cut
    for cut in (12 + n_header + 12 + 16, len(local_v2) - 1):  # the tag's worth of bytes is there, but wrong
        assert _local_open(local_v2[:cut], keys, pinned).reason == "decrypt_failed", cut
    assert _local_open(local_v2 + b"\x00", keys, pinned).reason == "decrypt_failed"


def test_a_local_bundle_is_bound_to_the_device_key_that_made_it(keys, pinned, group):
    # Both members of a group keep a copy of the same version: each opens only with its own key.
    opened = open_bundle(group, keys["cam1"], pinned, expected_device_id="cam1", now=NOW)
    mine = seal_local(opened.header, PAYLOAD, keys["cam1"])
    assert open_local(mine, keys["cam1"], pinned, expected_device_id="cam1", now=NOW).payload == PAYLOAD
    err = _local_open(mine, keys, pinned, device="cam2")  # cam2 is a recipient of that version, but not its maker
    assert err.reason == "decrypt_failed"
    assert str(err) == ("local bundle wl-main v1 does not decrypt with this device's key (altered, or another"
                        " device's)")
    made_by_cam2 = seal_local(opened.header, PAYLOAD, keys["cam2"])  # copied onto cam1
    assert _local_open(made_by_cam2, keys, pinned, device="cam1").reason == "decrypt_failed"


def test_a_local_bundle_of_another_devices_version_is_refused_at_the_recipient(keys, pinned, good):
    local = seal_local(_header(good), PAYLOAD, keys["cam2"])  # made with cam2's key, of cam1's bundle
    err = _local_open(local, keys, pinned, device="cam2")
    assert err.reason == "not_recipient"
    assert "does not list this device ('cam2') as a recipient" in str(err)


def test_a_local_bundle_header_swapped_for_another_versions_does_not_decrypt(keys, pinned, local_v2):
    # An attacker with the disk puts v3's (validly signed) header in front of cam1's v2 body.
    v3 = make(keys, version=3, payload=FULL_V2)
    header = _header(v3)
    (n_header,) = struct.unpack(">I", local_v2[8:12])
    data = F.LOCAL_MAGIC + struct.pack(">I", len(header)) + header + local_v2[12 + n_header:]
    assert _local_open(data, keys, pinned).reason == "decrypt_failed"


def test_a_local_bundle_needs_a_pinned_signer_a_clean_header_the_right_content_and_time(keys, pinned, delta_v2,
                                                                                          local_v2):
    header = _header(delta_v2)
    err = _local_open(seal_local(header, b"not the full result", keys["cam1"]), keys, pinned)
    assert err.reason == "content_mismatch"
    assert str(err) == ("bundle wl-main v2 (delta on v1): the decrypted watchlist does not match the content hash in"
                        " its signed manifest")
    stranger = make(keys, signer="stranger", version=2, payload=FULL_V2)
    assert _local_open(seal_local(_header(stranger), FULL_V2, keys["cam1"]), keys, pinned).reason == "unknown_key"
    assert _local_open(local_v2, keys, {}).reason == "unknown_key"
    err = _local_open(seal_local(header + b"x", FULL_V2, keys["cam1"]), keys, pinned)
    assert (err.reason, str(err)) == ("malformed_manifest", "local bundle header has trailing bytes")
    old = seal_local(F.OLD_MAGIC + header[8:], FULL_V2, keys["cam1"])
    assert _local_open(old, keys, pinned).reason == "unsupported_format"
    later = NOW + timedelta(days=31)
    assert _local_open(local_v2, keys, pinned, now=later).reason == "expired"
    assert open_local(local_v2, keys["cam1"], pinned, expected_device_id="cam1", now=later,
                      allow_expired=True).payload == FULL_V2


# ---------------------------------------------------------------- signed wipe statements


@pytest.fixture(scope="module")
def wipe(keys):
    return sign_wipe(keys["operator"], "group:patrol", 3, issued=NOW)


def test_a_signed_wipe_round_trips(keys, pinned, wipe):
    assert len(wipe) <= W.MAX_WIPE_BYTES
    assert verify_wipe(wipe, pinned) == {"format": "edge-wl-wipe/1", "audience": "group:patrol", "upto_version": 3,
                                         "issued": "2025-06-01T12:00:00Z",
                                         "key_id": key_id(keys["operator"].public_key())}
    store = TrustStore([keys["stranger"].public_key(), keys["operator"].public_key()])
    st = verify_wipe(sign_wipe(keys["operator"], "device:cam1", 1), store)
    assert (st["audience"], st["upto_version"]) == ("device:cam1", 1)


def _wipe_edit(wipe, **statement_changes):
    doc = json.loads(wipe)
    statement = json.loads(doc["statement"])
    statement.update(statement_changes)
    return canonical_json({"statement": canonical_json(statement).decode(), "signature": doc["signature"]})


def _signed_wipe_raw(keys, raw):
    import base64

    signature = base64.b64encode(keys["operator"].sign(W.WIPE_DOMAIN + raw)).decode()
    return canonical_json({"statement": raw.decode("ascii", "replace"), "signature": signature})


UNSIGNED = "wipe statement is not signed JSON {statement, signature}"
NOT_PINNED = "wipe statement is not signed by a pinned operator key"


@pytest.mark.parametrize("forge, reason, message", [
    (lambda k, w: json.loads(w)["statement"].encode(), "bad_wipe", UNSIGNED),  # the statement alone
    (lambda k, w: canonical_json({"statement": json.loads(w)["statement"]}), "bad_wipe", UNSIGNED),
    (lambda k, w: canonical_json({**json.loads(w), "signature": ""}), "bad_signature", NOT_PINNED),
    (lambda k, w: canonical_json({**json.loads(w), "signature": "not base64!"}), "bad_wipe", UNSIGNED),
    (lambda k, w: canonical_json({**json.loads(w), "signature": "AAAA"}), "bad_signature", NOT_PINNED),
    (lambda k, w: sign_wipe(k["stranger"], "group:patrol", 3, issued=NOW), "unknown_key",
     lambda k: f"wipe statement is signed by operator key {key_id(k['stranger'].public_key())}, which this device"
               f" does not trust (pinned: {key_id(k['operator'].public_key())})"),
    (lambda k, w: _wipe_edit(w, upto_version=99), "bad_signature", NOT_PINNED),
    (lambda k, w: _wipe_edit(w, audience="device:cam9"), "bad_signature", NOT_PINNED),
    (lambda k, w: _wipe_edit(w, issued="2030-01-01T00:00:00Z"), "bad_signature", NOT_PINNED),
    (lambda k, w: w + b" " * (W.MAX_WIPE_BYTES + 1 - len(w)), "bad_wipe", "wipe statement exceeds 4096 bytes"),
    (lambda k, w: b"\xff\xfe not json", "bad_wipe", UNSIGNED),
    (lambda k, w: b"", "bad_wipe", UNSIGNED),
    (lambda k, w: b"[]", "bad_wipe", UNSIGNED),
    (lambda k, w: b'"statement"', "bad_wipe", UNSIGNED),
    (lambda k, w: b"[" * 2000 + b"]" * 2000, "bad_wipe", UNSIGNED),
    (lambda k, w: canonical_json({"statement": 7, "signature": json.loads(w)["signature"]}), "bad_wipe", UNSIGNED),
    (lambda k, w: canonical_json({"statement": "\u00e9", "signature": json.loads(w)["signature"]}), "bad_wipe",
     UNSIGNED),
    # operator-signed, but not a wipe statement
    (lambda k, w: _signed_wipe_raw(k, b"not json"), "bad_wipe", "wipe statement is not JSON"),
    (lambda k, w: _signed_wipe_raw(k, b'{"format":"edge-wl-wipe/2"}'), "bad_wipe",
     "wipe statement is not a edge-wl-wipe/1 statement"),
    (lambda k, w: _signed_wipe_raw(k, canonical_json({**json.loads(json.loads(w)["statement"]), "upto_version": 0})),
     "bad_wipe", "wipe statement is malformed: upto_version must be an integer ≥ 1, got 0"),
    (lambda k, w: _signed_wipe_raw(k, canonical_json({**json.loads(json.loads(w)["statement"]), "audience": "*"})),
     "bad_wipe", "wipe statement is malformed: audience must be 'device:<id>' or 'group:<name>'"),
], ids=["statement-only", "no-signature", "empty-signature", "signature-not-base64", "short-signature", "stranger",
        "edited-version", "edited-audience", "edited-issued", "oversized", "not-json", "empty", "a-list",
        "a-string", "deep-nesting", "statement-not-a-string", "statement-not-ascii", "signed-not-json",
        "signed-other-format", "signed-version-0", "signed-bad-audience"])
def test_a_forged_or_malformed_wipe_is_refused(keys, pinned, wipe, forge, reason, message):
    with pytest.raises(BundleError) as err:
        verify_wipe(forge(keys, wipe), pinned)
    assert (err.value.reason, str(err.value)) == (reason, message(keys) if callable(message) else message)


def test_a_bundle_signature_is_not_a_wipe_signature(keys, pinned, good):
    # Domain separation: the operator's signature over a manifest does not sign it as a wipe statement.
    import base64

    manifest_raw, signature, _ = parts(good)
    doc = canonical_json({"statement": manifest_raw.decode("ascii"), "signature": base64.b64encode(signature).decode()})
    with pytest.raises(BundleError) as err:
        verify_wipe(doc, pinned)
    assert (err.value.reason, str(err.value)) == ("bad_signature", NOT_PINNED)
    with pytest.raises(BundleError) as err:  # and the other way round: a wipe is no bundle
        V.verify_bundle(sign_wipe(keys["operator"], "device:cam1", 1), pinned)
    assert err.value.reason == "bad_magic"


def test_a_wipe_needs_pinned_keys_and_well_formed_arguments(keys, wipe):
    with pytest.raises(BundleError) as err:
        verify_wipe(wipe, {})
    assert (err.value.reason, str(err.value)) == ("unknown_key", "no operator keys are pinned on this device, so no"
                                                                 " wipe can be trusted")
    for audience, upto in (("cam1", 1), ("device:", 1), ("group:a b", 1), ("device:cam1", 0),
                           ("device:cam1", 2**63)):
        with pytest.raises(BundleError) as err:
            sign_wipe(keys["operator"], audience, upto, issued=NOW)
        assert err.value.reason == "bad_wipe" and str(err.value).startswith("wipe statement is malformed: ")
