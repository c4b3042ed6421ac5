"""Bundle attack suite, after python-tuf's updater tests and Uptane's test plan: every tampering is refused with a
stable `reason` and a message a user can act on, and never with anything but a BundleError."""

import hashlib
import json
import random
import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import EdgeError
from edge.canonical import canonical_json
from edge.keys import TrustStore, generate_device_key, generate_operator_key, key_id
from edge.watchlist import bundle as B
from edge.watchlist.bundle import BundleError, open_bundle, peek_manifest, seal

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
EMBEDDER_SHA = hashlib.sha256(b"embedder").hexdigest()
PAYLOAD = b"annoy-index-bytes" * 200 + b"subject: CANARY-label"


@pytest.fixture(scope="module")
def keys():
    return {"operator": generate_operator_key(), "stranger": generate_operator_key(),
            "cam1": generate_device_key(), "cam2": generate_device_key()}


@pytest.fixture(scope="module")
def pinned(keys):
    return {key_id(keys["operator"].public_key()): keys["operator"].public_key()}


def make(keys, *, payload=PAYLOAD, device="cam1", version=1, signer="operator", **overrides):
    args = dict(watchlist_id="wl-main", version=version, device_id=device, device_public=keys[device].public_key(),
                signing_key=keys[signer], embedder_id="dlib_resnet_v1_int8", embedder_sha256=EMBEDDER_SHA, dim=128,
                n_items=3, n_subjects=2, thresholds={"match": 0.42, "margin": 0.05},
                created=NOW - timedelta(days=1), expires=NOW + timedelta(days=30))
    args.update(overrides)
    return seal(payload, **args)


def parts(data):
    """(manifest bytes, signature, payload ciphertext) of a well-formed bundle."""
    (n,) = struct.unpack(">I", data[8:12])
    return data[12:12 + n], data[14 + n:78 + n], data[78 + n:]


def frame(manifest_raw, signature, payload, sig_len=None):
    sig_len = len(signature) if sig_len is None else sig_len
    return B.MAGIC + struct.pack(">I", len(manifest_raw)) + manifest_raw + struct.pack(">H", sig_len) + signature \
        + payload


def refused(data, keys, pinned, device="cam1", **kwargs):
    kwargs.setdefault("now", NOW)
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
    m = opened.manifest
    assert m["format"] == "edge-watchlist/1" and m["device_id"] == "cam1" and m["metric"] == "angular"
    assert m["embedder"] == {"id": "dlib_resnet_v1_int8", "sha256": EMBEDDER_SHA}
    assert m["created"] == "2025-05-31T12:00:00Z" and m["expires"] == "2025-07-01T12:00:00Z"
    assert m["payload"]["length"] == len(ciphertext) == len(PAYLOAD) + 16
    assert m["signing"] == {"alg": "Ed25519", "key_id": opened.signed_by}
    assert b"CANARY" not in good  # the payload is encrypted


def test_a_trust_store_works_as_the_pinned_keys(keys, good):
    store = TrustStore([keys["stranger"].public_key(), keys["operator"].public_key()])
    assert open_bundle(good, keys["cam1"], store, now=NOW).payload == PAYLOAD
    # Mapping labels are not trusted: the id is computed from the key itself.
    assert open_bundle(good, keys["cam1"], {"whatever": keys["operator"].public_key()}, now=NOW).payload == PAYLOAD


def test_each_seal_uses_a_fresh_content_key(keys):
    a, b = make(keys), make(keys)
    assert parts(a)[2] != parts(b)[2]
    assert json.loads(parts(a)[0])["key_wrap"] != json.loads(parts(b)[0])["key_wrap"]


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
    lambda m: m.update(device_id="cam2"),
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
    data = B.assemble(manifest, keys["operator"], parts(good)[2])
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
    data = good[:8] + struct.pack(">I", B.MAX_MANIFEST_BYTES + 1) + good[12:]
    err = refused(data, keys, pinned)
    assert err.reason == "oversized"
    assert str(err) == "bundle manifest length field says 65537 bytes; the limit is 65536 bytes"
    err = refused(good[:8] + b"\xff\xff\xff\xff" + good[12:], keys, pinned)
    assert err.reason == "oversized"


def test_oversized_bundle(keys, pinned, good, monkeypatch):
    monkeypatch.setattr(B, "MAX_BUNDLE_BYTES", len(good) - 1)
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
        open_bundle(bytes(flipped), keys["cam1"], pinned, now=NOW)
    assert err.value.reason in FLIP_REASONS


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_bundle_error(junk):
    device, op = generate_device_key(), generate_operator_key()
    for data in (junk, B.MAGIC + junk):
        with pytest.raises(BundleError):
            open_bundle(data, device, {"k": op.public_key()}, now=NOW)


# ---------------------------------------------------------------- policy: time and device


