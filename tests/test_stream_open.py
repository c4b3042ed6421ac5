"""`open_bundle_file`: a full bundle opened from disk in chunks, decrypted straight into memfds (never the whole
file or plaintext in Python memory), must accept and refuse exactly what `open_bundle` does and give the same
watchlist."""

import hashlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge import keys
from edge.watchlist.operator.build import make_payload
from edge.watchlist.device.unseal import open_bundle, open_bundle_file
from edge.watchlist.frame import BundleError
from edge.watchlist.operator.seal import seal
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.payload import MappedPayload, PayloadError, PayloadSink, pack

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def crypto():
    op = keys.generate_operator_key()
    return op, keys.generate_device_key(), {keys.key_id(op.public_key()): op.public_key()}


@pytest.fixture(scope="module")
def payload():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((2500, 128)).astype(np.float32)  # ≥ 2000: the PCA shortlist stage is in the payload
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    subjects = [{"id": f"s{i}", "label": f"L{i}", "category": None, "expires": None} for i in range(2500)]
    return pack(make_payload(v, list(range(2500)), subjects)), v


def sealed(crypto, plaintext, device="cam-a"):
    op, dev, _ = crypto
    return seal(plaintext, watchlist_id="wl", version=1, device_id=device, device_public=dev.public_key(),
                signing_key=op, embedder_id="e", embedder_sha256="0" * 64, dim=128, n_items=2500, n_subjects=2500,
                thresholds={"match": 0.5}, expires=NOW + timedelta(days=1))


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_same_watchlist_as_open_bundle(crypto, payload, tmp_path, chunk):
    _, dev, trust = crypto
    data = sealed(crypto, payload[0])
    path = tmp_path / "b.bundle"
    path.write_bytes(data)
    streamed = open_bundle_file(path, dev, trust, expected_device_id="cam-a", chunk_bytes=chunk)
    whole = open_bundle(data, dev, trust, expected_device_id="cam-a")
    assert isinstance(streamed.payload, MappedPayload)
    assert (streamed.manifest, streamed.bundle_sha256, streamed.header) == (whole.manifest, whole.bundle_sha256,
                                                                           whole.header)
    assert streamed.bundle_sha256 == hashlib.sha256(data).hexdigest()
    a = Watchlist.from_payload(streamed.payload, {"match": 0.5})
    b = Watchlist.from_payload(whole.payload, {"match": 0.5})
    for q in payload[1][:100]:
        assert a.search(q) == b.search(q) and a.match(q).top == b.match(q).top


def test_every_damage_is_refused_like_open_bundle(crypto, payload, tmp_path):
    _, dev, trust = crypto
    data = sealed(crypto, payload[0])
    path = tmp_path / "b.bundle"
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(data), 60).tolist()) | {0, 10, len(data) - 1, len(data) - 17})
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(BundleError) as streamed:
            open_bundle_file(path, dev, trust, expected_device_id="cam-a")
        with pytest.raises(BundleError) as whole:
            open_bundle(bytes(bad), dev, trust, expected_device_id="cam-a")
        assert streamed.value.reason == whole.value.reason, pos
    for cut in (0, 5, 100, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(BundleError) as err:
            open_bundle_file(path, dev, trust, expected_device_id="cam-a")
        assert err.value.reason == "truncated"
    path.write_bytes(data)
    with pytest.raises(BundleError) as err:
        open_bundle_file(path, dev, trust, expected_device_id="cam-b")
    assert err.value.reason == "not_recipient"


def test_plaintext_never_reaches_the_disk(crypto, payload, tmp_path):
    _, dev, trust = crypto
    path = tmp_path / "b.bundle"
    path.write_bytes(sealed(crypto, payload[0]))
    opened = open_bundle_file(path, dev, trust, expected_device_id="cam-a")
    Watchlist.from_payload(opened.payload)
    templates = bytes(opened.payload.templates[:4096])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]
    assert templates not in path.read_bytes()


def test_a_payload_that_is_no_watchlist_comes_back_as_bytes(crypto, tmp_path):
    _, dev, trust = crypto
    for junk in (b"x", b"not a watchlist payload at all" * 100):
        path = tmp_path / "j.bundle"
        path.write_bytes(sealed(crypto, junk))
        assert open_bundle_file(path, dev, trust, expected_device_id="cam-a", chunk_bytes=3).payload == junk


def test_the_sink_refuses_sections_that_do_not_add_up(payload):
    plaintext = payload[0]
    sink = PayloadSink(len(plaintext) - 1)  # declared one byte short
    with pytest.raises(PayloadError):
        sink.write(plaintext)
    sink.close()
    sink = PayloadSink(len(plaintext) + 5)
    with pytest.raises(PayloadError, match="trailing bytes"):
        sink.write(plaintext + b"\x00" * 5)  # trailing bytes after the metadata
    sink.close()
    sink = PayloadSink(len(plaintext))
    sink.write(plaintext[:-3])  # cut short
    with pytest.raises(PayloadError, match="truncated"):
        sink.content_sha256()
    sink.close()


def _memfds() -> int:
    import os

    return sum("memfd:" in os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_refused_installs_from_a_file_keep_no_memory_file(crypto, payload, tmp_path):
    """The sync installs through `install_file`, which decrypts into memfds: a refusal (an older version, another
    embedder) must close them, or each refused offer would hold its index in memory until the process ends."""
    from edge.watchlist.device.store import WatchlistStore

    op, dev, trust = crypto

    def bundle(version, embedder="e"):
        path = tmp_path / f"v{version}-{embedder}.bundle"
        path.write_bytes(seal(payload[0], watchlist_id="wl", version=version, device_id="cam-a",
                              device_public=dev.public_key(), signing_key=op, embedder_id=embedder,
                              embedder_sha256="0" * 64, dim=128, n_items=2500, n_subjects=2500,
                              thresholds={"match": 0.5}, expires=NOW + timedelta(days=1)))
        return path

    store = WatchlistStore(tmp_path / "state", "cam-a", dev, trust, "e", "0" * 64,
                           lambda o: Watchlist.from_payload(o.payload, {"match": 0.5}))
    store.start()
    assert store.install_file(bundle(3)).ok
    before = _memfds()
    for _ in range(3):
        assert store.install_file(bundle(2)).reason == "rollback"
        assert store.install_file(bundle(4, embedder="other")).reason == "wrong_embedder"
    assert _memfds() == before
    store.start()  # a restart re-opens the installed file through the same reader
    assert _memfds() == before