def test_expired(keys, pinned, good):
    later = NOW + timedelta(days=31)
    err = refused(good, keys, pinned, now=later)
    assert err.reason == "expired"
    assert str(err) == ("bundle wl-main v1 expired at 2025-07-01T12:00:00Z: the watchlist is stale; ask the operator"
                        " for a fresh bundle")
    exactly = datetime(2025, 7, 1, 12, 0, tzinfo=timezone.utc)
    assert refused(good, keys, pinned, now=exactly).reason == "expired"
    assert open_bundle(good, keys["cam1"], pinned, now=later, allow_expired=True).payload == PAYLOAD


def test_wrong_device_id(keys, pinned, good):
    err = refused(good, keys, pinned, expected_device_id="cam2")
    assert err.reason == "wrong_device"
    assert str(err) == "bundle wl-main v1 is for device 'cam1'; this device is 'cam2'"


def test_wrong_device_key(keys, pinned, good):
    err = refused(good, keys, pinned, device="cam2")
    assert err.reason == "unwrap_failed"
    assert str(err) == ("cannot unwrap the content key: bundle wl-main v1 for device cam1 was not sealed for this"
                        " device's key (or its key wrap was altered)")


def test_sealed_for_cam2_but_labelled_cam1(keys, pinned):
    # device_id says cam1 (passes expected_device_id) but the key was wrapped to cam2's public key.
    data = make(keys, device="cam1", device_public=keys["cam2"].public_key())
    err = refused(data, keys, pinned, expected_device_id="cam1")
    assert err.reason == "unwrap_failed"
    assert "was not sealed for this device's key" in str(err)


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
    err = refused(B.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned)
    assert err.reason == "unwrap_failed"
    assert "bundle wl-main v2 for device cam1 was not sealed for this device's key" in str(err)


def test_ciphertext_from_another_version_fails_authentication(keys, pinned, good):
    # Even with the right content key re-wrapped for v2, v1's ciphertext is bound to v1 by its AAD.
    v1 = json.loads(parts(good)[0])
    content_key = B.unwrap_content_key(v1, keys["cam1"])
    manifest = _resigned(keys, good, version=2)
    manifest["key_wrap"] = B.wrap_content_key(content_key, keys["cam1"].public_key(), "cam1", 2,
                                              B.binding_hash(manifest))
    err = refused(B.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned)
    assert err.reason == "decrypt_failed"
    assert str(err) == ("bundle wl-main v2: payload authentication failed: the encrypted payload does not belong to"
                        " this manifest (device, version or model differ)")


@pytest.mark.parametrize("change", [{"device_id": "cam2"}, {"embedder": {"id": "other", "sha256": "0" * 64}},
                                    {"n_items": 4}, {"thresholds": {"match": 0.9, "margin": 0.05}}])
def test_ciphertext_moved_under_another_binding_fails_authentication(keys, pinned, good, change):
    v1 = json.loads(parts(good)[0])
    content_key = B.unwrap_content_key(v1, keys["cam1"])
    manifest = _resigned(keys, good, **change)
    device = "cam2" if change.get("device_id") == "cam2" else "cam1"
    manifest["key_wrap"] = B.wrap_content_key(content_key, keys[device].public_key(), manifest["device_id"], 1,
                                              B.binding_hash(manifest))
    err = refused(B.assemble(manifest, keys["operator"], parts(good)[2]), keys, pinned, device=device,
                  expected_device_id=manifest["device_id"])
    assert err.reason == "decrypt_failed"
    assert "payload authentication failed" in str(err)


# ---------------------------------------------------------------- schema (validly signed, badly formed)


def _signed_raw(keys, raw, payload=b"\x00" * 32):
    return frame(raw, keys["operator"].sign(B.SIGNATURE_DOMAIN + raw), payload)


def test_unknown_format_is_unsupported(keys, pinned, good):
    manifest = json.loads(parts(good)[0])
    manifest["format"] = "edge-watchlist/2"
    err = refused(_signed_raw(keys, canonical_json(manifest)), keys, pinned)
    assert err.reason == "unsupported_format"
    assert str(err) == ("unsupported bundle: bundle format 'edge-watchlist/2' is not supported (this device supports"
                        " 'edge-watchlist/1'); update the device software")


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
    (lambda m: m["key_wrap"].update(nonce="AAAA"), "key_wrap.nonce must be base64 of 12 bytes"),
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


def test_seal_accepts_time_strings(keys, pinned):
    data = make(keys, created="2025-05-01T00:00:00Z", expires="2025-08-01T00:00:00Z")
    assert open_bundle(data, keys["cam1"], pinned, now=NOW).manifest["expires"] == "2025-08-01T00:00:00Z"


def test_peek_manifest_reads_without_verifying(keys, good):
    assert peek_manifest(good)["version"] == 1
    assert peek_manifest(make(keys, signer="stranger"))["device_id"] == "cam1"  # untrusted, but readable
    with pytest.raises(BundleError) as err:
        peek_manifest(b"nope")
    assert err.value.reason == "bad_magic"
